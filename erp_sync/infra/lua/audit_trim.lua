-- Trim archived entries off the tail of an audit list: only those still there, in order.
-- KEYS[1]  the list (newest first: writers push at the head, the store's cap trims the tail)
-- ARGV     the entries the caller archived, as it read them from the tail (LRANGE -n -1)
-- Returns how many were trimmed: the longest leading run of ARGV that still ends the list. A
-- push since the read added at the head and moved none of them; the store's cap may have
-- dropped the oldest of them meanwhile, and then only the rest are trimmed, never a newer one.
local n = #ARGV
local tail = redis.call('LRANGE', KEYS[1], -n, -1)
local m = #tail
for r = math.min(n, m), 1, -1 do
  local same = true
  for i = 1, r do
    if tail[m - r + i] ~= ARGV[i] then
      same = false
      break
    end
  end
  if same then
    redis.call('LTRIM', KEYS[1], 0, -r - 1)
    return r
  end
end
return 0
