--[[ cron_put: create or update one schedule; an unchanged expression keeps its next tick.
  KEYS[1] definitions (hash)  segue:{cron}:defs    schedule id -> definition JSON
  KEYS[2] due (zset)          segue:{cron}:due     schedule id -> next tick (ms)
  KEYS[3] firing (zset)       segue:{cron}:firing  schedule id -> lease expiry (ms)
  KEYS[4] fired (hash)        segue:{cron}:fired   schedule id -> last tick fired (ms)
  ARGV[1] schedule id   ARGV[2] definition JSON (its 'spec' field: expression and zone)
  ARGV[3] that spec     ARGV[4] first tick (ms), or '' when the caller has not computed it
  Returns { outcome, now }: 1 = updated, next tick kept (same spec, already timed);
    2 = written with ARGV[4] as its next tick; 0 = nothing written: compute the first tick
    from `now` (server time) and call again. ]]
--#include clock
local sid = ARGV[1]
local now = now_ms()
local old = redis.call('HGET', KEYS[1], sid)
if old and redis.call('ZSCORE', KEYS[2], sid) then
  local ok, def = pcall(cjson.decode, old)
  if ok and type(def) == 'table' and def.spec == ARGV[3] then
    redis.call('HSET', KEYS[1], sid, ARGV[2])
    return { 1, now }
  end
end
if ARGV[4] == '' then return { 0, now } end
redis.call('HSET', KEYS[1], sid, ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], sid)
-- a lease taken on the old timing must not hold back the new one; the worker holding it
-- is fenced out by its old tick when it tries to advance
redis.call('ZREM', KEYS[3], sid)
return { 2, now }
