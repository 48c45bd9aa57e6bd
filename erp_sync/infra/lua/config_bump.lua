-- Bump the configuration revision of each company (or '*', the fleet) an admin change touched,
-- and mark it changed for the database's copy; queued in the change's own MULTI. A revision is
-- Redis time in microseconds and at least one more than the last, so it only ever increases:
-- across a removal and re-add, and for a company made again on a Redis that lost everything
-- (its revisions are then newer than the database's copy of the old one).
-- KEYS[1]  the revisions (HASH scope -> revision)
-- KEYS[2]  the changes not yet copied (HASH scope -> revision)
-- ARGV[1..n]  the scopes touched (company ids, '*')
-- Returns the number of scopes bumped.
local t = redis.call('time')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i = 1, #ARGV do
  local rev = math.max(tonumber(redis.call('hget', KEYS[1], ARGV[i]) or '0') + 1, now)
  local text = string.format('%.0f', rev)
  redis.call('hset', KEYS[1], ARGV[i], text)
  redis.call('hset', KEYS[2], ARGV[i], text)
end
return #ARGV
