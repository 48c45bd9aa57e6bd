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
-- KEYS[10] the company's alert rules (HASH; optional, with KEYS[11..12])
-- KEYS[11] the company's alert outbox (HASH; erp_sync.alerts.outbox)
-- KEYS[12] the fleet's index of waiting alert outboxes (ZSET company id -> when it is due)
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
-- With KEYS[10..12], a succeeded or failed run checked against its tenant (ARGV[9] not '') of a
-- company that has alert rules also waits in the alert outbox to be evaluated (field
-- 'run:<task id>': the outcome and its tenant, and when, Redis time), indexed as due from then:
-- a worker killed between this commit point and the evaluation leaves it for the periodic
-- check instead of losing the alert (a redelivery sees the executed marker and runs nothing).
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
if KEYS[12] and ARGV[9] ~= '' and (ARGV[4] == 'succeeded' or ARGV[4] == 'failed')
    and redis.call('HLEN', KEYS[10]) > 0 then
  local run = cjson.decode(ARGV[2])
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local entry = {
    task_id = ARGV[1], company = run['company'], kind = run['kind'], project = run['project'],
    status = ARGV[4], error = run['error'], slot = run['scheduled_for'],
    company_stamp = ARGV[9], project_stamp = ARGV[11],
  }
  redis.call('HSET', KEYS[11], 'run:' .. ARGV[1], cjson.encode({run = entry, at = now}))
  redis.call('ZADD', KEYS[12], 'NX', now, run['company'])
end
if KEYS[9] then
  if ARGV[12] == '1' then redis.call('HSET', KEYS[9], ARGV[1], ARGV[2]) end
  return redis.call('HLEN', KEYS[9])
end
return 1
