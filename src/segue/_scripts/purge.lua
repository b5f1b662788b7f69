--[[ purge: cancel the tasks of a queue that wait to run (queued, scheduled, retrying,
  suspended, paused), up to a count per call; running tasks are left alone.
  KEYS[1] high list   KEYS[2] normal list   KEYS[3] low list   KEYS[4] scheduled zset
  KEYS[5] wake list   KEYS[6..9] done zsets: succeeded, failed, cancelled, expired
  KEYS[10] paused zset   KEYS[11] waiting zset   KEYS[12] events stream
  ARGV[1] key prefix "segue:{q}:"   ARGV[2] done channel   ARGV[3] most tasks this call
  ARGV[4] reason
  Each is CANCELLED like an operator's cancel (its dependants follow their on_failure).
  Returns: how many were cancelled (call again while it returns ARGV[3]). ]]
--#include clock finalize
local prefix, most, reason = ARGV[1], tonumber(ARGV[3]), ARGV[4]
local Q = queue_keys(prefix, KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7],
  KEYS[8], KEYS[9], KEYS[10], ARGV[2])
Q.waiting = KEYS[11]
Q.events = KEYS[12]
local now = now_ms()
local done = 0
local function purge(id)
  local tk = prefix .. 'task:' .. id
  local s = redis.call('HGET', tk, 's')
  if s and (HELD[s] or s == 'paused') then
    finalize(Q, tk, id, 'cancelled', now, 'e', cancel_error(reason), reason)
    done = done + 1
  end
end
for l = 1, 3 do
  while done < most do
    local id = redis.call('RPOP', KEYS[l])
    if not id then break end
    purge(id)
  end
end
for _, key in ipairs({ KEYS[4], KEYS[10] }) do
  if done < most then
    for _, id in ipairs(redis.call('ZRANGE', key, 0, most - done - 1)) do
      redis.call('ZREM', key, id)
      purge(id)
    end
  end
end
return done
