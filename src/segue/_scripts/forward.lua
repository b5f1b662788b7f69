--[[ forward: deliver outbox entries of other queues to the tasks and workflow records of
  this queue (see lib/outbox.lua, outbox_push). Delivered at least once, each changes things once:
  a dependency counts when its 'x:' field is still '0' (resolve_cross), a part's end counts
  when its 'pe:<queue>' field is new.
  KEYS[1] high list   KEYS[2] normal list   KEYS[3] low list   KEYS[4] scheduled zset
  KEYS[5] wake list   KEYS[6..9] done zsets: succeeded, failed, cancelled, expired
  KEYS[10] paused zset   KEYS[11] waiting zset   KEYS[12] events stream
  ARGV[1] key prefix "segue:{q}:"   ARGV[2] done channel   ARGV[3..] entries (JSON)
  Entries of a saga (lib/saga.lua): 'c' creates a compensation task of this queue, 'k'
  tells this queue's workflow record that one of its compensations ended.
  An entry for a task that does not exist while its workflow has no record here yet (its
  part is created by a later script call) is parked in early:<id>, where graph.lua finds
  it; one for a task that is gone is dropped.
  Returns: how many entries changed something. ]]
--#include clock create finalize
local prefix = ARGV[1]
local now = now_ms()
local EARLY_KEEP_MS = 86400000 -- a part never created (its client died) leaves no leak
local Q = queue_keys(prefix, KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7],
  KEYS[8], KEYS[9], KEYS[10], ARGV[2])
Q.waiting = KEYS[11]
Q.events = KEYS[12]
local changed = 0

-- A compensation asked for by its workflow (lib/saga.lua): created once, from its enqueue
-- fields, with the step's result as its input. One that exists already and has ended tells
-- its end again (a repair may ask twice; the workflow counts it once).
local function create_compensation(e)
  local tk, status, due = new_task(prefix, e.a, 1, now, false)
  if not tk then
    local f = redis.call('HMGET', prefix .. 'task:' .. e.d, 's', 'cof')
    if f[1] and FINAL[f[1]] and f[2] then
      outbox_push(Q, { k = 'k', w = e.w, n = e.n, st = f[1], s = e.d })
    end
    return false
  end
  redis.call('HSET', tk, 'in', e.r or 'null', 'cof', e.w .. '|' .. e.n)
  emit(Q, 'task.enqueued', e.d, e.a[1 + SPEC.name])
  if status == 'scheduled' then
    redis.call('ZADD', KEYS[4], due, e.d)
  else
    redis.call('LPUSH', KEYS[PRIORITY_LISTS[e.a[1 + SPEC.priority]]], e.d)
    Q.woke = true
  end
  return true
end
for i = 3, #ARGV do
  local e = cjson.decode(ARGV[i])
  if e.k == 'p' then
    local wk = prefix .. 'wf:' .. e.w
    if redis.call('EXISTS', wk) == 1 and redis.call('HSETNX', wk, 'pe:' .. e.q, 1) == 1 then
      saga_merge(wk, e)
      count_ended(Q, e.w, now)
      changed = changed + 1
    end
  elseif e.k == 'c' then
    if create_compensation(e) then changed = changed + 1 end
  elseif e.k == 'k' then
    if saga_ended(Q, e.w, e.n, e.st, now) then changed = changed + 1 end
  elseif redis.call('EXISTS', prefix .. 'task:' .. e.d) == 1 then
    if resolve_cross(Q, e.d, e, now) then changed = changed + 1 end
  elseif e.w ~= '' and redis.call('EXISTS', prefix .. 'wf:' .. e.w) == 0 then
    local ek = prefix .. 'early:' .. e.d
    if redis.call('HSETNX', ek, e.s, ARGV[i]) == 1 then changed = changed + 1 end
    redis.call('PEXPIRE', ek, EARLY_KEEP_MS)
  end
end
wake_if_needed(Q)
return changed
