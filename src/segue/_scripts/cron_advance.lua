--[[ cron_advance: move a schedule past the tick(s) it fired, fenced on the tick taken.
  KEYS[1] definitions (hash)  segue:{cron}:defs    (not used here)
  KEYS[2] due (zset)          segue:{cron}:due     schedule id -> next tick (ms)
  KEYS[3] firing (zset)       segue:{cron}:firing  schedule id -> lease expiry (ms)
  KEYS[4] fired (hash)        segue:{cron}:fired   schedule id -> last tick fired (ms); a
          paused schedule's skip passes segue:{cron}:skipped here (last tick skipped), a
          unique schedule's skip segue:{cron}:overlapped (its previous run still going)
  ARGV[1] schedule id   ARGV[2] the tick taken (the fence)   ARGV[3] the last tick fired
  ARGV[4] the next tick (ms), or '' when the expression has no later tick
  Returns: 1 advanced; 0 stale, nothing written: the stored tick is no longer the one taken
    (another worker advanced it, or the schedule was removed or re-timed). ]]
local sid = ARGV[1]
local tick = redis.call('ZSCORE', KEYS[2], sid)
if not tick or tonumber(tick) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[4] == '' then
  redis.call('ZREM', KEYS[2], sid)
else
  redis.call('ZADD', KEYS[2], ARGV[4], sid)
end
redis.call('HSET', KEYS[4], sid, ARGV[3])
redis.call('ZREM', KEYS[3], sid)
return 1
