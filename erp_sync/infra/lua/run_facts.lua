-- Everything a delivery's checks need, and Redis's clock, in one round trip.
-- KEYS[1]  the task id's executed marker
-- KEYS[2]  the company's run records (HASH run id -> RunRecord JSON)
-- KEYS[3]  the company record (JSON; its "erp" names the ERP's limit override)
-- KEYS[4]  the company's settings
-- KEYS[5]  the company's projects (HASH)
-- KEYS[6]  the operators' limit overrides (HASH ERP or "company:<id>" -> limit JSON)
-- KEYS[7]  the sync's watermarks
-- KEYS[8]  the pauses (HASH company id or '*' for the fleet -> pause record JSON)
-- KEYS[9]  the company's projects opted out of job costs (SET)
-- ARGV[1]  the task id
-- ARGV[2]  the project id ('-' for a company-level sync)
-- ARGV[3]  the company's override field ("company:<id>")
-- ARGV[4]  the company id
-- Returns thirteen values, in this order (erp_sync.runs.facts.RunFacts names each; '' is none):
--   1 executed          1 when KEYS[1] exists, else 0
--   2 previous          the run record of ARGV[1] in KEYS[2], or ''
--   3 company           KEYS[3], or ''
--   4 settings          KEYS[4], or ''
--   5 project_exists    1 when ARGV[2] is a field of KEYS[5], else 0
--   6 erp_override      the override of the company's ERP in KEYS[6], or ''
--   7 company_override  the override ARGV[3] in KEYS[6], or ''
--   8 watermarks        KEYS[7], or ''
--   9 time_seconds      Redis's TIME, seconds
--  10 time_micros       Redis's TIME, microseconds
--  11 paused            the pause record of ARGV[4] in KEYS[8], else the fleet's ('*'), or ''
--  12 opted_out         1 when ARGV[2] is a member of KEYS[9], else 0
--  13 project           the project record of ARGV[2] in KEYS[5] (JSON), or ''
-- A company record that is not JSON reads no ERP override (the caller reports the record as
-- corrupt).
local t = redis.call('TIME')
local company = redis.call('GET', KEYS[3])
local erp_limit = ''
if company then
  local ok, decoded = pcall(cjson.decode, company)
  if ok and type(decoded) == 'table' and type(decoded['erp']) == 'string' then
    erp_limit = redis.call('HGET', KEYS[6], decoded['erp']) or ''
  end
end
return {redis.call('EXISTS', KEYS[1]), redis.call('HGET', KEYS[2], ARGV[1]) or '',
        company or '', redis.call('GET', KEYS[4]) or '',
        redis.call('HEXISTS', KEYS[5], ARGV[2]), erp_limit,
        redis.call('HGET', KEYS[6], ARGV[3]) or '', redis.call('GET', KEYS[7]) or '',
        t[1], t[2],
        redis.call('HGET', KEYS[8], ARGV[4]) or redis.call('HGET', KEYS[8], '*') or '',
        redis.call('SISMEMBER', KEYS[9], ARGV[2]),
        redis.call('HGET', KEYS[5], ARGV[2]) or ''}
