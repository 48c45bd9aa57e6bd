-- Finish a run: save its final record, mark its task id executed and give back its lock and its
-- place under the company's cap, atomically (never a marker without its record, nor a finished
-- run holding a lock); with a tenant, only while the run's company (and project) is still the
-- one it started for; with an outbox, the record also waits there until the database has it.
-- KEYS[1]  the company's run records (HASH run id -> RunRecord JSON)
-- KEYS[2]  the company's history (LIST of run ids, newest first)
-- KEYS[3]  the task id's executed marker (STRING, with a TTL)
-- KEYS[4]  the run lock of (company, kind, project) (STRING "<task id>|<run token>",
--          erp_sync.runs.locks.RunLock)
-- KEYS[5]  the fleet's last finished run per "<status>:<kind>" (HASH)
-- KEYS[6]  the company's running syncs (ZSET task id -> heartbeat expiry, ms)
-- KEYS[7]  the company record (JSON; optional, with KEYS[8..9] and ARGV[9..12])
-- KEYS[8]  the company's projects (HASH project id -> project JSON)
-- KEYS[9]  the run records the database has not taken yet (HASH task id -> RunRecord JSON)
-- ARGV[1]  the task id
-- ARGV[2]  the final record (JSON)
-- ARGV[3]  the history cap
-- ARGV[4]  the marker's value (the final status)
-- ARGV[5]  the marker's TTL in milliseconds
-- ARGV[6]  the "<status>:<kind>" field of KEYS[5] ('' writes no summary)
-- ARGV[7]  the last-run summary (JSON)
-- ARGV[8]  the lock value the run set ('' when it never took the lock; '*' for whichever run
--          of this task id holds it: a run its worker killed, closed by the worker; a held
--          value's task id is its value up to the last '|', RunLock.parse)
-- ARGV[9]  the company's created_at as the run found it ('': not checked;
--          erp_sync.runs.tenant.Tenant)
-- ARGV[10] the project id ('' for a company-level sync)
-- ARGV[11] the project's created_at as the run found it
-- ARGV[12] '1': also put the record in KEYS[9] (the runner writes the database next)
-- Returns 'company' or 'project' when that one is gone (nothing written: the runner finishes
-- the run again as failed, unchecked and without a summary); else the number of records in
-- KEYS[9] when it is given, or 1.
--#include _save_run
--#include _run_lock
--#include _tenant
if KEYS[7] then
  local gone = tenant_gone(KEYS[7], KEYS[8], ARGV[9], ARGV[10], ARGV[11])
  if gone then return gone end
end
save(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
local held = redis.call('GET', KEYS[4])
if held and (held == ARGV[8] or
             (ARGV[8] == '*' and lock_task(held) == ARGV[1])) then
  redis.call('DEL', KEYS[4])
end
redis.call('ZREM', KEYS[6], ARGV[1])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[5], ARGV[6], ARGV[7]) end
if KEYS[9] then
  if ARGV[12] == '1' then redis.call('HSET', KEYS[9], ARGV[1], ARGV[2]) end
  return redis.call('HLEN', KEYS[9])
end
return 1
