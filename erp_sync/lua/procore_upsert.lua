-- Write one page of Procore-side records, only those that are new or differ.
-- KEYS[1]  the collection (HASH ERP id -> canonical record JSON)
-- ARGV     pairs: id, record JSON, id, record JSON, ...
-- Returns {created, updated, unchanged}.
local created, updated, unchanged = 0, 0, 0
for i = 1, #ARGV, 2 do
  local old = redis.call('HGET', KEYS[1], ARGV[i])
  if old == ARGV[i + 1] then
    unchanged = unchanged + 1
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    if old then updated = updated + 1 else created = created + 1 end
  end
end
return {created, updated, unchanged}
