-- Park a deferred run's lock: the sync counts as still running while it waits (a slot arriving
-- meanwhile is skipped, not run beside it), and only this task id may take the lock back.
-- KEYS[1]  the run lock (STRING "<task id>|<run token>", erp_sync.runs.locks.RunLock)
-- KEYS[2]  the company's running syncs (ZSET task id -> heartbeat expiry, ms)
-- ARGV[1]  the lock value the run set
-- ARGV[2]  the task id
-- ARGV[3]  how long to hold it, in milliseconds (the deferral plus a lock TTL)
-- ARGV[4]  the parked lock value ("<task id>|deferred", RunLock.parked)
-- Returns 1 when parked, 0 when the lock was no longer the run's (then nothing is changed but
-- its place under the cap, which is given back either way).
redis.call('ZREM', KEYS[2], ARGV[2])
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[3])
return 1
