--[[ cron_take: lease the schedules whose tick is due, so that one worker fires each tick.
  KEYS[1] definitions (hash)  segue:{cron}:defs    schedule id -> definition JSON
  KEYS[2] due (zset)          segue:{cron}:due     schedule id -> next tick (ms)
  KEYS[3] firing (zset)       segue:{cron}:firing  schedule id -> lease expiry (ms)
  KEYS[4] fired (hash)        segue:{cron}:fired   (not used here)
  ARGV[1] lease ms   ARGV[2] most schedules to take
  A lease only keeps other workers off a tick while this one fires it; the tick stays in
  the due zset (the fence of cron_advance), and an expired lease frees it for another.
  Returns { now, soonest, {id, tick, definition}... }: `soonest` is the earliest time (ms)
  something may become due again (a future tick or a lease expiry), -1 if none. ]]
--#include clock
local now = now_ms()
local want = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
-- leased entries are skipped, so look past as many as there are leases
local limit = want + redis.call('ZCARD', KEYS[3])
local due = redis.call('ZRANGE', KEYS[2], '-inf', now, 'BYSCORE', 'LIMIT', 0, limit,
  'WITHSCORES')
local out = { now, -1 }
local taken = 0
local until_ms = now + tonumber(ARGV[1])
for i = 1, #due, 2 do
  if taken >= want then break end
  local sid = due[i]
  if not redis.call('ZSCORE', KEYS[3], sid) then
    local def = redis.call('HGET', KEYS[1], sid)
    if def then
      redis.call('ZADD', KEYS[3], until_ms, sid)
      out[#out + 1] = { sid, due[i + 1], def }
      taken = taken + 1
    else
      redis.call('ZREM', KEYS[2], sid) -- a tick without a definition fires nothing
    end
  end
end
local soonest = -1
local nxt = redis.call('ZRANGE', KEYS[2], '(' .. now, '+inf', 'BYSCORE', 'LIMIT', 0, 1,
  'WITHSCORES')
if nxt[2] then soonest = tonumber(nxt[2]) end
local lease = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
if lease[2] and (soonest < 0 or tonumber(lease[2]) < soonest) then
  soonest = tonumber(lease[2])
end
out[2] = soonest
return out
