-- A Lua function, included by the run scripts that write for a tenant (not a script of its own).
-- tenant_gone(company_key, projects_key, stamp, project, project_stamp): false while the company
-- record exists with created_at == stamp and, when project is not '', the project's record in
-- projects_key exists with created_at == project_stamp; else 'company' or 'project', whichever
-- was removed (or removed and added again: a new created_at). An empty stamp checks nothing
-- (a caller that has no tenant). erp_sync.runs.tenant.stamp reads the same field in Python.
local function tenant_gone(company_key, projects_key, stamp, project, project_stamp)
  if stamp == nil or stamp == '' then return false end
  local raw = redis.call('GET', company_key)
  if not raw then return 'company' end
  local ok, record = pcall(cjson.decode, raw)
  if not ok or type(record) ~= 'table' or record['created_at'] ~= stamp then return 'company' end
  if project == nil or project == '' then return false end
  raw = redis.call('HGET', projects_key, project)
  if not raw then return 'project' end
  ok, record = pcall(cjson.decode, raw)
  if not ok or type(record) ~= 'table' or record['created_at'] ~= project_stamp then
    return 'project'
  end
  return false
end
