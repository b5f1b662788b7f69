--#include transition leases saga stats cascade signals blobs
-- A task whose dependencies are done: queued, unless its workflow is paused or an operator
-- paused it while it waited (then held, PAUSED, until resumed).
local function make_ready(Q, tk, id, now)
  local f = redis.call('HMGET', tk, 'q', 'wf', 'hold', 'due', 'lk')
  redis.call('HDEL', tk, 'wait', 'hold')
  if Q.waiting then redis.call('ZREM', Q.waiting, id) end
  if f[3] or workflow_status(Q, f[2]) == 'paused' then
    transition(Q, tk, id, { to = 'paused', at = now, score = now, event = 'task.paused',
      why = f[3] and 'paused while waiting' or 'workflow paused' })
  elseif f[4] and tonumber(f[4]) > now then
    -- its delay (counted from enqueue) is not over yet
    transition(Q, tk, id, { to = 'scheduled', at = now, why = 'dependencies done',
      score = tonumber(f[4]) })
  else
    transition(Q, tk, id, { to = 'queued', at = now, why = 'dependencies done',
      push = 'back', prio = f[1], lane = f[5] or false })
  end
end

-- The input a step receives from the steps before it: one result ('1'), or the list of
-- results in order ('l'), spliced from the stored JSON texts (never re-encoded).
local function assemble_input(tk)
  local f = redis.call('HMGET', tk, 'im', 'nd')
  if not f[1] then return end
  local n = tonumber(f[2])
  local parts = {}
  for from = 0, n - 1, 500 do
    local names = {}
    for i = from, math.min(n, from + 500) - 1 do names[#names + 1] = 'i:' .. i end
    local vals = redis.call('HMGET', tk, unpack(names))
    for j = 1, #names do parts[#parts + 1] = vals[j] or 'null' end
    redis.call('HDEL', tk, unpack(names))
  end
  if f[1] == '1' then
    redis.call('HSET', tk, 'in', parts[1] or 'null')
  else
    redis.call('HSET', tk, 'in', '[' .. table.concat(parts, ',') .. ']')
  end
end

-- The end marker of a task's output stream (stream.lua writes its chunks), so that its
-- readers stop. A run that did not write the chunks there (a later try that wrote none yet)
-- first gets its restart marker. The stream outlives the end by its linger ('sl', written by
-- the worker that streamed), or by the record's ttl when longer (ttl -1, kept forever: until
-- the record is deleted). A task that never streamed gets a stream only when its record goes
-- now (ttl 0): an empty one with the end marker, for 300 s; with a record, a reader learns
-- the end from its status, and a plain task costs no stream. The key is built from the
-- queue's key prefix, in its hash tag.
local function end_stream(sk, status, ttl, sg, sn, sl, gen, tries)
  if not sg then
    if ttl == 0 then
      redis.call('XADD', sk, '*', 'n', 1, 'end', status)
      redis.call('PEXPIRE', sk, 300000)
    end
    return
  end
  local n = tonumber(sn or '0') or 0
  if sg ~= gen then
    n = n + 1
    redis.call('XADD', sk, '*', 'n', n, 'r', tries or '0')
  end
  redis.call('XADD', sk, '*', 'n', n + 1, 'end', status)
  local linger = tonumber(sl or '300000') or 300000
  if ttl >= 0 then redis.call('PEXPIRE', sk, math.max(ttl, linger)) end
end

-- Final transition of one task: store the outcome, index it until the record expires, tell
-- waiters, count it in its workflow. Returns what dependants need: its result, whether it
-- counts as passed (succeeded, or an optional step), its name, its dependants on other
-- queues ('xd': "<id>|<input index>|<workflow id or ->" ...), its workflow.
-- The transition of every task end, filled in place: a claim or finish call ends a batch of
-- tasks, and a table built per task (with its `set` list) was a good part of the server's
-- time per task, in allocation and garbage collection. transition() keeps no reference.
-- A success also sets 'd' (lost deliveries in a row) back to 0, in the same command, when
-- there is one to reset (a record starts without it: adding it costs more than a read).
local ENDING = { set = { 'et', 0, '', '' } }
local SUCCEEDING = { set = { 'et', 0, '', '', 'd', '0' } }
-- the largest result an ended message carries (Keyspace.outcome_channel says the same)
local OUTCOME_INLINE = 4096

local function end_task(Q, tk, id, status, at, field, value, reason)
  -- one read for what every end needs, leave_running's fields ('cn', 'n') included; the
  -- rest only when there is one (a stream's fields, the last command sent to sub-tasks)
  local f = redis.call('HMGET', tk, 'ttl', 'opt', 'wf', 'n', 'uq', 'xd', 'nk', 'cn', 'sg',
    'cof', 'cp', 's', 'sgw', 'off', 'ctl', 'wait', 'hold', 'pc', 'd')
  f[4] = task_name(f[4])
  local ttl = tonumber(f[1] or '-1')
  if field == 'r' and is_ref(value) then
    adopt_blob(Q.base, tk, id, value)
    f[14] = redis.call('HGET', tk, 'off')
  end
  if f[9] then
    local sf = redis.call('HMGET', tk, 'sn', 'sl', 'g', 't')
    end_stream(Q.base .. 'out:' .. id, status, ttl, f[9], sf[1], sf[2], sf[3], sf[4])
  else
    end_stream(Q.base .. 'out:' .. id, status, ttl, nil)
  end
  if f[7] then
    -- its sub-tasks: cancelled when it failed or was cancelled (those of policy 'cancel');
    -- else those its pause still holds are resumed (its end would never resume them)
    if status == 'failed' or status == 'cancelled' then
      cascade_mark(Q, id, 'cancel', 'parent ended ' .. status, f[7])
    elseif redis.call('HGET', tk, 'cz') == 'pause' then
      cascade_mark(Q, id, 'resume', 'parent ended ' .. status, f[7])
    end
  end
  if f[5] then
    local lock = Q.base .. 'uniq:' .. f[5]
    if redis.call('GET', lock) == id then redis.call('DEL', lock) end
  end
  -- it leaves RUNNING (leave_running)
  if f[8] then leave_sets(Q.base, tk, id, f[8], f[4]) end
  local t = (status == 'succeeded' and f[19] and f[19] ~= '0') and SUCCEEDING or ENDING
  local set = t.set
  local at_text = num_text(at)
  t.to, t.at, t.why, t.event, t.name = status, at, reason, 'task.' .. status, f[4] or ''
  set[2], set[3], set[4] = at_text, field, value
  transition(Q, tk, id, t)
  -- what an end clears, when the read above found any (most ends find none: each field
  -- named costs a scan of the record, kept compact by lib/transition.lua, so reading four
  -- absent fields costs the server less than deleting six, 'ctlr' and 'ctlt' going with
  -- 'ctl')
  if f[15] or f[16] or f[17] or f[18] then
    redis.call('HDEL', tk, 'ctl', 'ctlr', 'ctlt', 'wait', 'hold', 'pc')
  end
  redis.call('DEL', Q.base .. 'state:' .. id)
  -- only a paused or a waiting task is in its status's index (a run ends from RUNNING,
  -- which is in neither: two commands less per task a worker ends)
  if f[12] ~= 'running' then
    redis.call('ZREM', Q.paused, id)
    if Q.waiting then redis.call('ZREM', Q.waiting, id) end
  end
  sig_end(Q, tk, id, ttl, f[4], f[13])
  if ttl == 0 then
    redis.call('DEL', tk)
  elseif ttl < 0 then
    redis.call('ZADD', Q.done[status], '9007199254740991', id)
  else
    redis.call('PEXPIRE', tk, num_text(ttl))
    redis.call('ZADD', Q.done[status], num_text(at + ttl), id)
  end
  blobs_live(Q.base, id, f[14], ttl, true)
  -- the ended channel of the previous release's waiters (the id alone), then this release's
  -- (`<done channel>:out`, Keyspace.outcome_channel): with a success's result up to
  -- OUTCOME_INLINE bytes after a NUL, which spares its waiters reading the record; a larger
  -- or offloaded result and every other end are read from the record, as before
  redis.call('SPUBLISH', Q.channel, id)
  if status == 'succeeded' and ttl ~= 0 and field == 'r' and value
      and #value <= OUTCOME_INLINE
      and not is_ref(value) then
    redis.call('SPUBLISH', Q.channel .. ':out', id .. '\0' .. value)
  else
    redis.call('SPUBLISH', Q.channel .. ':out', id)
  end
  count_stat(Q.base, status, at)
  local result = nil
  if status == 'succeeded' then result = value end
  if f[3] then
    saga_note(Q, id, f[3], status == 'succeeded' or f[2] == '1', f[11] == '1' and result)
    count_ended(Q, f[3], at)
  end
  if f[10] then
    -- a compensation: its workflow learns how it ended (lib/saga.lua)
    local wf, n = string.match(f[10], '^(.*)|(%d+)$')
    outbox_push(Q, { k = 'k', w = wf, n = n, st = status, s = id })
  end
  return result, status == 'succeeded' or f[2] == '1', f[4] or '?', f[6], f[3]
end

-- End a task and carry the consequence to every task waiting on it, transitively: a
-- dependant whose last dependency passed becomes ready; one whose dependency did not pass
-- fails (on_failure=fail) or is cancelled (on_failure=cancel, or its workflow cancelled).
-- A sub-task's parent (kind 'w') is woken whatever the outcome. Dependants on other queues
-- get an outbox entry. `root` (optional): the task that first ended, named in the errors of
-- dependants (default: this task).
local function finalize(Q, tk, id, status, at, field, value, reason, root)
  local work = { { tk, id, status, field, value, reason, root } }
  local k = 1
  while k <= #work do
    local w = work[k]
    k = k + 1
    local wid, wst = w[2], w[3]
    local nk = Q.base .. 'next:' .. wid
    local entries = redis.call('LRANGE', nk, '0', '-1')
    local result, passed, name, xd, wf = end_task(Q, w[1], wid, wst, at, w[4], w[5], w[6])
    local root = w[7]
    if #entries > 0 or xd then
      if #entries > 0 then redis.call('DEL', nk) end
      root = root or (name .. ' (' .. wid .. ') ended ' .. wst)
    end
    for _, e in ipairs(entries) do
      local did, idx, kind = string.match(e, '^(.*)|(%-?%d+)|(%a)$')
      local dtk = Q.base .. 'task:' .. did
      local df = redis.call('HMGET', dtk, 's', 'of', 'wf')
      if df[1] == 'waiting' then
        if kind == 'w' or passed then
          if kind ~= 'w' and tonumber(idx) >= 0 then
            redis.call('HSET', dtk, 'i:' .. idx, result or 'null')
          end
          if redis.call('HINCRBY', dtk, 'wait', -1) <= 0 then
            assemble_input(dtk)
            make_ready(Q, dtk, did, at)
          end
        else
          local cancel = df[2] == 'cancel' or workflow_status(Q, df[3]) == 'cancelled'
          local st = cancel and 'cancelled' or 'failed'
          local err = cjson.encode({ type = cancel and 'Cancelled' or 'DependencyFailed',
            message = 'dependency ' .. root, reason = 'dependency_' .. wst })
          work[#work + 1] = { dtk, did, st, 'e', err, 'dependency ' .. root, root }
        end
      end
    end
    if xd then push_cross(Q, xd, wid, wf, wst, passed, result, root) end
  end
end

-- A dependency on another queue ended (outbox entry `e`, delivered by forward.lua, or
-- parked and applied by graph.lua): count it, once. The task's 'x:<dependency>' field is
-- '0' while that dependency is pending; any other value (resolved, or not a dependency of
-- this task) makes a delivery change nothing.
local function resolve_cross(Q, id, e, now)
  local tk = Q.base .. 'task:' .. id
  local mark = 'x:' .. e.s
  local f = redis.call('HMGET', tk, 's', mark, 'of', 'wf')
  if f[2] ~= '0' then return false end
  redis.call('HSET', tk, mark, '1')
  if f[1] ~= 'waiting' then return true end
  if e.p == 1 then
    local idx = tonumber(e.i)
    if idx >= 0 then redis.call('HSET', tk, 'i:' .. idx, e.r or 'null') end
    if redis.call('HINCRBY', tk, 'wait', -1) <= 0 then
      assemble_input(tk)
      make_ready(Q, tk, id, now)
    end
  else
    local cancel = f[3] == 'cancel' or e.c == 1 or workflow_status(Q, f[4]) == 'cancelled'
    local msg, reason, root = e.m, 'dependency_missing', nil
    if e.st ~= 'missing' then
      msg, reason, root = 'dependency ' .. e.m, 'dependency_' .. e.st, e.m
    end
    local err = cjson.encode({ type = cancel and 'Cancelled' or 'DependencyFailed',
      message = msg, reason = reason })
    finalize(Q, tk, id, cancel and 'cancelled' or 'failed', now, 'e', err, msg, root)
  end
  return true
end

local function cancel_error(reason)
  return cjson.encode({ type = 'Cancelled', message = reason, reason = 'cancelled' })
end

-- A pending operator request outranks a run's own outcome when the run stops without
-- ending: cancel ends the task, pause holds it (indexed in the paused zset). Returns true
-- when it took over.
local function obey_control(Q, tk, id, now)
  local f = redis.call('HMGET', tk, 'ctl', 'ctlr')
  if f[1] == 'cancel' then
    finalize(Q, tk, id, 'cancelled', now, 'e', cancel_error(f[2] or 'cancelled'),
      f[2] or 'cancelled')
    return true
  elseif f[1] == 'pause' then
    transition(Q, tk, id, { to = 'paused', at = now, why = f[2] or 'paused', set = { 'd', 0 },
      score = now, event = 'task.paused' })
    redis.call('HDEL', tk, 'ctl', 'ctlr', 'ctlt', 'w', 'due')
    return true
  end
  return false
end

-- Keep a task that failed for good in the queue's dead-letter list (Q.dead, newest first,
-- at most `cap`): its record then lives until it is retried or pushed out of the list,
-- when its own ttl starts again. A task with ttl 0 kept no record, so there is none.
local function dead_letter(Q, id, cap, now)
  local tk = Q.base .. 'task:' .. id
  if redis.call('EXISTS', tk) == 0 then return end
  redis.call('PERSIST', tk)
  blobs_live(Q.base, id, redis.call('HGET', tk, 'off'), -1, true)
  redis.call('PERSIST', Q.base .. 'sgi:' .. id)  -- the accepted signal ids live as long
  redis.call('ZADD', Q.done.failed, 9007199254740991, id)
  redis.call('LPUSH', Q.dead, id)
  while redis.call('LLEN', Q.dead) > cap do
    local old = redis.call('RPOP', Q.dead)
    local otk = Q.base .. 'task:' .. old
    local ttl = tonumber(redis.call('HGET', otk, 'ttl') or '-1')
    if ttl > 0 and redis.call('HGET', otk, 's') == 'failed' then
      redis.call('PEXPIRE', otk, ttl)
      blobs_live(Q.base, old, redis.call('HGET', otk, 'off'), ttl, true)
      redis.call('ZADD', Q.done.failed, now + ttl, old)
    end
  end
end
