-- Everything a delivery's checks need, in one round trip.
-- KEYS[1]  the task id's executed marker
-- KEYS[2]  the company's run records (HASH run id -> RunRecord JSON)
-- KEYS[3]  the company record
-- KEYS[4]  the company's settings
-- KEYS[5]  the company's projects (HASH)
-- KEYS[6]  the operators' rate-limit overrides (HASH ERP -> limit JSON)
-- KEYS[7]  the sync's watermarks
-- ARGV[1]  the task id
-- ARGV[2]  the project id ('-' for a company-level sync)
-- Returns {executed, previous record or '', company or '', settings or '', project exists,
--          overrides as a flat list, watermarks or ''}.
return {redis.call('EXISTS', KEYS[1]), redis.call('HGET', KEYS[2], ARGV[1]) or '',
        redis.call('GET', KEYS[3]) or '', redis.call('GET', KEYS[4]) or '',
        redis.call('HEXISTS', KEYS[5], ARGV[2]), redis.call('HGETALL', KEYS[6]),
        redis.call('GET', KEYS[7]) or ''}
