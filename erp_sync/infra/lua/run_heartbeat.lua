-- Keep a live run's lock and its place under the company's cap, if they are still its own and
-- its tenant is still there.
-- KEYS[1]  the run lock (STRING "<task id>|<run token>", erp_sync.runs.locks.RunLock)
-- KEYS[2]  the company's running syncs (ZSET task id -> heartbeat expiry, ms)
-- KEYS[3]  the company record (JSON; optional, with KEYS[4] and ARGV[4..6])
-- KEYS[4]  the company's projects (HASH project id -> project JSON)
-- ARGV[1]  the lock value the run set
-- ARGV[2]  the TTL in milliseconds
-- ARGV[3]  the task id
-- ARGV[4]  the company's created_at as the run found it (erp_sync.runs.tenant.Tenant)
-- ARGV[5]  the project id ('' for a company-level sync)
-- ARGV[6]  the project's created_at as the run found it
-- Returns 1 when renewed, 0 when the lock is no longer this run's (it expired or was taken),
-- -1 when the run's company or project was removed (or removed and added again): the lock and
-- the place under the cap are given back at once, so a company added later under the id is
-- neither blocked nor counted by the old tenant's run, which stops between pages.
--#include _tenant
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if KEYS[3] and tenant_gone(KEYS[3], KEYS[4], ARGV[4], ARGV[5], ARGV[6]) then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[3])
  return -1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]) * 2)
return 1
