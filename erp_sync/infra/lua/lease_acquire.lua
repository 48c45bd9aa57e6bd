-- Take the leader lease if nobody holds it, with a fresh fencing token.
-- KEYS[1]  the lease (STRING "<node>|<epoch>" with a TTL)
-- KEYS[2]  the epoch counter, bumped on every acquisition (the fencing token's number)
-- ARGV[1]  this beat's node id
-- ARGV[2]  the lease TTL in milliseconds
-- Returns the token "<node>|<epoch>", or false when another beat holds the lease.
if redis.call('set', KEYS[1], 'pending', 'NX', 'PX', ARGV[2]) then
  local epoch = redis.call('incr', KEYS[2])
  local token = ARGV[1] .. '|' .. epoch
  redis.call('set', KEYS[1], token, 'PX', ARGV[2])
  return token
end
return false
