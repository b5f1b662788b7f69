--[[ retry: put a task that ended without success back in its queue, as new (same id).
  KEYS[1] high list   KEYS[2] normal list   KEYS[3] low list   KEYS[4] wake list
  KEYS[5..8] done zsets: succeeded, failed, cancelled, expired   KEYS[9] dead-letter list
  ARGV[1] key prefix "segue:{q}:"   ARGV[2] task id   ARGV[3] reason
  Its tries start again from 0 and its error is cleared; tasks that depended on it have
  already ended and are not revived.
  Its output stream is deleted (key built from ARGV[1], in the queue's hash tag).
  Its expiry is dropped (it was retried on purpose). A unique task is refused while
  another live task holds its key; a task that ended because its dependency did is refused
  (it has no input to run with: retry the dependency's workflow or task).
  Returns: 'queued'. Errors: SEGUE_NOT_FOUND, SEGUE_INVALID_TRANSITION <status> retry,
  SEGUE_DUPLICATE <holder id>, SEGUE_DEPENDENCY_ENDED <id>. ]]
--#include clock transition blobs
local prefix, id = ARGV[1], ARGV[2]
local tk = prefix .. 'task:' .. id
local f = redis.call('HMGET', tk, 's', 'q', 'uq')
if not f[1] then return redis.error_reply('SEGUE_NOT_FOUND ' .. id) end
if f[1] ~= 'failed' and f[1] ~= 'cancelled' and f[1] ~= 'expired' then
  return redis.error_reply('SEGUE_INVALID_TRANSITION ' .. f[1] .. ' retry')
end
-- a task that ended because a dependency did has no input to run with: retry that one
local e = redis.call('HGET', tk, 'e')
if e then
  local ok, err = pcall(cjson.decode, e)
  if ok and type(err) == 'table' and type(err.reason) == 'string'
      and string.sub(err.reason, 1, 11) == 'dependency_' then
    return redis.error_reply('SEGUE_DEPENDENCY_ENDED ' .. id)
  end
end
if f[3] then
  local holder = redis.call('GET', prefix .. 'uniq:' .. f[3])
  if holder and holder ~= id then
    local hs = redis.call('HGET', prefix .. 'task:' .. holder, 's')
    if hs and not FINAL[hs] then return redis.error_reply('SEGUE_DUPLICATE ' .. holder) end
  end
end
local now = now_ms()
local Q = queue_keys(prefix, KEYS[1], KEYS[2], KEYS[3], nil, KEYS[4], KEYS[5], KEYS[6], KEYS[7],
  KEYS[8], nil, nil)
redis.call('PERSIST', tk)
blobs_live(prefix, id, redis.call('HGET', tk, 'off'), -1, true)
for k = 5, 8 do redis.call('ZREM', KEYS[k], id) end
redis.call('LREM', KEYS[9], 0, id)
transition(Q, tk, id, { to = 'queued', at = now, why = ARGV[3], set = { 't', 0, 'd', 0 },
  push = 'back', prio = f[2] })
redis.call('HDEL', tk, 'e', 'et', 'w', 'due', 'rel', 'rel0', 'st', 'exp', 'np', 'pw', 'sg', 'sn', 'sl', 'sb',
  'sgx', 'sgk')
-- it starts as new: its output stream too (readers of the ended one saw its end marker)
redis.call('DEL', prefix .. 'out:' .. id)
if f[3] then redis.call('SET', prefix .. 'uniq:' .. f[3], id) end
wake_if_needed(Q)
return 'queued'
