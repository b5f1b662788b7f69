--[[ subtask: create a sub-task of a running task (ctx.enqueue), idempotent by id, and count
  it in its parent's record, whose cascades then reach it (lib/cascade.lua).
  KEYS[1] high list   KEYS[2] normal list   KEYS[3] low list   (segue:{q}:q:<level>)
  KEYS[4] scheduled zset   KEYS[5] wake list   KEYS[6] events stream
  KEYS[7] waiting zset   KEYS[8] paused zset (read only with a length limit)
  ARGV[1] key prefix "segue:{q}:" (the parent's record, the markers' hash and the task's are
    built from it: same hash tag)   ARGV[2] most tasks waiting to run (0 = no limit)
  ARGV[3] parent id   ARGV[4] the sub-task's number n (its id is '<parent id>.<n>')
  ARGV[5] what its parent's end does to it: cancel | abandon
  ARGV[6..18] the 13 enqueue fields (lib/create.lua, EnqueueSpec in _wire.py)
  A sub-task created while a cascade of its parent is under way is reached by that walk; one
  created after a pause or cancel of its parent was carried down (a running parent that
  has not stopped yet) gets a walk of its own, from its number.
  Returns: 1 created, 0 already existed, or the id of the live task holding its unique key.
  Errors: SEGUE_QUEUE_FULL, as enqueue.lua. ]]
--#include clock events create
local prefix, parent, n, policy = ARGV[1], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local full = queue_full(prefix, tonumber(ARGV[2]), { KEYS[1], KEYS[2], KEYS[3] },
  { KEYS[4], KEYS[7], KEYS[8] }, ARGV, 6, 1, SPEC_WIDTH)
if full then return redis.error_reply(full) end
local now = now_ms()
local id = ARGV[6 + SPEC.id]
local tk, status, due, holder = new_task(prefix, ARGV, 6, now, false)
if holder then return holder end
local ptk = prefix .. 'task:' .. parent
local p = redis.call('HMGET', ptk, 'nk', 'cz', 's', 'ctl')
if tonumber(p[1] or '0') < n then redis.call('HSET', ptk, 'nk', n) end
if not tk then return 0 end
if policy == 'abandon' then redis.call('HSET', tk, 'ope', 'a') end
if status == 'scheduled' then
  redis.call('ZADD', KEYS[4], due, id)
else
  redis.call('LPUSH', KEYS[PRIORITY_LISTS[ARGV[6 + SPEC.priority]]], id)
end
redis.call('XADD', KEYS[6], 'MAXLEN', '~', EVENTS_CAP, '*', 'e', 'task.enqueued',
  'id', id, 'n', ARGV[6 + SPEC.name])
if redis.call('LLEN', KEYS[5]) == 0 then redis.call('LPUSH', KEYS[5], 1) end
local ck = prefix .. 'cascade'
local cmd = nil
if p[4] == 'cancel' or p[3] == 'failed' or p[3] == 'cancelled' then
  cmd = 'cancel'
elseif p[4] == 'pause' then
  cmd = 'pause'
end
if cmd and policy ~= 'abandon' and redis.call('HEXISTS', ck, parent) == 0 then
  redis.call('HSET', ck, parent, cmd .. '|' .. n .. '|' .. n .. '|started after it')
  redis.call('HSET', ptk, 'cw', 1)
end
return 1
