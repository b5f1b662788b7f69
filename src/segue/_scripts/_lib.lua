-- Shared helpers, prepended to every script at load time (see __init__.py).
-- Per-task keys are built here from the key prefix passed in ARGV[1]
-- ("<prefix>:{<queue>}:"), so they share the queue's hash tag and slot.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function add_history(tk, status, at, reason)
  local h = redis.call('HGET', tk, 'h') or ''
  redis.call('HSET', tk, 'h', h .. status .. '|' .. at .. '|' .. (reason or '') .. '\n')
end

local PRIORITY_LISTS = { high = 1, normal = 2, low = 3 }

-- Final transition: store the outcome, index it until the record expires, tell waiters.
-- done_keys: { succeeded = key, failed = key, cancelled = key, expired = key }
local function finalize(prefix, tk, id, status, at, field, value, reason, done_keys, channel)
  local ttl = tonumber(redis.call('HGET', tk, 'ttl') or '-1')
  redis.call('HSET', tk, 's', status, 'et', at, field, value)
  add_history(tk, status, at, reason)
  redis.call('DEL', prefix .. 'state:' .. id)
  if ttl == 0 then
    redis.call('DEL', tk)
  elseif ttl < 0 then
    redis.call('ZADD', done_keys[status], 9007199254740991, id)
  else
    redis.call('PEXPIRE', tk, ttl)
    redis.call('ZADD', done_keys[status], at + ttl, id)
  end
  redis.call('SPUBLISH', channel, id)
end

-- A pending operator request outranks a run's own outcome when the run stops without
-- ending: cancel ends the task, pause holds it. Returns true when it took over.
-- A carried-out pause indexes the task in the paused zset (paused_key).
local function obey_control(prefix, tk, id, now, done_keys, channel, paused_key)
  local f = redis.call('HMGET', tk, 'ctl', 'ctlr')
  if f[1] == 'cancel' then
    local err = cjson.encode({ type = 'Cancelled', message = f[2] or 'cancelled',
      reason = 'cancelled' })
    finalize(prefix, tk, id, 'cancelled', now, 'e', err, f[2] or 'cancelled', done_keys, channel)
    return true
  elseif f[1] == 'pause' then
    redis.call('HSET', tk, 's', 'paused', 'd', 0)
    redis.call('HDEL', tk, 'ctl', 'ctlr', 'w', 'due')
    add_history(tk, 'paused', now, f[2] or 'paused')
    redis.call('ZADD', paused_key, now, id)
    return true
  end
  return false
end
