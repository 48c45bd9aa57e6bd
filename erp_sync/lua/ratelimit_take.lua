-- Take (or reserve) one token from a company's ERP token bucket, on Redis's clock.
-- KEYS[1]  the bucket (HASH tokens, ts)
-- ARGV[1]  the rate (tokens per second)
-- ARGV[2]  the burst (bucket size)
-- ARGV[3]  the longest reservation allowed, in seconds
-- Returns {granted (1 or 0), seconds to wait (as a string)}: granted with a wait means a future
-- token is reserved for the caller; not granted means the wait is beyond the reservation limit.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst, max_reserve = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(b[1]), tonumber(b[2])
if tokens == nil or ts == nil then tokens, ts = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens < 1 then wait = (1 - tokens) / rate end
if wait <= max_reserve then tokens = tokens - 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst / rate + max_reserve) * 1000) + 1000)
if wait > max_reserve then return {0, tostring(wait)} end
return {1, tostring(wait)}
