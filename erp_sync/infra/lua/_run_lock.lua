-- A Lua function, included by the scripts that read a run lock (not a script of its own).
-- lock_task(value): the task id of a run lock's value "<task id>|<run token>", i.e. everything
-- up to the last '|' (a task id may contain '|', a token never does), or nil for a value that
-- is not a run lock. erp_sync.runs.locks.RunLock.parse is the same rule in Python; tests pin
-- the two together.
local function lock_task(value)
  return string.match(value, '^(.*)|[^|]*$')
end
