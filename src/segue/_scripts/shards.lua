--[[ shards: create or change the shard count of a queue (docs/sharding.md).
  KEYS[1] the queue's base meta hash (segue:{q}:meta): `sn` its shard count (absent: 1),
          `so` the count before a reshard while that count's shards drain (absent: none)
  ARGV[1] action: 'create' (store ARGV[2] unless a count is stored), 'reshard' (make
          ARGV[2] the count, the current one becoming `so`; refused while an `so` is
          stored), 'drained' (forget `so` if it is still ARGV[2]), 'read';
          on a new shard's meta hash instead: 'hold' (flag it paused, marked `pr` as the
          reshard's own flag, unless it is paused already), 'release' (clear the flag if
          it is still the reshard's own: a pause meanwhile cleared `pr` and keeps it)
  ARGV[2] a count
  Returns {count, old count (0: none), done, paused}: done 1 changed, 0 nothing to change,
  -1 refused (a reshard while the previous one drains); paused 1 when the base is paused,
  read in the same step as the count is written, so a reshard racing a pause keeps its new
  shards paused (Queue.reshard holds them before, and releases them only when 0). ]]
local meta = KEYS[1]
local action, n = ARGV[1], ARGV[2]
if action == 'hold' then
  if redis.call('HGET', meta, 'paused') ~= '1' then
    redis.call('HSET', meta, 'paused', '1', 'pr', '1')
  end
  return {1, 0, 1, 1}
elseif action == 'release' then
  if redis.call('HGET', meta, 'pr') == '1' then
    redis.call('HDEL', meta, 'paused', 'pr')
  end
  return {1, 0, 1, 0}
end
local cur = tonumber(redis.call('HGET', meta, 'sn') or '1')
local old = tonumber(redis.call('HGET', meta, 'so') or '0')
if action == 'create' then
  if redis.call('HEXISTS', meta, 'sn') == 1 then
    return {cur, old, 0}
  end
  redis.call('HSET', meta, 'sn', n)
  return {tonumber(n), old, 1}
elseif action == 'reshard' then
  if old > 0 then
    return {cur, old, -1}
  end
  if tonumber(n) == cur then
    redis.call('HSET', meta, 'sn', n)
    return {cur, 0, 0}
  end
  redis.call('HSET', meta, 'sn', n, 'so', cur)
  return {tonumber(n), cur, 1, redis.call('HGET', meta, 'paused') == '1' and 1 or 0}
elseif action == 'drained' then
  if old > 0 and old == tonumber(n) then
    redis.call('HDEL', meta, 'so')
    return {cur, 0, 1}
  end
  return {cur, old, 0}
end
return {cur, old, 0}
