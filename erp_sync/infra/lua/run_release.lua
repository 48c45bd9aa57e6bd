-- Give a run's lock and its place under the company's cap back (a retry or a deferral).
-- KEYS[1]  the run lock (STRING "<task id>|<run token>", erp_sync.runs.locks.RunLock)
-- KEYS[2]  the company's running syncs (ZSET task id -> heartbeat expiry, ms)
-- ARGV[1]  the lock value the run set
-- ARGV[2]  the task id
-- Returns 1 when the lock was still the run's (and is now released), else 0.
redis.call('ZREM', KEYS[2], ARGV[2])
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
