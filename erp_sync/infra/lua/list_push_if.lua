-- Push onto a capped list only while a guard key exists (a delivery log while its company does)
-- and, given a tenant stamp, only while the guard record is that tenant: a delivery of a company
-- removed and added again under the id must not land in the new tenant's log.
-- KEYS[1]  the guard key (the company record)
-- KEYS[2]  the list
-- ARGV[1]  the entry, pushed at the head
-- ARGV[2]  the cap: the list keeps its newest ARGV[2] entries
-- ARGV[3]  the tenant stamp: the guard record's created_at as stored ('' or absent: only the
--          guard key's existence is checked; erp_sync.runs.tenant.stamp)
-- Returns 1 when pushed, 0 when the guard key is gone or another tenant's (nothing written).
--#include _tenant
if redis.call('exists', KEYS[1]) == 0 then return 0 end
if tenant_gone(KEYS[1], KEYS[1], ARGV[3], '', '') then return 0 end
redis.call('lpush', KEYS[2], ARGV[1])
redis.call('ltrim', KEYS[2], 0, tonumber(ARGV[2]) - 1)
return 1
