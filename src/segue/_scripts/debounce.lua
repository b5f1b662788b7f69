--[[ debounce: one enqueue with .options(debounce=...): collapse enqueues of the same
  debounce key within a window into one task.
  KEYS[1] high list   KEYS[2] normal list   KEYS[3] low list   KEYS[4] scheduled zset
  KEYS[5] wake list   KEYS[6] events stream   KEYS[7] waiting zset   KEYS[8] paused zset
  (as enqueue.lua)
  ARGV[1] key prefix "segue:{q}:" (the task's record and the window's pointer
    `<prefix>debounce:<debounce key>` are built from it: same hash tag)
  ARGV[2] most tasks waiting to run in the queue (0 = no limit), as enqueue.lua
  ARGV[3] debounce key   ARGV[4] window ms   ARGV[5] max wait ms (0 = none)
  ARGV[6] edge: trailing | leading
  ARGV[7..20] the 14 enqueue fields of the task a new window creates (SPEC, lib/create.lua;
    trailing: its delay is the window)   ARGV[21] its lane, when it has one
  Trailing: while the window's task is still SCHEDULED, an enqueue takes its place: its
  arguments become this call's, and its start moves to a window from now, but never later
  than max wait after the window opened ('dbs'). Once it is queued or running, the next
  enqueue opens a new window with a new task.
  Leading: a new window's task is queued at once; enqueues for the rest of the window are
  dropped and answered with that task.
  Returns: { task id, 1 created | 2 collapsed into it | 0 dropped }. ]]
--#include clock events create
local prefix, dkey = ARGV[1], ARGV[3]
local window, max_wait, edge = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local b = 7
local now = now_ms()
local ptr = prefix .. 'debounce:' .. dkey
local cur = redis.call('GET', ptr)
if cur then
  local tk = prefix .. 'task:' .. cur
  local f = redis.call('HMGET', tk, 's', 'dbs')
  if edge == 'trailing' and f[1] == 'scheduled' and f[2] then
    local due = now + window
    if max_wait > 0 then due = math.min(due, tonumber(f[2]) + max_wait) end
    redis.call('HSET', tk, 'p', ARGV[b + SPEC.payload], 'due', due)
    redis.call('ZADD', KEYS[4], due, cur)
    redis.call('PEXPIRE', ptr, due - now + window + 1000)
    return { cur, 2 }
  elseif edge == 'leading' and f[1] then
    return { cur, 0 }
  end
end
local full = queue_full(prefix, tonumber(ARGV[2]), { KEYS[1], KEYS[2], KEYS[3] },
  { KEYS[4], KEYS[7], KEYS[8] }, ARGV, b, 1, SPEC_WIDTH)
if full then return redis.error_reply(full) end
local id = ARGV[b + SPEC.id]
local lane = ARGV[b + SPEC_WIDTH]
local tk, status, due, holder = new_task(prefix, ARGV, b, now, false, lane)
if holder then return { holder, 0 } end
if not tk then return { id, 0 } end
redis.call('HSET', tk, 'dbs', now, 'dbk', dkey)
if status == 'scheduled' then
  redis.call('ZADD', KEYS[4], due, id)
else
  push_new(prefix, KEYS[PRIORITY_LISTS[ARGV[b + SPEC.priority]]], ARGV, b, lane)
  if redis.call('LLEN', KEYS[5]) == 0 then redis.call('LPUSH', KEYS[5], 1) end
end
local life = edge == 'leading' and window or (math.max(max_wait, window) + window + 1000)
redis.call('SET', ptr, id, 'PX', life)
redis.call('XADD', KEYS[6], 'MAXLEN', '~', EVENTS_CAP, '*', 'e', 'task.enqueued', 'id', id,
  'n', ARGV[b + SPEC.name])
return { id, 1 }
