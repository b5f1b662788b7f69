-- Cascade to sub-tasks (see _forward.py, "Cascades"). A sub-task started with ctx.enqueue
-- has the id '<parent id>.<n>', n = 1.. (sub-tasks share their parent's queue, so the whole tree is in
-- one slot); the parent's record counts them ('nk'). A command that reaches a parent which
-- has sub-tasks writes a marker, the field <parent id> of the queue's hash 'cascade':
-- "<command>|<next n>|<last n known>|<reason>". cascade.lua advances markers in bounded
-- batches (workers' forwarders, and the client that sent the command), each sub-task
-- reached that has sub-tasks of its own gets a marker in turn, and a marker is removed when
-- its walk is over. The parent's record keeps the last command sent down ('cz') and whether
-- its walk is under way ('cw', which the reconciler checks against the marker).
-- Returns nothing; tells the worker to run its forwarder (Q.outboxed) so the walk starts.
local function cascade_mark(Q, id, cmd, reason, kids)
  local nk = tonumber(kids or '0') or 0
  if nk <= 0 then return end
  redis.call('HSET', Q.base .. 'cascade', id, cmd .. '|1|' .. nk .. '|' .. (reason or ''))
  local tk = Q.base .. 'task:' .. id
  if redis.call('EXISTS', tk) == 1 then redis.call('HSET', tk, 'cz', cmd, 'cw', 1) end
  Q.outboxed = true
end
