-- Delete a key only if it still holds the caller's value (a lease, a run lock).
-- KEYS[1]  the key
-- ARGV[1]  the value the caller set
-- Returns 1 when deleted, 0 when the key holds something else (or is gone).
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
