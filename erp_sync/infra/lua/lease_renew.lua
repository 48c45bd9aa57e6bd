-- Extend the leader lease, only if the caller still holds it.
-- KEYS[1]  the lease (STRING "<node>|<epoch>" with a TTL)
-- ARGV[1]  the caller's token
-- ARGV[2]  the lease TTL in milliseconds
-- Returns 1 when renewed, 0 when another beat holds the lease (or nobody does).
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
