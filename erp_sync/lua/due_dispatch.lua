-- Dispatch due entries: advance each in the due index and queue its task messages, in one
-- atomic step fenced by the leader lease (a slot is never advanced without its messages).
-- KEYS[1]  the lease (STRING "<node>|<epoch>")
-- KEYS[2]  the due index (ZSET "<company>:<kind>" -> next due time)
-- KEYS[3]  beat's counters (HASH: slots, messages)
-- ARGV[1]  the caller's lease token
-- ARGV[2]  the number of entries, then per entry: member, expected score (what the caller
--          read), next score ('' removes the entry), queue key, n_msgs, then n_msgs messages
-- An entry whose score moved since it was read (a change re-timed it) is left alone.
-- Returns the number of entries dispatched, or -1 when the caller no longer holds the lease.
if redis.call('get', KEYS[1]) ~= ARGV[1] then return -1 end
local i = 3
local slots, messages = 0, 0
for e = 1, tonumber(ARGV[2]) do
  local member, expected, nxt, queue = ARGV[i], tonumber(ARGV[i+1]), ARGV[i+2], ARGV[i+3]
  local n = tonumber(ARGV[i+4])
  i = i + 5
  local current = redis.call('zscore', KEYS[2], member)
  if current and math.abs(tonumber(current) - expected) < 0.0005 then
    if nxt == '' then redis.call('zrem', KEYS[2], member)
    else redis.call('zadd', KEYS[2], nxt, member) end
    for m = 0, n - 1 do redis.call('lpush', queue, ARGV[i + m]) end
    slots = slots + 1
    messages = messages + n
  end
  i = i + n
end
redis.call('hincrby', KEYS[3], 'slots', slots)
redis.call('hincrby', KEYS[3], 'messages', messages)
return slots
