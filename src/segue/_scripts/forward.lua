--[[ forward: deliver outbox entries of other queues to the tasks and workflow records of
  this queue (see lib/outbox.lua, outbox_push). Delivered at least once, each changes things once:
  a dependency counts when its 'x:' field is still '0' (resolve_cross), a part's end counts
  when its 'pe:<queue>' field is new.
  KEYS[1] high list   KEYS[2] normal list   KEYS[3] low list   KEYS[4] scheduled zset
  KEYS[5] wake list   KEYS[6..9] done zsets: succeeded, failed, cancelled, expired
  KEYS[10] paused zset   KEYS[11] waiting zset   KEYS[12] events stream
  ARGV[1] key prefix "segue:{q}:"   ARGV[2] done channel   ARGV[3..] entries (JSON)
  An entry for a task that does not exist while its workflow has no record here yet (its
  part is created by a later script call) is parked in early:<id>, where graph.lua finds
  it; one for a task that is gone is dropped.
  Returns: how many entries changed something. ]]
--#include clock finalize
local prefix = ARGV[1]
local now = now_ms()
local EARLY_KEEP_MS = 86400000 -- a part never created (its client died) leaves no leak
local Q = queue_keys(prefix, KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7],
  KEYS[8], KEYS[9], KEYS[10], ARGV[2])
Q.waiting = KEYS[11]
Q.events = KEYS[12]
local changed = 0
for i = 3, #ARGV do
  local e = cjson.decode(ARGV[i])
  if e.k == 'p' then
    local wk = prefix .. 'wf:' .. e.w
    if redis.call('EXISTS', wk) == 1 and redis.call('HSETNX', wk, 'pe:' .. e.q, 1) == 1 then
      count_ended(Q, e.w, now)
      changed = changed + 1
    end
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
