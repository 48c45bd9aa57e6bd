-- Take one of a company's concurrent-request places, fleet-wide (a semaphore with leases).
-- KEYS[1]  the company's requests in flight (ZSET holder -> lease expiry, ms, Redis time)
-- ARGV[1]  the holder (unique per request)
-- ARGV[2]  the cap (places)
-- ARGV[3]  the lease in milliseconds (a holder that died frees its place when it expires)
-- Returns 1 when taken, 0 when every place is held (the caller waits and asks again).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
return 1
