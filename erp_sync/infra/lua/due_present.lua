-- Which of the given due-index members exist (a rebuild keeps the timing of those it finds and
-- so need not compute their next slot), as one short string rather than a reply per member.
-- KEYS[1]  the due index (ZSET "<company>:<kind>" -> next due time)
-- ARGV     the members to look up
-- Returns a string with one character per member: '1' in the index, '0' not.
local out = {}
for i = 1, #ARGV do
  out[i] = redis.call('zscore', KEYS[1], ARGV[i]) and '1' or '0'
end
return table.concat(out)
