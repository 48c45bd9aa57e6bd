-- Bump the configuration revision of each company (or '*', the fleet) an admin change touched,
-- and mark it changed for the database's copy; queued in the change's own MULTI. A revision is
-- Redis time in microseconds, at least one more than the last and above the floor, so it only
-- ever increases: across a removal and re-add, and for a company made again on a Redis that
-- lost everything. The floor is what restore-from-db raises to the copy's highest revision: a
-- rebuilt Redis whose clock is behind the lost one's would otherwise give revisions older than
-- the copy's, which the copy refuses and a restore would replace.
-- KEYS[1]  the revisions (HASH scope -> revision)
-- KEYS[2]  the changes not yet copied (HASH scope -> revision)
-- KEYS[3]  the floor (STRING revision; missing: 0)
-- ARGV[1..n]  the scopes touched (company ids, '*')
-- Returns the number of scopes bumped.
local t = redis.call('time')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local floor = tonumber(redis.call('get', KEYS[3]) or '0') + 1
for i = 1, #ARGV do
  local rev = math.max(tonumber(redis.call('hget', KEYS[1], ARGV[i]) or '0') + 1, now, floor)
  local text = string.format('%.0f', rev)
  redis.call('hset', KEYS[1], ARGV[i], text)
  redis.call('hset', KEYS[2], ARGV[i], text)
end
return #ARGV
