-- Shared helpers, prepended to every script at load time (see __init__.py).
-- Per-task keys (task:<id>, state:<id>, next:<id>, wf:<id>, early:<id>), per-task-name keys
-- (uniq:<name>:<key>, bucket:<name>, running:<name>) and the queue's outbox are built here
-- from the key prefix passed in ARGV[1] ("<prefix>:{<queue>}:"), so they share the queue's
-- hash tag and slot.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function add_history(tk, status, at, reason)
  local h = redis.call('HGET', tk, 'h') or ''
  redis.call('HSET', tk, 'h', h .. status .. '|' .. at .. '|' .. (reason or '') .. '\n')
end

local PRIORITY_LISTS = { high = 1, normal = 2, low = 3 }

-- The queue-level keys a transition may touch, gathered once per script call:
-- Q.base prefix; Q.lists[1..3] queued lists (high, normal, low); Q.sched; Q.wake;
-- Q.done[status] ended-task indexes; Q.paused index; Q.channel ended-task channel.
-- Q.woke is set when a task became queued (the script then leaves a wake token).
-- Q.waiting (the index of WAITING tasks), Q.dead and Q.events are set by the scripts that
-- have them.
local function queue_keys(base, high, normal, low, sched, wake, s, f, c, e, paused, channel)
  return { base = base, lists = { high, normal, low }, sched = sched, wake = wake,
    done = { succeeded = s, failed = f, cancelled = c, expired = e }, paused = paused,
    channel = channel, woke = false }
end

-- Lifecycle events go to the queue's capped stream (about the last EVENTS_CAP kept), in
-- the same atomic step as the transition they report.
local EVENTS_CAP = 10000
local function emit(Q, kind, id, name)
  if Q.events then
    redis.call('XADD', Q.events, 'MAXLEN', '~', EVENTS_CAP, '*', 'e', kind, 'id', id,
      'n', name or '')
  end
end

local function wake_if_needed(Q)
  if Q.woke and redis.call('LLEN', Q.wake) == 0 then redis.call('LPUSH', Q.wake, 1) end
end

local function workflow_status(Q, wf)
  if not wf then return nil end
  return redis.call('HGET', Q.base .. 'wf:' .. wf, 'st')
end

-- A task whose dependencies are done: queued, unless its workflow is paused or an operator
-- paused it while it waited (then held, PAUSED, until resumed).
local function make_ready(Q, tk, id, now)
  local f = redis.call('HMGET', tk, 'q', 'wf', 'hold', 'due')
  redis.call('HDEL', tk, 'wait', 'hold')
  if Q.waiting then redis.call('ZREM', Q.waiting, id) end
  if f[3] or workflow_status(Q, f[2]) == 'paused' then
    redis.call('HSET', tk, 's', 'paused')
    add_history(tk, 'paused', now, f[3] and 'paused while waiting' or 'workflow paused')
    redis.call('ZADD', Q.paused, now, id)
    emit(Q, 'task.paused', id, redis.call('HGET', tk, 'n'))
  elseif f[4] and tonumber(f[4]) > now then
    -- its delay (counted from enqueue) is not over yet
    redis.call('HSET', tk, 's', 'scheduled')
    add_history(tk, 'scheduled', now, 'dependencies done')
    redis.call('ZADD', Q.sched, tonumber(f[4]), id)
  else
    redis.call('HSET', tk, 's', 'queued')
    add_history(tk, 'queued', now, 'dependencies done')
    redis.call('LPUSH', Q.lists[PRIORITY_LISTS[f[1]]], id)
    Q.woke = true
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

-- A server that stood still (DEBUG SLEEP, a long fork or fsync, a paused VM, a restart)
-- stopped no lease clock: deadlines are server time, so once it goes on, leases look
-- expired that no holder could renew meanwhile. Claims and renewals note in the queue's
-- meta hash when they last ran (`seen`); a gap of more than half a lease (live holders
-- renew every third of one) means nobody could act, and each lease that ran out within the
-- gap gets back what it had left when the gap began, at most half a lease: a live holder
-- renews it within that, a dead one's task is reaped when it runs out again. The cost: when
-- no worker at all touched the queue for that long, a dead worker's tasks are recovered up
-- to half a lease later. Called before any lease of the queue is reaped or renewed.
local function bridge_gap(meta, leases, now, lease)
  local seen = tonumber(redis.call('HGET', meta, 'seen') or now)
  redis.call('HSET', meta, 'seen', now)
  if now - seen <= lease / 2 then return end
  local lapsed = redis.call('ZRANGEBYSCORE', leases, '(' .. seen, now, 'WITHSCORES')
  for i = 1, #lapsed, 2 do
    local left = math.min(tonumber(lapsed[i + 1]) - seen, lease / 2)
    redis.call('ZADD', leases, now + left, lapsed[i])
  end
end

-- A task leaves RUNNING: it no longer counts against its name's concurrency limit.
local function leave_running(base, tk, id)
  local f = redis.call('HMGET', tk, 'cn', 'n')
  if f[1] then
    redis.call('SREM', base .. 'running:' .. f[2], id)
    redis.call('HDEL', tk, 'cn')
  end
end

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

-- A step of workflow `wf` ended in this queue: count it in this queue's record of the
-- workflow. A record that counted its last one starts its ttl; a part (the record of a
-- queue other than the workflow's own) then tells the main record, which counts parts too.
local function count_ended(Q, wf, at)
  local wk = Q.base .. 'wf:' .. wf
  if redis.call('HINCRBY', wk, 'left', -1) <= 0 then
    redis.call('HSET', wk, 'et', at)
    local f = redis.call('HMGET', wk, 'ttl', 'part')
    local wttl = tonumber(f[1] or '-1')
    if wttl >= 0 then redis.call('PEXPIRE', wk, math.max(wttl, 1)) end
    if f[2] then outbox_push(Q, { k = 'p', w = wf, q = f[2] }) end
  end
end

-- Final transition of one task: store the outcome, index it until the record expires, tell
-- waiters, count it in its workflow. Returns what dependants need: its result, whether it
-- counts as passed (succeeded, or an optional step), its name, its dependants on other
-- queues ('xd': "<id>|<input index>|<workflow id or ->" ...), its workflow.
local function end_task(Q, tk, id, status, at, field, value, reason)
  local f = redis.call('HMGET', tk, 'ttl', 'r', 'opt', 'wf', 'n', 'uq', 'xd')
  local ttl = tonumber(f[1] or '-1')
  if f[6] then
    local lock = Q.base .. 'uniq:' .. f[6]
    if redis.call('GET', lock) == id then redis.call('DEL', lock) end
  end
  leave_running(Q.base, tk, id)
  redis.call('HSET', tk, 's', status, 'et', at, field, value)
  redis.call('HDEL', tk, 'ctl', 'ctlr', 'ctlt', 'wait', 'hold')
  add_history(tk, status, at, reason)
  redis.call('DEL', Q.base .. 'state:' .. id)
  redis.call('ZREM', Q.paused, id)
  if Q.waiting then redis.call('ZREM', Q.waiting, id) end
  if ttl == 0 then
    redis.call('DEL', tk)
  elseif ttl < 0 then
    redis.call('ZADD', Q.done[status], 9007199254740991, id)
  else
    redis.call('PEXPIRE', tk, ttl)
    redis.call('ZADD', Q.done[status], at + ttl, id)
  end
  redis.call('SPUBLISH', Q.channel, id)
  emit(Q, 'task.' .. status, id, f[5])
  if f[4] then count_ended(Q, f[4], at) end
  local result = nil
  if status == 'succeeded' then result = value end
  return result, status == 'succeeded' or f[3] == '1', f[5] or '?', f[7], f[4]
end

-- A task that ended has dependants on other queues: one outbox entry for each.
local function push_cross(Q, xd, sid, wf, status, passed, result, root)
  local cancelling = workflow_status(Q, wf) == 'cancelled' and 1 or 0
  for did, idx, dwf in string.gmatch(xd, '(%S+)|(%-?%d+)|(%S+)') do
    outbox_push(Q, { k = 'd', d = did, i = idx, w = dwf == '-' and '' or dwf, s = sid,
      st = status, p = passed and 1 or 0, r = result, m = root, c = cancelling })
  end
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
    local entries = redis.call('LRANGE', nk, 0, -1)
    local result, passed, name, xd, wf = end_task(Q, w[1], wid, wst, at, w[4], w[5], w[6])
    if #entries > 0 then redis.call('DEL', nk) end
    local root = w[7] or (name .. ' (' .. wid .. ') ended ' .. wst)
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
    redis.call('HSET', tk, 's', 'paused', 'd', 0)
    redis.call('HDEL', tk, 'ctl', 'ctlr', 'ctlt', 'w', 'due')
    add_history(tk, 'paused', now, f[2] or 'paused')
    redis.call('ZADD', Q.paused, now, id)
    emit(Q, 'task.paused', id, redis.call('HGET', tk, 'n'))
    return true
  end
  return false
end

local FINAL = { succeeded = true, failed = true, cancelled = true, expired = true }
local HELD = { queued = true, scheduled = true, retrying = true, suspended = true }

-- An operator's pause|resume|cancel of one task (see control.lua for the table).
-- Returns { status after, 1 if a running task was asked }, or an error reply.
local function control_task(Q, id, cmd, reason, control_channel, now)
  local tk = Q.base .. 'task:' .. id
  local f = redis.call('HMGET', tk, 's', 'q', 'ctl', 'hold')
  local status, prio, ctl = f[1], f[2], f[3]
  if not status then return redis.error_reply('SEGUE_NOT_FOUND ' .. id) end
  local function unqueue()
    redis.call('LREM', Q.lists[PRIORITY_LISTS[prio]], 0, id)
    redis.call('ZREM', Q.sched, id)
  end
  local function invalid()
    return redis.error_reply('SEGUE_INVALID_TRANSITION ' .. status .. ' ' .. cmd)
  end
  if cmd == 'pause' then
    if status == 'paused' then return { status, 0 } end
    if FINAL[status] then return invalid() end
    if status == 'waiting' then
      -- held where it is: when its dependencies are done it becomes PAUSED, not queued
      if not f[4] then
        redis.call('HSET', tk, 'hold', 1)
        add_history(tk, 'waiting', now, reason)
      end
      return { status, 0 }
    end
    if HELD[status] then
      unqueue()
      redis.call('HSET', tk, 's', 'paused', 'd', 0)
      redis.call('HDEL', tk, 'due')
      add_history(tk, 'paused', now, reason)
      redis.call('ZADD', Q.paused, now, id)
      emit(Q, 'task.paused', id, redis.call('HGET', tk, 'n'))
      return { 'paused', 0 }
    end
    if ctl == 'cancel' then return { status, 1 } end -- a cancel already asked for wins
    redis.call('HSET', tk, 'ctl', 'pause', 'ctlr', reason, 'ctlt', now)
    redis.call('SPUBLISH', control_channel, 'pause ' .. id)
    return { status, 1 }
  elseif cmd == 'resume' then
    if status == 'paused' then
      redis.call('HSET', tk, 's', 'queued')
      redis.call('HDEL', tk, 'ctl', 'ctlr', 'ctlt')
      add_history(tk, 'queued', now, reason)
      redis.call('ZREM', Q.paused, id)
      redis.call('LPUSH', Q.lists[PRIORITY_LISTS[prio]], id)
      Q.woke = true
      emit(Q, 'task.resumed', id, redis.call('HGET', tk, 'n'))
      return { 'queued', 0 }
    end
    if status == 'running' and ctl == 'pause' then
      -- the pause was not carried out yet: withdraw it, and tell the worker
      redis.call('HDEL', tk, 'ctl', 'ctlr', 'ctlt')
      redis.call('SPUBLISH', control_channel, 'resume ' .. id)
      return { status, 1 }
    end
    if status == 'waiting' then
      redis.call('HDEL', tk, 'hold')
      return { status, 0 }
    end
    if HELD[status] then return { status, 0 } end
    return invalid()
  elseif cmd == 'cancel' then
    if FINAL[status] then return { status, 0 } end
    if status == 'running' then
      redis.call('HSET', tk, 'ctl', 'cancel', 'ctlr', reason, 'ctlt', now)
      redis.call('SPUBLISH', control_channel, 'cancel ' .. id)
      return { status, 1 }
    end
    unqueue()
    finalize(Q, tk, id, 'cancelled', now, 'e', cancel_error(reason), reason)
    return { 'cancelled', 0 }
  end
  return redis.error_reply('SEGUE_INVALID_COMMAND ' .. cmd)
end

-- Whether the task whose fields start at ARGV[b] would be created: false when its id has a
-- record already; false and the holder's id when a live task holds its unique key.
local function creatable(base, b)
  if redis.call('EXISTS', base .. 'task:' .. ARGV[b]) == 1 then return false end
  local unique = ARGV[b + 9]
  if unique ~= '' then
    local holder = redis.call('GET', base .. 'uniq:' .. unique)
    if holder then
      local hs = redis.call('HGET', base .. 'task:' .. holder, 's')
      if hs and not FINAL[hs] then return false, holder end
    end
  end
  return true
end

-- Back-pressure (Settings.max_queue_length; `limit` 0 = none): the tasks waiting to run in
-- the queue (its queued lists and the zsets given: scheduled, waiting, paused) plus those
-- this call would create must stay within the limit. Checked before the call writes
-- anything, so a refused call writes nothing. Costs nothing without a limit; with one, a
-- few O(1) reads and one EXISTS per task of the call. Returns the error text, or nil.
local function queue_full(base, limit, lists, zsets, first, n, width)
  if limit <= 0 then return nil end
  local length = 0
  for _, k in ipairs(lists) do length = length + redis.call('LLEN', k) end
  for _, k in ipairs(zsets) do length = length + redis.call('ZCARD', k) end
  local adding = 0
  for i = 0, n - 1 do
    if creatable(base, first + i * width) then adding = adding + 1 end
  end
  if adding > 0 and length + adding > limit then
    return 'SEGUE_QUEUE_FULL ' .. base .. ' ' .. length .. ' ' .. limit .. ' ' .. adding
  end
  return nil
end

-- Create a task record from the 12 enqueue fields at ARGV[b..b+11]: id, name, payload,
-- priority, delay_ms, at_ms, max_tries, timeout_ms, ttl_ms, unique key ('' none: else a
-- lock uniq:<key> names the one live task), expire_in_ms (0 none), headers (JSON, '' none:
-- carried to the run, e.g. a trace context). Returns its key, status
-- (queued, scheduled, or `waiting` when told so) and due time; nil when the id already
-- exists; nil, nil, nil, <id> when a live task holds the unique key.
local function new_task(base, b, now, waiting)
  local id = ARGV[b]
  local tk = base .. 'task:' .. id
  local create, holder = creatable(base, b)
  if holder then return nil, nil, nil, holder end
  if not create then return nil end
  local unique = ARGV[b + 9]
  if unique ~= '' then redis.call('SET', base .. 'uniq:' .. unique, id) end
  local due = now + tonumber(ARGV[b + 4])
  local at = tonumber(ARGV[b + 5])
  if at > 0 then due = at end
  local status = 'queued'
  if waiting then
    status = 'waiting'
  elseif due > now then
    status = 'scheduled'
  end
  redis.call('HSET', tk, 'n', ARGV[b + 1], 'p', ARGV[b + 2], 's', status, 'q', ARGV[b + 3],
    't', 0, 'd', 0, 'g', 0, 'mt', ARGV[b + 6], 'to', ARGV[b + 7], 'ttl', ARGV[b + 8],
    'ce', now, 'h', status .. '|' .. now .. '|\n')
  if due > now then redis.call('HSET', tk, 'due', due) end
  if unique ~= '' then redis.call('HSET', tk, 'uq', unique) end
  -- expiry arrives relative (ms from now), so only the server's clock decides it
  local expire = tonumber(ARGV[b + 10])
  if expire > 0 then redis.call('HSET', tk, 'exp', now + expire) end
  if ARGV[b + 11] ~= '' then redis.call('HSET', tk, 'hd', ARGV[b + 11]) end
  return tk, status, due
end

-- Keep a task that failed for good in the queue's dead-letter list (Q.dead, newest first,
-- at most `cap`): its record then lives until it is retried or pushed out of the list,
-- when its own ttl starts again. A task with ttl 0 kept no record, so there is none.
local function dead_letter(Q, id, cap, now)
  local tk = Q.base .. 'task:' .. id
  if redis.call('EXISTS', tk) == 0 then return end
  redis.call('PERSIST', tk)
  redis.call('ZADD', Q.done.failed, 9007199254740991, id)
  redis.call('LPUSH', Q.dead, id)
  while redis.call('LLEN', Q.dead) > cap do
    local old = redis.call('RPOP', Q.dead)
    local otk = Q.base .. 'task:' .. old
    local ttl = tonumber(redis.call('HGET', otk, 'ttl') or '-1')
    if ttl > 0 and redis.call('HGET', otk, 's') == 'failed' then
      redis.call('PEXPIRE', otk, ttl)
      redis.call('ZADD', Q.done.failed, now + ttl, old)
    end
  end
end
