--#include clock states events lanes
-- Per-task keys (task:<id>, state:<id>, next:<id>, wf:<id>, early:<id>), per-task-name keys
-- (uniq:<name>:<key>, bucket:<name>, running:<name>) and the queue's outbox are built by
-- the library from the key prefix its caller passes ("<prefix>:{<queue>}:"), so they share
-- the queue's hash tag and slot.

-- A record keeps its last HISTORY_KEEP transitions. A record created by this release keeps
-- them compactly in 'hc', one line each: the status's letter (HISTORY_CODES), the time in
-- ms after the record's creation ('ce'), then '|' and the reason when there is one. Three
-- such lines fit in a hash value short enough (hash-max-listpack-value, 64 bytes by
-- default) for the server to keep the whole record in its compact encoding, where the
-- long form of 'h' ("<status>|<at ms>|<reason>\n" each) made a finished record cost three
-- times as much. A record of the previous release (with 'h' and no 'hc') keeps the long
-- form to the end, so readers of that release still read it; an old worker appends its own
-- transitions to 'h' in the long form, beside 'hc', and a reader merges both by time.
-- A reader numbers what is kept by the count in 'hn' (segue._info), or, without it, by
-- counting the lines. A line is at least MIN_LINE bytes, so a history shorter than
-- HISTORY_KEEP * MIN_LINE cannot be full: it is only appended to, and its lines are its
-- count. A longer one is counted and trimmed, and its count written to 'hn' from then on (it
-- stays that long: trimmed, it keeps HISTORY_KEEP lines). So the scan and the count cost
-- only tasks with long histories (most tasks take three transitions), and the scan also
-- bounds a long-form history that a worker of the previous release (which appends without
-- counting) made long. Returns the field to write, the new history, and its count when
-- 'hn' must be written (else nil).
local HISTORY_KEEP = 200
local MIN_LINE = { h = 22, hc = 3 }

local function trimmed_history(tk, field, h, line)
  if #h < HISTORY_KEEP * MIN_LINE[field] then return h .. line, nil end
  local total = tonumber(redis.call('HGET', tk, 'hn'))
  local _, kept = string.gsub(h, '\n', '')
  if total == nil or total < kept then total = kept end
  local from = 1
  while kept >= HISTORY_KEEP do
    from = string.find(h, '\n', from, true) + 1
    kept = kept - 1
  end
  if from > 1 then h = string.sub(h, from) end
  return h .. line, total + 1
end

local function next_history(tk, status, at, reason)
  local f = redis.call('HMGET', tk, 'hc', 'ce')
  if not f[1] then
    local h = redis.call('HGET', tk, 'h')
    if h then
      return 'h', trimmed_history(tk, 'h', h,
        status .. '|' .. num_text(at) .. '|' .. (reason or '') .. '\n')
    end
  end
  local line
  if reason and reason ~= '' then
    line = HISTORY_CODES[status] .. (at - (tonumber(f[2]) or at)) .. '|' .. reason .. '\n'
  else
    line = HISTORY_CODES[status] .. (at - (tonumber(f[2]) or at)) .. '\n'
  end
  if not f[1] then return 'hc', line, nil end
  return 'hc', trimmed_history(tk, 'hc', f[1], line)
end

-- A history line without a change of status (an operator's hold of a waiting task).
local function add_history(tk, status, at, reason)
  local field, h, total = next_history(tk, status, at, reason)
  if total then
    redis.call('HSET', tk, field, h, 'hn', total)
  else
    redis.call('HSET', tk, field, h)
  end
end

-- The queue-level keys a transition may touch, gathered once per script call:
-- Q.base prefix; Q.lists[1..3] queued lists (high, normal, low); Q.sched; Q.wake;
-- Q.done[status] ended-task indexes; Q.paused index; Q.channel ended-task channel.
-- Q.woke is set when a task became queued (the script then leaves a wake token).
-- Q.waiting (the index of WAITING tasks), Q.leases (of RUNNING ones), Q.dead and Q.events
-- are set by the scripts that have them.
local function queue_keys(base, high, normal, low, sched, wake, s, f, c, e, paused, channel)
  return { base = base, lists = { high, normal, low }, sched = sched, wake = wake,
    done = { succeeded = s, failed = f, cancelled = c, expired = e }, paused = paused,
    channel = channel, woke = false }
end

local function wake_if_needed(Q)
  if Q.woke and redis.call('LLEN', Q.wake) == 0 then redis.call('LPUSH', Q.wake, 1) end
end

-- Every status write of a task after its creation goes through here, so that its status,
-- its history and the index of its new status stay in step; the caller names the event it
-- emits (nil: this transition emits none). `t` holds:
--   to: the new status; at: server ms; why: the history line's reason
--   set: other fields written with the status (a flat list), or nil
--   event: the event kind, or nil; name: the task's name when the caller has it
--   push: 'back' (LPUSH: runs after what is queued) or 'front' (RPUSH: runs next) of its
--     priority list `prio`, or of its lane `lane` (lib/lanes.lua; false: none) when it has
--     a limit key (both read from the record when either is not given)
--   score: its score in the zset of the new status (Q.sched for scheduled, retrying and
--     suspended; Q.paused; Q.waiting; Q.leases for running)
-- With neither push nor score the caller keeps the index (a final status: end_task).
local ZSET_OF = { scheduled = 'sched', retrying = 'sched', suspended = 'sched',
  paused = 'paused', waiting = 'waiting', running = 'leases' }
local function transition(Q, tk, id, t)
  local field, h, total = next_history(tk, t.to, t.at, t.why)
  if total then
    redis.call('HSET', tk, 'hn', total, 's', t.to, field, h, unpack(t.set or {}))
  elseif t.set then
    redis.call('HSET', tk, 's', t.to, field, h, unpack(t.set))
  else
    redis.call('HSET', tk, 's', t.to, field, h)
  end
  if t.push then
    local prio, lane = t.prio, t.lane
    if not prio or lane == nil then
      local f = redis.call('HMGET', tk, 'q', 'lk')
      prio, lane = prio or f[1], f[2] or false
    end
    if lane then
      lane_push(Q.base, PRIORITY_LISTS[prio], lane, id, t.push == 'front')
    else
      redis.call(t.push == 'front' and 'RPUSH' or 'LPUSH', Q.lists[PRIORITY_LISTS[prio]], id)
    end
    Q.woke = true
  elseif t.score then
    redis.call('ZADD', Q[ZSET_OF[t.to]], t.score, id)
  end
  if t.event and Q.events then
    emit(Q, t.event, id, t.name or task_name(redis.call('HGET', tk, 'n')))
  end
end
