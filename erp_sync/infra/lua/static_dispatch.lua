-- Send one run of a static (Celery beat_schedule) entry: fenced by the leader lease, and only if
-- the entry's last run is still the one the caller read, so a run is sent at most once even when
-- two beats decide at the same moment or a new leader takes over.
-- KEYS[1]  the lease (STRING "<node>|<epoch>")
-- KEYS[2]  the static entries' last runs (HASH name -> epoch seconds)
-- KEYS[3]  the queue the task goes to (kombu's Redis list)
-- ARGV[1]  the caller's lease token
-- ARGV[2]  the entry's name
-- ARGV[3]  the last run the caller read ('' when it had none)
-- ARGV[4]  this run's time (becomes the last run)
-- ARGV[5]  the task message (kombu's Redis envelope)
-- Returns 1 when sent, 0 when the last run moved (re-read it), -1 when no longer the leader.
if redis.call('get', KEYS[1]) ~= ARGV[1] then return -1 end
local last = redis.call('hget', KEYS[2], ARGV[2]) or ''
if last ~= ARGV[3] then return 0 end
redis.call('hset', KEYS[2], ARGV[2], ARGV[4])
redis.call('lpush', KEYS[3], ARGV[5])
return 1
