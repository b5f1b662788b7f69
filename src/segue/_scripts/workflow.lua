--[[ workflow: pause, resume or cancel a whole workflow, from any process.
  KEYS[1] high list   KEYS[2] normal list   KEYS[3] low list   KEYS[4] scheduled zset
  KEYS[5] leases zset   KEYS[6] wake list   KEYS[7] control channel (sharded pub/sub)
  KEYS[8..11] done zsets: succeeded, failed, cancelled, expired   KEYS[12] paused zset
  KEYS[13] waiting zset   KEYS[14] events stream
  ARGV[1] key prefix "segue:{q}:"   ARGV[2] workflow id
  ARGV[3] command: pause (running steps finish) | pause_running (they are paused too)
    | resume | cancel
  ARGV[4] reason   ARGV[5] done channel
  pause: steps waiting in the queue are held (PAUSED); steps whose dependencies end while
  paused are held instead of queued. resume: held steps go back to the queue. cancel:
  running steps are asked to stop, every other unfinished step is CANCELLED. A step's
  pause, resume or cancel reaches its sub-tasks (lib/cascade.lua), whose markers the
  client then walks (cascade.lua).
  Returns: the workflow's state after the command: running | paused | cancelled.
  Errors: SEGUE_NOT_FOUND, SEGUE_INVALID_TRANSITION <state> <command>. ]]
--#include clock operator
local prefix, wf, cmd, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local wk = prefix .. 'wf:' .. wf
local f = redis.call('HMGET', wk, 'st', 'steps', 'left', 'stn')
if not f[1] then return redis.error_reply('SEGUE_NOT_FOUND ' .. wf) end
local st = f[1]
local ended = tonumber(f[3]) <= 0
local now = now_ms()
local Q = queue_keys(prefix, KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[6], KEYS[8], KEYS[9],
  KEYS[10], KEYS[11], KEYS[12], ARGV[5])
Q.waiting = KEYS[13]
Q.events = KEYS[14]
local function each_step(fn)
  local function one(sid)
    local s = redis.call('HGET', prefix .. 'task:' .. sid, 's')
    if s then fn(sid, s) end
  end
  if f[4] then  -- the steps <wf>.1 .. <wf>.<n>, counted (graph.lua)
    for i = 1, tonumber(f[4]) or 0 do one(wf .. '.' .. i) end
  else
    for sid in string.gmatch(f[2] or '', '%S+') do one(sid) end
  end
end
if cmd == 'cancel' then
  if ended or st == 'cancelled' then return st end
  redis.call('HSET', wk, 'st', 'cancelled')
  each_step(function(sid, s)
    if not FINAL[s] then control_task(Q, sid, 'cancel', reason, KEYS[7], now) end
  end)
  wake_if_needed(Q)
  return 'cancelled'
end
if st == 'cancelled' or ended then
  local verb = cmd == 'pause_running' and 'pause' or cmd
  return redis.error_reply('SEGUE_INVALID_TRANSITION ' .. (ended and 'ended' or st) .. ' ' .. verb)
end
if cmd == 'pause' or cmd == 'pause_running' then
  redis.call('HSET', wk, 'st', 'paused')
  each_step(function(sid, s)
    -- pause_running also holds a step waiting for its sub-tasks, as a task pause would:
    -- the pause reaches them (a cascade, lib/cascade.lua)
    local busy = s == 'running'
      or (s == 'waiting' and redis.call('HEXISTS', prefix .. 'task:' .. sid, 'nk') == 1)
    if HELD[s] or (busy and cmd == 'pause_running') then
      control_task(Q, sid, 'pause', reason, KEYS[7], now)
    end
  end)
  return 'paused'
elseif cmd == 'resume' then
  redis.call('HSET', wk, 'st', 'running')
  each_step(function(sid, s)
    if s == 'paused' or s == 'running' or s == 'waiting' then
      control_task(Q, sid, 'resume', reason, KEYS[7], now)
    end
  end)
  wake_if_needed(Q)
  return 'running'
end
return redis.error_reply('SEGUE_INVALID_COMMAND ' .. cmd)
