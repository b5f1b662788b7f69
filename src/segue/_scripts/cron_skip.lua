--[[ cron_skip: move a paused schedule past its due tick without firing it, fenced on the
  tick taken like cron_advance.
  KEYS[1] due (zset)          segue:{cron}:due      schedule id -> next tick (ms)
  KEYS[2] firing (zset)       segue:{cron}:firing   schedule id -> lease expiry (ms)
  KEYS[3] skipped (hash)      segue:{cron}:skipped  schedule id -> last tick skipped (ms)
  ARGV[1] schedule id   ARGV[2] the tick taken (the fence)
  ARGV[3] the next tick (ms), or '' when the expression has no later tick
  Returns: 1 skipped; 0 stale, nothing written (another worker moved the schedule). ]]
local sid = ARGV[1]
local tick = redis.call('ZSCORE', KEYS[1], sid)
if not tick or tonumber(tick) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[1], sid)
else
  redis.call('ZADD', KEYS[1], ARGV[3], sid)
end
redis.call('HSET', KEYS[3], sid, ARGV[2])
redis.call('ZREM', KEYS[2], sid)
return 1
