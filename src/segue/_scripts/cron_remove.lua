--[[ cron_remove: delete one schedule from every key that holds it.
  KEYS[1] definitions (hash)  segue:{cron}:defs    schedule id -> definition JSON
  KEYS[2] due (zset)          segue:{cron}:due     schedule id -> next tick (ms)
  KEYS[3] firing (zset)       segue:{cron}:firing  schedule id -> lease expiry (ms)
  KEYS[4] fired (hash)        segue:{cron}:fired   schedule id -> last tick fired (ms)
  ARGV[1] schedule id
  Returns: 1 removed, 0 there was no such schedule. ]]
local sid = ARGV[1]
local existed = redis.call('HDEL', KEYS[1], sid)
redis.call('ZREM', KEYS[2], sid)
redis.call('ZREM', KEYS[3], sid)
redis.call('HDEL', KEYS[4], sid)
return existed
