-- Apply companies' schedule plans to the due index, fenced by the leader lease.
-- KEYS[1]  the lease (STRING "<node>|<epoch>")
-- KEYS[2]  the due index (ZSET "<company>:<kind>" -> next due time)
-- KEYS[3]  beat's applied records (HASH company -> Applied JSON)
-- KEYS[4]  the change-stream cursor (STRING)
-- KEYS[5]  beat's counters (HASH)
-- KEYS[6]  the company set (SET): a plan for a company not in it only removes (it was removed
--          after the plan was made, so nothing may bring its schedule back)
-- ARGV[1]  the caller's lease token
-- ARGV[2]  the new change-stream cursor ('' keeps the stored one)
-- ARGV[3]  the number of plans, then per plan: company, applied JSON ('' deletes the record),
--          applied channel, version, n_ops, then n_ops x (op, member, score), where op is
--          'rem' (remove), 'nx' (add only if missing: timing kept) or 'set' ((re)schedule)
-- Returns the number of plans applied, or -1 when the caller no longer holds the lease.
if redis.call('get', KEYS[1]) ~= ARGV[1] then return -1 end
local i = 4
for p = 1, tonumber(ARGV[3]) do
  local company, record, channel, version = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3]
  local n = tonumber(ARGV[i+4])
  i = i + 5
  local gone = record ~= '' and redis.call('sismember', KEYS[6], company) == 0
  if gone then record = '' end
  for o = 1, n do
    local op, member, score = ARGV[i], ARGV[i+1], ARGV[i+2]
    if op == 'rem' or gone then redis.call('zrem', KEYS[2], member)
    elseif op == 'nx' then redis.call('zadd', KEYS[2], 'NX', score, member)
    else redis.call('zadd', KEYS[2], score, member) end
    i = i + 3
  end
  if record == '' then redis.call('hdel', KEYS[3], company)
  else redis.call('hset', KEYS[3], company, record) end
  redis.call('publish', channel, version)
end
if ARGV[2] ~= '' then redis.call('set', KEYS[4], ARGV[2]) end
redis.call('hincrby', KEYS[5], 'applied', tonumber(ARGV[3]))
return tonumber(ARGV[3])
