-- One page of a sandbox collection: ids with a revision above the cursor, in revision order.
-- KEYS[1]  the collection's revision index (ZSET id -> revision)
-- KEYS[2]  the collection (HASH id -> record JSON)
-- ARGV[1]  the revision to read after
-- ARGV[2]  the page size
-- Returns a flat list: revision, record JSON ('' if gone), revision, record JSON, ...
local rows = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'WITHSCORES',
                        'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for i = 1, #rows, 2 do
  out[#out + 1] = rows[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[2], rows[i]) or ''
end
return out
