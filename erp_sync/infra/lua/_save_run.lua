-- A Lua function, included by the scripts that save a run record (not a script of its own).
-- save(runs, history, id, record, cap): HSET the record; a new id is pushed onto the history
-- list and the oldest ids beyond ``cap`` are dropped with their records. Returns 1 if new.
local function save(runs, history, id, record, cap)
  local created = redis.call('HSET', runs, id, record)
  if created == 1 then
    redis.call('LPUSH', history, id)
    while redis.call('LLEN', history) > tonumber(cap) do
      redis.call('HDEL', runs, redis.call('RPOP', history))
    end
  end
  return created
end
