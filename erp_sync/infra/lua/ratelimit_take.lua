-- Take (or reserve) one token from a company's ERP token bucket, on Redis's clock, and keep
-- the queue of syncs that gave their worker slot back to wait for one.
-- KEYS[1]  the bucket (HASH tokens, ts, queue: when the last waiter's turn comes)
-- ARGV[1]  the rate (tokens per second)
-- ARGV[2]  the burst (bucket size)
-- ARGV[3]  the longest wait the caller sleeps through (a token that far ahead is reserved)
-- ARGV[4]  the caller's turn ("ticket", epoch seconds) when it waited in the queue, else 0
-- ARGV[5]  1 when a caller that must wait longer gives its slot back (it gets a ticket), 0 when
--          it polls (callers outside a worker)
-- Returns {granted, seconds to wait (string), ticket (string)}: granted 1 with a wait means a
-- token is reserved for the caller that many seconds ahead (it sleeps, then calls); granted 0
-- means come back after the wait: with ARGV[5] = 1 the caller holds the returned ticket, its
-- place in the queue (tickets are one token interval apart, so waiters return one at a time and
-- a newcomer never jumps the queue; a holder back before its turn keeps its ticket); with
-- ARGV[5] = 0 nothing is reserved.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst, max_reserve = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ticket, defer = tonumber(ARGV[4]), ARGV[5] == '1'
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts', 'queue')
local tokens, ts, queue = tonumber(b[1]), tonumber(b[2]), tonumber(b[3]) or 0
if tokens == nil or ts == nil then tokens, ts = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local ttl = math.ceil((burst / rate + max_reserve) * 1000) + 1000
local function join_queue(earliest)
  local at = math.max(queue + 1 / rate, earliest)
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now),
             'queue', tostring(at))
  redis.call('PEXPIRE', KEYS[1], math.max(ttl, math.ceil((at - now) * 1000) + ttl))
  return {0, tostring(at - now), tostring(at)}
end
local my_turn = ticket > 0 and now >= ticket - max_reserve
if defer and ticket > 0 and not my_turn then
  -- back before its turn (a countdown capped by the broker, another worker's clock): keep it
  return {0, tostring(ticket - now), tostring(ticket)}
end
if defer and not my_turn and queue > now + max_reserve then
  return join_queue(now)  -- others are waiting for their turn: queue behind them
end
local wait = 0
if tokens < 1 then wait = (1 - tokens) / rate end
if wait > max_reserve then
  if defer then return join_queue(now + wait) end
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
  redis.call('PEXPIRE', KEYS[1], ttl)
  return {0, tostring(wait), '0'}
end
tokens = tokens - 1
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.max(ttl, math.ceil((queue - now) * 1000) + ttl))
return {1, tostring(wait), '0'}
