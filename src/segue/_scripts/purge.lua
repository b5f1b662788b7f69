--[[ purge: cancel the tasks of a queue that wait to run (queued, scheduled, retrying,
  suspended, paused), up to a count per call; running tasks are left alone.
  KEYS[1] high list   KEYS[2] normal list   KEYS[3] low list   KEYS[4] scheduled zset
  KEYS[5] wake list   KEYS[6..9] done zsets: succeeded, failed, cancelled, expired
  KEYS[10] paused zset   KEYS[11] waiting zset   KEYS[12] events stream
  ARGV[1] key prefix "segue:{q}:"   ARGV[2] done channel   ARGV[3] most tasks this call
  ARGV[4] reason   ARGV[5] '1': sleeping tasks too (a durable sleep, ctx.sleep: SUSPENDED
    by a run of the generation its 'slp' names); else they are spared
  Keyed tasks are taken from their lanes (lib/lanes.lua, built from the prefix), in turn,
  waiting for a token or parked alike.
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
-- the lanes of keyed tasks (lib/lanes.lua): those in turn, waiting for a token, or parked
local kq_taken = 0
for l = 1, 3 do
  local ring, kdue = prefix .. 'ring:' .. l, prefix .. 'kdue:' .. l
  local lanes = redis.call('LRANGE', ring, 0, -1)
  for _, lane in ipairs(redis.call('ZRANGE', kdue, 0, -1)) do lanes[#lanes + 1] = lane end
  for _, lane in ipairs(redis.call('ZRANGEBYSCORE', prefix .. 'kparked', l, l)) do
    lanes[#lanes + 1] = lane
  end
  for _, lane in ipairs(lanes) do
    local lk = prefix .. 'lane:' .. l .. ':' .. lane
    while done < most do
      local id = redis.call('RPOP', lk)
      if not id then break end
      kq_taken = kq_taken + 1
      purge(id)
    end
    if redis.call('EXISTS', lk) == 0 then
      redis.call('HDEL', prefix .. 'kcredit', lane .. '|' .. l)
      redis.call('LREM', ring, 0, lane)
      redis.call('ZREM', kdue, lane)
      if redis.call('SREM', prefix .. 'kpark:' .. lane, l) == 1
          and redis.call('EXISTS', prefix .. 'kpark:' .. lane) == 0 then
        redis.call('ZREM', prefix .. 'kparked', lane)
      end
    end
  end
end
if kq_taken > 0 then redis.call('HINCRBY', prefix .. 'meta', 'kq', -kq_taken) end
local spare_sleeping = ARGV[5] ~= '1'
local function sleeping(id)
  local f = redis.call('HMGET', prefix .. 'task:' .. id, 's', 'slp', 'g')
  return f[1] == 'suspended' and f[2] ~= false and f[2] == f[3]
end
for _, key in ipairs({ KEYS[4], KEYS[10] }) do
  local skipped = 0
  while done < most do
    local ids = redis.call('ZRANGE', key, skipped, skipped + most - done - 1)
    if #ids == 0 then break end
    for _, id in ipairs(ids) do
      if spare_sleeping and sleeping(id) then
        skipped = skipped + 1
      else
        redis.call('ZREM', key, id)
        purge(id)
      end
    end
  end
end
return done
