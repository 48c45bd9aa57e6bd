-- Take a sync's run lock (or the caller's own stale one) and record the run as running.
-- KEYS[1]  the run lock of (company, kind, project) (STRING holder task id, with a TTL)
-- KEYS[2]  the company's run records (HASH run id -> RunRecord JSON)
-- KEYS[3]  the company's history (LIST of run ids, newest first)
-- ARGV[1]  the task id
-- ARGV[2]  the lock TTL in milliseconds
-- ARGV[3]  the running record (JSON)
-- ARGV[4]  the history cap
-- Returns 1 when the lock was taken, else the task id of the run that holds it.
--#include _save_run
local holder = redis.call('GET', KEYS[1])
if holder ~= false and holder ~= ARGV[1] then return holder end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
save(KEYS[2], KEYS[3], ARGV[1], ARGV[3], ARGV[4])
return 1
