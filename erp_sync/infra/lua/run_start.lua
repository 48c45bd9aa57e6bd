-- Start a run: take the sync's run lock and a place under the company's concurrency cap, and
-- record the run as running, in one step on Redis's clock.
-- KEYS[1]  the run lock of (company, kind, project) (STRING "<task id>|<run token>",
--          erp_sync.runs.locks.RunLock; short TTL kept alive by the running worker's heartbeat)
-- KEYS[2]  the company's run records (HASH run id -> RunRecord JSON)
-- KEYS[3]  the company's history (LIST of run ids, newest first)
-- KEYS[4]  the company's running syncs (ZSET task id -> heartbeat expiry, ms)
-- KEYS[5]  the task id's executed marker
-- ARGV[1]  the lock value "<task id>|<run token>"
-- ARGV[2]  the lock TTL in milliseconds
-- ARGV[3]  the running record (JSON)
-- ARGV[4]  the history cap
-- ARGV[5]  the company's concurrency cap
-- ARGV[6]  the task id
-- ARGV[7]  the lock value this task id's own deferral parks ("<task id>|deferred")
-- Returns (erp_sync.runs.locks.StartReply reads it) {'ok'}; {'done'} when the task id finished
-- meanwhile (a duplicate: checked here, in the same step that takes the lock, so a twin
-- finishing just now is never run again); {'held', holder task id} when another task runs this
-- sync (or waits, deferred, holding it); {'alive', ms} when this same task id still runs
-- elsewhere (its heartbeat holds the lock for ms more); {'busy', n} when n syncs of the company
-- already run (the cap). A lock parked as ARGV[7] by this task id's own deferral is its own:
-- taken over. A holder's task id is its value up to the last '|' (RunLock.parse), or the whole
-- value when it has none.
--#include _save_run
--#include _run_lock
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('EXISTS', KEYS[5]) == 1 then return {'done'} end
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[7] then
  local task = lock_task(holder) or holder
  if task == ARGV[6] then return {'alive', tostring(redis.call('PTTL', KEYS[1]))} end
  return {'held', task}
end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
local running = redis.call('ZCARD', KEYS[4])
if not redis.call('ZSCORE', KEYS[4], ARGV[6]) and running >= tonumber(ARGV[5]) then
  return {'busy', tostring(running)}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[2]), ARGV[6])
redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[2]) * 2)
save(KEYS[2], KEYS[3], ARGV[6], ARGV[3], ARGV[4])
return {'ok'}
