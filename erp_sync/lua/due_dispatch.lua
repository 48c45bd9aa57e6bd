-- Dispatch due entries: advance each in the due index and queue its task messages, in one
-- atomic step fenced by the leader lease (a slot is never advanced without its messages).
-- KEYS[1]  the lease (STRING "<node>|<epoch>")
-- KEYS[2]  the due index (ZSET "<company>:<kind>" -> next due time)
-- KEYS[3]  beat's counters (HASH: slots, messages, stale_slots)
-- KEYS[4]  the last slot dispatched per entry (HASH "<company>:<kind>" -> slot time)
-- ARGV[1]  the caller's lease token
-- ARGV[2]  the number of entries, then per entry: member, expected score (what the caller
--          read), slot time, next score ('' removes the entry), queue key, n_msgs, then n_msgs
--          messages
-- An entry whose score moved since it was read (a change re-timed it) is left alone. An entry
-- whose slot is at or before the last slot dispatched for it is advanced but sends nothing: a
-- slot number only ever increases, whatever clock or state computed it.
-- Returns a string with one character per entry: 'd' dispatched, 'm' moved (left alone),
-- 's' stale slot (advanced, nothing sent); or -1 when the caller no longer holds the lease.
if redis.call('get', KEYS[1]) ~= ARGV[1] then return -1 end
local i = 3
local slots, messages, stale = 0, 0, 0
local flags = {}
for e = 1, tonumber(ARGV[2]) do
  local member, expected, slot = ARGV[i], tonumber(ARGV[i+1]), ARGV[i+2]
  local nxt, queue, n = ARGV[i+3], ARGV[i+4], tonumber(ARGV[i+5])
  i = i + 6
  local current = redis.call('zscore', KEYS[2], member)
  if current and math.abs(tonumber(current) - expected) < 0.0005 then
    if nxt == '' then redis.call('zrem', KEYS[2], member)
    else redis.call('zadd', KEYS[2], nxt, member) end
    local last = tonumber(redis.call('hget', KEYS[4], member) or '-1')
    if n > 0 and tonumber(slot) <= last then
      stale = stale + 1
      flags[e] = 's'
    else
      for m = 0, n - 1 do redis.call('lpush', queue, ARGV[i + m]) end
      if n > 0 then redis.call('hset', KEYS[4], member, slot) end
      slots = slots + 1
      messages = messages + n
      flags[e] = 'd'
    end
  else
    flags[e] = 'm'
  end
  i = i + n
end
redis.call('hincrby', KEYS[3], 'slots', slots)
redis.call('hincrby', KEYS[3], 'messages', messages)
if stale > 0 then redis.call('hincrby', KEYS[3], 'stale_slots', stale) end
return table.concat(flags)
