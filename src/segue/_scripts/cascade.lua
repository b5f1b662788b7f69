--[[ cascade: advance the cascade markers of one queue (lib/cascade.lua): carry each
  parent's pause, resume or cancel to its sub-tasks, at most ARGV[3] sub-tasks per call.
  KEYS[1] high list   KEYS[2] normal list   KEYS[3] low list   KEYS[4] scheduled zset
  KEYS[5] leases zset   KEYS[6] wake list   KEYS[7] control channel (sharded pub/sub)
  KEYS[8..11] done zsets: succeeded, failed, cancelled, expired   KEYS[12] paused zset
  KEYS[13] waiting zset   KEYS[14] events stream
  ARGV[1] key prefix "segue:{q}:" (the markers' hash, records and sub-task ids are built
    from it: same hash tag)   ARGV[2] done channel   ARGV[3] most sub-tasks to look at
  A sub-task of policy 'abandon' (field 'ope' = 'a') is left alone. pause: a sub-task not
  paused already is paused as an operator's pause would (a running one is asked), and its
  record names the parent ('pc'); resume: only a sub-task whose 'pc' names this parent is
  resumed; cancel: every unfinished sub-task is cancelled. A sub-task reached that has
  sub-tasks of its own gets its marker through the same command (lib/operator.lua).
  Repeating a step changes nothing it changed already.
  Returns: { sub-tasks looked at, markers left }. ]]
--#include clock operator
local prefix = ARGV[1]
local budget = tonumber(ARGV[3])
local ck = prefix .. 'cascade'
local now = now_ms()
local Q = queue_keys(prefix, KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[6], KEYS[8], KEYS[9],
  KEYS[10], KEYS[11], KEYS[12], ARGV[2])
Q.waiting = KEYS[13]
Q.events = KEYS[14]

local function reach(pid, cid, cmd, reason)
  local ctk = prefix .. 'task:' .. cid
  local f = redis.call('HMGET', ctk, 's', 'ope', 'pc', 'ctl', 'hold')
  local s = f[1]
  if not s or f[2] == 'a' or FINAL[s] then return end
  if cmd == 'cancel' then
    control_task(Q, cid, 'cancel', reason, KEYS[7], now)
  elseif cmd == 'pause' then
    -- paused, or asked to be, by someone else: that pause is theirs to lift
    if s == 'paused' or (s == 'waiting' and f[5]) or (s == 'running' and f[4]) then return end
    local r = control_task(Q, cid, 'pause', reason, KEYS[7], now)
    if not r.err then redis.call('HSET', ctk, 'pc', pid) end
  elseif cmd == 'resume' and f[3] == pid then
    redis.call('HDEL', ctk, 'pc')
    if s == 'paused' or (s == 'running' and f[4] == 'pause') or (s == 'waiting' and f[5]) then
      control_task(Q, cid, 'resume', reason, KEYS[7], now)
    end
  end
end

local seen = 0
local scan = redis.call('HSCAN', ck, '0', 'COUNT', 20)
local fields = scan[2]
for i = 1, #fields, 2 do
  if seen >= budget then break end
  local pid = fields[i]
  local cmd, nxt, last, reason = string.match(fields[i + 1], '^(%a+)|(%d+)|(%d+)|(.*)$')
  local ptk = prefix .. 'task:' .. pid
  if not cmd then
    redis.call('HDEL', ck, pid) -- unreadable: dropped rather than blocking the walk
  else
    nxt = tonumber(nxt)
    -- sub-tasks started while the walk goes on are reached too
    last = math.max(tonumber(last), tonumber(redis.call('HGET', ptk, 'nk') or '0'))
    local why = 'cascade from ' .. pid .. ': ' .. reason
    while nxt <= last and seen < budget do
      reach(pid, pid .. '.' .. nxt, cmd, why)
      nxt = nxt + 1
      seen = seen + 1
    end
    if nxt > last then
      redis.call('HDEL', ck, pid)
      redis.call('HDEL', ptk, 'cw')
    else
      redis.call('HSET', ck, pid, cmd .. '|' .. nxt .. '|' .. last .. '|' .. reason)
    end
  end
end
wake_if_needed(Q)
return { seen, redis.call('HLEN', ck) }
