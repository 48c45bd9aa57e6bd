-- Keep a live run's lock and its place under the company's cap, if they are still its own.
-- KEYS[1]  the run lock (STRING "<task id>|<run token>", erp_sync.runs.locks.RunLock)
-- KEYS[2]  the company's running syncs (ZSET task id -> heartbeat expiry, ms)
-- ARGV[1]  the lock value the run set
-- ARGV[2]  the TTL in milliseconds
-- ARGV[3]  the task id
-- Returns 1 when renewed, 0 when the lock is no longer this run's (it expired or was taken).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]) * 2)
return 1
