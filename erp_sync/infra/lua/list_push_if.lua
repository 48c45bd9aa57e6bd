-- Push onto a capped list only while a guard key exists (a delivery log while its company does).
-- KEYS[1]  the guard key (the company record)
-- KEYS[2]  the list
-- ARGV[1]  the entry, pushed at the head
-- ARGV[2]  the cap: the list keeps its newest ARGV[2] entries
-- Returns 1 when pushed, 0 when the guard key is gone (nothing written).
if redis.call('exists', KEYS[1]) == 0 then return 0 end
redis.call('lpush', KEYS[2], ARGV[1])
redis.call('ltrim', KEYS[2], 0, tonumber(ARGV[2]) - 1)
return 1
