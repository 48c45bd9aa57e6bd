-- Enter one sandbox ERP call: log its arrival on Redis's clock, read the configuration and
-- consume one scripted fault.
-- KEYS[1]  the company's sandbox meta (HASH config, fail_next, seeded)
-- KEYS[2]  the company's sandbox jobs (HASH id -> record JSON)
-- KEYS[3]  the call log (LIST of arrival times, newest first)
-- ARGV[1]  the job id the call is about ('-' for none)
-- ARGV[2]  the call log cap
-- Returns {config JSON or '', a scripted fault was consumed (1/0), seeded (1/0), job exists}.
local t = redis.call('TIME')
redis.call('LPUSH', KEYS[3], t[1] .. '.' .. string.format('%06d', tonumber(t[2])))
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[2]) - 1)
local meta = redis.call('HMGET', KEYS[1], 'config', 'fail_next', 'seeded')
local scripted = 0
if (tonumber(meta[2] or '0') or 0) > 0 then
  redis.call('HINCRBY', KEYS[1], 'fail_next', -1)
  scripted = 1
end
return {meta[1] or '', scripted, meta[3] and 1 or 0, redis.call('HEXISTS', KEYS[2], ARGV[1])}
