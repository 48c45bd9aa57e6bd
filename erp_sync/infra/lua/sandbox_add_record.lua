-- Create or replace one sandbox ERP record under a new revision (record and index together, so
-- a reader never sees a revision without its record).
-- KEYS[1]  the company's sandbox meta (HASH; field 'rev' is the revision counter)
-- KEYS[2]  the collection (HASH id -> record JSON)
-- KEYS[3]  the collection's revision index (ZSET id -> revision)
-- ARGV[1]  the record id
-- ARGV[2]  the record (JSON)
-- Returns the record's new revision.
local rev = redis.call('HINCRBY', KEYS[1], 'rev', 1)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], rev, ARGV[1])
return rev
