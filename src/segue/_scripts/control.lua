--[[ control: an operator's pause, resume or cancel of one task, from any process.
  KEYS[1] high list   KEYS[2] normal list   KEYS[3] low list   KEYS[4] scheduled zset
  KEYS[5] leases zset   KEYS[6] wake list   KEYS[7] control channel (sharded pub/sub)
  KEYS[8..11] done zsets: succeeded, failed, cancelled, expired   KEYS[12] paused zset
  ARGV[1] key prefix "segue:{q}:"   ARGV[2] task id   ARGV[3] command: pause|resume|cancel
  ARGV[4] reason (who asked, why)   ARGV[5] done channel
  A task that is not running changes state here and now. A running task gets a stored
  request (field `ctl`, the truth a worker also reads when it renews its lease) and a
  message on the control channel (the fast path); its worker carries it out.
  Returns: { status after the command, 1 if a running task was asked (0 otherwise) }.
  Errors: SEGUE_NOT_FOUND, SEGUE_INVALID_TRANSITION <status> <command>. ]]
local prefix, id, cmd, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local tk = prefix .. 'task:' .. id
local f = redis.call('HMGET', tk, 's', 'q', 'ctl')
local status, prio, ctl = f[1], f[2], f[3]
if not status then return redis.error_reply('SEGUE_NOT_FOUND ' .. id) end
local now = now_ms()
local done_keys = { succeeded = KEYS[8], failed = KEYS[9], cancelled = KEYS[10], expired = KEYS[11] }
local final = { succeeded = true, failed = true, cancelled = true, expired = true }
local waiting = { queued = true, scheduled = true, retrying = true, suspended = true }

local function unqueue()
  redis.call('LREM', KEYS[PRIORITY_LISTS[prio]], 0, id)
  redis.call('ZREM', KEYS[4], id)
end

local function invalid()
  return redis.error_reply('SEGUE_INVALID_TRANSITION ' .. status .. ' ' .. cmd)
end

if cmd == 'pause' then
  if status == 'paused' then return { status, 0 } end
  if final[status] then return invalid() end
  if waiting[status] then
    unqueue()
    redis.call('HSET', tk, 's', 'paused')
    redis.call('HDEL', tk, 'due')
    add_history(tk, 'paused', now, reason)
    redis.call('ZADD', KEYS[12], now, id)
    return { 'paused', 0 }
  end
  if ctl == 'cancel' then return { status, 1 } end  -- a cancel already asked for wins
  redis.call('HSET', tk, 'ctl', 'pause', 'ctlr', reason)
  redis.call('SPUBLISH', KEYS[7], 'pause ' .. id)
  return { status, 1 }
elseif cmd == 'resume' then
  if status == 'paused' then
    redis.call('HSET', tk, 's', 'queued')
    redis.call('HDEL', tk, 'ctl', 'ctlr')
    add_history(tk, 'queued', now, reason)
    redis.call('ZREM', KEYS[12], id)
    redis.call('LPUSH', KEYS[PRIORITY_LISTS[prio]], id)
    if redis.call('LLEN', KEYS[6]) == 0 then redis.call('LPUSH', KEYS[6], 1) end
    return { 'queued', 0 }
  end
  if status == 'running' and ctl == 'pause' then
    -- the pause was not carried out yet: withdraw it
    redis.call('HDEL', tk, 'ctl', 'ctlr')
    return { status, 0 }
  end
  if waiting[status] then return { status, 0 } end
  return invalid()
elseif cmd == 'cancel' then
  if final[status] then return { status, 0 } end
  if status == 'running' then
    redis.call('HSET', tk, 'ctl', 'cancel', 'ctlr', reason)
    redis.call('SPUBLISH', KEYS[7], 'cancel ' .. id)
    return { status, 1 }
  end
  unqueue()
  redis.call('ZREM', KEYS[12], id)
  local err = cjson.encode({ type = 'Cancelled', message = reason, reason = 'cancelled' })
  finalize(prefix, tk, id, 'cancelled', now, 'e', err, reason, done_keys, ARGV[5])
  return { 'cancelled', 0 }
end
return redis.error_reply('SEGUE_INVALID_COMMAND ' .. cmd)
