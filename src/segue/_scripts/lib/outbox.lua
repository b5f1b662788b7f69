-- Cross-queue coordination (see _forward.py). A script never touches another queue's slot:
-- what a task's end means for tasks of other queues goes to this queue's outbox, a list of
-- JSON entries, in the same atomic step; workers move each entry to its queue with
-- forward.lua. Entries: { k='d': dependency `s` of task `d` (input index `i`, workflow `w`)
-- ended `st`, passed `p` (1/0), result `r`, root cause `m`, its workflow cancelling `c` }
-- and { k='p': the part on queue `q` of workflow `w` has no unfinished step left }.
local function outbox_push(Q, entry)
  redis.call('RPUSH', Q.base .. 'outbox', cjson.encode(entry))
  Q.outboxed = true
end

-- The state of workflow `wf` (its record's `st`: running | paused | cancelled), nil for none.
local function workflow_status(Q, wf)
  if not wf then return nil end
  return redis.call('HGET', Q.base .. 'wf:' .. wf, 'st')
end

-- A task that ended has dependants on other queues: one outbox entry for each.
local function push_cross(Q, xd, sid, wf, status, passed, result, root)
  local cancelling = workflow_status(Q, wf) == 'cancelled' and 1 or 0
  for did, idx, dwf in string.gmatch(xd, '(%S+)|(%-?%d+)|(%S+)') do
    outbox_push(Q, { k = 'd', d = did, i = idx, w = dwf == '-' and '' or dwf, s = sid,
      st = status, p = passed and 1 or 0, r = result, m = root, c = cancelling })
  end
end
