-- Store a sync's watermarks, only while the run's tenant is still there (a sync running while its
-- company or project is removed must not write its watermark back for a later tenant of the id).
-- KEYS[1]  the sync's watermarks (STRING)
-- KEYS[2]  the company record (JSON)
-- KEYS[3]  the company's projects (HASH project id -> project JSON)
-- ARGV[1]  the watermarks (JSON)
-- ARGV[2]  the company's created_at as the run found it (erp_sync.runs.tenant.Tenant)
-- ARGV[3]  the project id ('' for a company-level sync)
-- ARGV[4]  the project's created_at as the run found it
-- Returns 'ok' when stored; 'company' or 'project' (nothing stored) when that one is gone.
--#include _tenant
local gone = tenant_gone(KEYS[2], KEYS[3], ARGV[2], ARGV[3], ARGV[4])
if gone then return gone end
redis.call('SET', KEYS[1], ARGV[1])
return 'ok'
