-- Dispatch due entries: advance each in the due index and queue its task messages, in one
-- atomic step fenced by the leader lease (a slot is never advanced without its messages).
-- KEYS[1]  the lease (STRING "<node>|<epoch>")
-- KEYS[2]  the due index (ZSET "<company>:<kind>" -> next due time)
-- KEYS[3]  beat's counters (HASH: slots, messages, stale_slots)
-- KEYS[4]  the last slot dispatched per entry (HASH "<company>:<kind>" -> slot time)
-- KEYS[5]  the company set (SET)
-- KEYS[6]  the pauses (HASH company id or '*' for the whole fleet -> pause record)
-- ARGV[1]  the caller's lease token
-- ARGV[2]  the number of entries, then per entry: member, company, expected score (what the
--          caller read), slot time, next score ('' removes the entry), queue key, n_msgs, then
--          n_msgs messages
-- An entry of a company no longer in the company set is removed and sends nothing (a removal
-- stops the schedule at once). An entry of a paused company (or of any company while the fleet
-- is paused) is advanced to its next slot and sends nothing: resuming continues at the next
-- slot, with no storm of the slots missed while paused.
-- An entry whose score moved since it was read (a change re-timed it) is left alone. An entry
-- whose slot is at or before the last slot dispatched for it is advanced but sends nothing: a
-- slot number only ever increases, whatever clock or state computed it.
-- Returns a string with one character per entry: 'd' dispatched, 'm' moved (left alone),
-- 's' stale slot (advanced, nothing sent), 'g' company gone (removed, nothing sent), 'p'
-- paused (advanced, nothing sent); or -1 when the caller no longer holds the lease.
if redis.call('get', KEYS[1]) ~= ARGV[1] then return -1 end
local i = 3
local slots, messages, stale, paused = 0, 0, 0, 0
local fleet_paused = redis.call('hexists', KEYS[6], '*') == 1
local flags = {}
for e = 1, tonumber(ARGV[2]) do
  local member, company, expected, slot = ARGV[i], ARGV[i+1], tonumber(ARGV[i+2]), ARGV[i+3]
  local nxt, queue, n = ARGV[i+4], ARGV[i+5], tonumber(ARGV[i+6])
  i = i + 7
  local current = redis.call('zscore', KEYS[2], member)
  if current and redis.call('sismember', KEYS[5], company) == 0 then
    redis.call('zrem', KEYS[2], member)
    flags[e] = 'g'
  elseif current and math.abs(tonumber(current) - expected) < 0.0005 and (fleet_paused or
      redis.call('hexists', KEYS[6], company) == 1) then
    if nxt == '' then redis.call('zrem', KEYS[2], member)
    else redis.call('zadd', KEYS[2], nxt, member) end
    paused = paused + 1
    flags[e] = 'p'
  elseif current and math.abs(tonumber(current) - expected) < 0.0005 then
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
if paused > 0 then redis.call('hincrby', KEYS[3], 'paused_slots', paused) end
return table.concat(flags)
