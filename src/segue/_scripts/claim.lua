--[[ claim: promote due tasks, recover expired leases, then lease up to N queued tasks.
  KEYS[1] high list   KEYS[2] normal list   KEYS[3] low list
  KEYS[4] scheduled zset   KEYS[5] leases zset (score = lease deadline, server ms)
  KEYS[6] wake list   KEYS[7] queue meta hash   KEYS[8] dead-letter list
  KEYS[9..12] done zsets: succeeded, failed, cancelled, expired (score = record expiry)
  KEYS[13] paused zset (operator-paused tasks, score = when)
  KEYS[14] rate limits hash (task name -> "<tokens per ms> <burst>")
  KEYS[15] concurrency limits hash (task name -> most running at once, all workers)
  KEYS[16] waiting zset (tasks waiting for others)   KEYS[17] events stream
  KEYS[18] signal deadlines zset (sigdue: tasks waiting for a signal, score = deadline)
  ARGV[1] key prefix "segue:{q}:"   ARGV[2] worker id   ARGV[3] max tasks to claim
  ARGV[4] lease ms   ARGV[5] max_deliveries   ARGV[6] done channel   ARGV[7] dead-letter cap
  ARGV[8] claim token ('' for none): a claim whose reply was lost is sent again with the
    same token, and gets the tasks the first call leased back instead of new ones (else
    they would sit leased to nobody until their lease expired, counted as a lost delivery).
    The token's key `<prefix>claim:<token>` (ids and lease generations, expiring with the
    lease) is built from ARGV[1], in the queue's hash tag.
  ARGV[9] the token of this worker's previous claim, answered since: its key is deleted.
  ARGV[10] '1' when this worker already runs a task on its last delivery (see below)
  Returns: { next_due_ms or -1, now_ms, tasks left queued or running,
    {id, name, payload, tries, gen, timeout_ms, max_tries, input, headers, lost, v, v0,
    fw, journal}... }
    (lost: how many workers stopped under the task before this claim)
    (v: the record's code version, v0: the one it started under; '' when not stored: a
    worker whose code of the task is older releases it, one whose code is newer migrates
    its state first, migrate.lua)
    (fw: "mt to v", the options an enqueue by name left to the worker's definition, '' none;
    a lost run of such a task counts against its stored max_tries, the default 3)
    (journal: for a task a signal or a wait's deadline woke (its record's 'sgk', set by
    lib/signals.lua), its step journal's fields and values, {field, value, ...}, read from
    its state hash `<prefix>state:<id>` (built from ARGV[1]); '' for any other task)
    (input: the JSON a workflow step receives from the steps before it, '' for none)
  A run whose lease expired with no outcome and no step journal entry of its own (the
  record's 'jp' is its generation, journal.lua) was a try (max_tries counts runs): the task ends
  FAILED (worker_lost) here, server-side, since the process that ran it left no code to
  count, when that run was its last try or its lease expired max_deliveries times in a row.
  A task on its last delivery (its lease lapsed before, and lapsing once more ends it: it
  lapsed max_deliveries - 1 times, or this run is its last try) is not given to a
  worker that runs another one: a task that kills its worker takes down what runs beside
  it, and tasks claimed together are requeued together when their leases lapse together,
  so without this they could follow it to the end and be failed as worker_lost with it.
  A task never started and past its expiry ends EXPIRED here instead of running. A record
  whose numbers (to, mt, exp, t, d, g) are not integers, or whose priority is unknown (written
  by another client, or by hand), ends FAILED (undecodable) and dead-lettered here, alone:
  left in place it would make every claim that reaches it fail. A task held back by its
  name's rate or concurrency limit, or by a RateLimited hold of its name (zset
  <prefix>holds), goes from its list to its name's own lane ('|<name>', no key; its 'lk'),
  where the tasks of that name behind it follow it: a flood of a limited name is then one
  turn of the ring, as a key's is. The reply's next_due includes the moment a rate-limit
  token comes back or a hold ends.
  Keyed tasks wait in lanes (lib/lanes.lua; meta 'kq' counts them, and without any the claim
  does as before). With lanes, each level is served in rounds: the list's head task, then
  one turn of each lane in the ring (its quantum: the key's weight), until the slots are
  filled or a round starts nothing. A lane whose key is at its concurrency waits out of the
  ring until one of its runs ends; one waiting for its rate or a hold waits in kdue until
  then. So a lane costs the claim one turn, whatever its length, and an idle key nothing.
  Keyed limits: hash <prefix>limits:keyed; weights set at run time: hash <prefix>kweight. ]]
--#include clock finalize
--#lazy finalize dead_letter obey_control sig_wake workflow_status leave_running
local prefix = ARGV[1]
local wid = ARGV[2]
local want = tonumber(ARGV[3])
local lease = tonumber(ARGV[4])
local max_deliveries = tonumber(ARGV[5])
local holds_last = ARGV[10] == '1'
local channel = ARGV[6]
local now = now_ms()
gather_stats()
local Q = queue_keys(prefix, KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[6], KEYS[9], KEYS[10],
  KEYS[11], KEYS[12], KEYS[13], channel)
Q.dead = KEYS[8]
Q.waiting = KEYS[16]
Q.events = KEYS[17]
Q.leases = KEYS[5]

for s = 9, 12 do redis.call('ZREMRANGEBYSCORE', KEYS[s], '-inf', now) end

-- the first field of `f` (at the positions `at`, named `names`) that is not an integer
local function not_integer(f, at, names)
  for i, k in ipairs(at) do
    local v = f[k]
    if v and not string.find(v, '^%-?%d+$') then
      return names[i] .. '=' .. string.sub(v, 1, 40)
    end
  end
  return nil
end

-- The numbers of a record being claimed (to, mt, exp, d, t, g), checked as not_integer
-- does. A record as segue writes it has all but 'exp': one match over the five, joined,
-- answers for it (six matches and two tables per task cost the claim a tenth of its time).
local CLAIMED_AT, CLAIMED_NAMES = { 4, 5, 7, 11, 12, 13 }, { 'to', 'mt', 'exp', 'd', 't', 'g' }
local FIVE_INTEGERS = '^%-?%d+ %-?%d+ %-?%d+ %-?%d+ %-?%d+$'
local function claimed_not_integer(f)
  if not f[7] and f[4] and f[5] and f[11] and f[12] and f[13] and string.find(
      f[4] .. ' ' .. f[5] .. ' ' .. f[11] .. ' ' .. f[12] .. ' ' .. f[13], FIVE_INTEGERS) then
    return nil
  end
  return not_integer(f, CLAIMED_AT, CLAIMED_NAMES)
end

local function undecodable(tk, id, what)
  local err = cjson.encode({ type = 'Undecodable', reason = 'undecodable',
    message = 'the task record holds ' .. what .. ', which segue cannot read' })
  finalize(Q, tk, id, 'failed', now, 'e', err, 'undecodable')
  dead_letter(Q, id, tonumber(ARGV[7]), now)
end

-- due scheduled/retrying tasks join the back of their priority list
local DUE_STATES = { scheduled = true, retrying = true, suspended = true }
local due = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 1000)
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[4], id)
  local tk = prefix .. 'task:' .. id
  local f = redis.call('HMGET', tk, 'q', 's', 'lk')
  local prio = f[1]
  -- an entry left over from a state the task has since left (a restore from an older copy,
  -- a hand edit) must not queue it again
  if prio and DUE_STATES[f[2]] and not PRIORITY_LISTS[prio] then
    undecodable(tk, id, 'priority q=' .. string.sub(prio, 1, 40))
  elseif prio and DUE_STATES[f[2]] then
    transition(Q, tk, id, { to = 'queued', at = now, why = 'due', push = 'back', prio = prio,
      lane = f[3] or false })
    redis.call('HDEL', tk, 'due')
  end
end

-- waits for a signal whose deadline passed: the timeout is journaled as the wait's outcome
-- and the task queued (a signal that came first already took it out of this index). The
-- earliest deadline, read first, answers for the reply's next_due too unless some are
-- past: most claims find none, and the index is read once. (No path of this script adds
-- to the index; one that removed the earliest would only make next_due early.)
local sig_first = redis.call('ZRANGE', KEYS[18], 0, 0, 'WITHSCORES')
local timed = {}
if sig_first[2] and tonumber(sig_first[2]) <= now then
  timed = redis.call('ZRANGEBYSCORE', KEYS[18], '-inf', now, 'LIMIT', 0, 1000)
end
for _, id in ipairs(timed) do
  redis.call('ZREM', KEYS[18], id)
  local tk = prefix .. 'task:' .. id
  local f = redis.call('HMGET', tk, 's', 'sgw')
  if f[1] == 'waiting' and f[2] then
    sig_wake(Q, tk, id, '{"x":1}', 0, 'SignalTimeout', 'signal ' .. f[2] .. ' timed out', now)
  end
end

bridge_gap(KEYS[7], KEYS[5], now, lease)

-- expired leases: the holder is gone or cut off; its run is over
local expired = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, 100)
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[5], id)
  local tk = prefix .. 'task:' .. id
  local f = redis.call('HMGET', tk, 'q', 's', 't', 'mt', 'd', 'jp', 'g', 'lk')
  local prio = f[1]
  local bad = prio and (not_integer(f, { 3, 4, 5 }, { 't', 'mt', 'd' })
    or (not PRIORITY_LISTS[prio] and 'priority q=' .. string.sub(prio, 1, 40)))
  -- only a run still in progress is over; a lease entry of a task that ended or moved on
  -- (left by a restore from an older copy, or a hand edit) is dropped, not requeued
  if bad and f[2] == 'running' then
    redis.call('HDEL', tk, 'w')
    undecodable(tk, id, bad)
  elseif prio and f[2] == 'running' then
    local d = redis.call('HINCRBY', tk, 'd', 1)
    local tries, most = tonumber(f[3] or '0'), tonumber(f[4] or '')
    if f[6] and f[6] == f[7] then
      -- the lost run wrote to its step journal: progress, so no try spent and the
      -- consecutive-loss count starts again (a run that made none counts as before)
      d = 0
      tries = redis.call('HINCRBY', tk, 't', -1)
      redis.call('HSET', tk, 'd', 0)
    end
    redis.call('HDEL', tk, 'w')
    leave_running(prefix, tk, id)
    if obey_control(Q, tk, id, now) then
      -- the worker died holding a pause or cancel request: carried out here instead
    elseif d >= max_deliveries or (most and tries >= most) then
      local why = d >= max_deliveries and (d .. ' times in a row')
        or ('on its last try (' .. tries .. ' of ' .. most .. ')')
      local err = cjson.encode({ type = 'WorkerLost', message = 'the worker running this task '
        .. 'stopped ' .. why .. ' without recording an outcome', reason = 'worker_lost' })
      finalize(Q, tk, id, 'failed', now, 'e', err, 'worker_lost')
      dead_letter(Q, id, tonumber(ARGV[7]), now)
    else
      transition(Q, tk, id, { to = 'queued', at = now, why = 'lease expired', push = 'front',
        prio = prio, lane = f[8] or false, event = 'task.requeued' })
    end
  end
end

-- May a task of this name start now? Concurrency: fewer running than its limit. Rate: a
-- token in its bucket (refilled continuously, at most `burst` + 0.5; the bucket key
-- expires once it would be full again). A RateLimited hold of the name (zset `holds`,
-- name -> until) keeps it closed until then. Returns ok, and when refused for rate or a
-- hold, when it may start.
local holds = prefix .. 'holds'
local limited = redis.call('EXISTS', KEYS[14], KEYS[15], holds) > 0
local holding = limited and redis.call('EXISTS', holds) == 1
if holding then redis.call('ZREMRANGEBYSCORE', holds, '-inf', now) end

-- Take a token from the bucket `bk` (rate `per_ms`, `burst`): true, or false and when one is back.
local function take_token(bk, per_ms, burst, b)
  -- the bucket holds half a token more than the burst: a worker that claims a little
  -- late (a busy loop, a round trip) makes that up instead of losing it from the rate
  local cap = burst + 0.5
  local tokens = math.min(cap, tonumber(b[1] or burst) + (now - tonumber(b[2] or now)) * per_ms)
  local life = math.ceil(cap / per_ms) + 1000
  if tokens < 1 then
    redis.call('HSET', bk, 'tk', tokens, 'ts', now)
    redis.call('PEXPIRE', bk, life)
    return false, now + math.ceil((1 - tokens) / per_ms)
  end
  redis.call('HSET', bk, 'tk', tokens - 1, 'ts', now)
  redis.call('PEXPIRE', bk, life)
  return true, nil
end

-- The task-wide limits of a name, read once per claim: { most or false, rate or false }, or
-- false when it has none.
local name_limits = {}
local NO_LIMITS = {}
local function limits_of(name)
  local nl = name_limits[name]
  if nl == nil then
    local most = redis.call('HGET', KEYS[15], name)
    local rl = redis.call('HGET', KEYS[14], name)
    nl = (most or rl) and { most and tonumber(most), rl } or false
    name_limits[name] = nl
  end
  return nl
end

local function admit(name)
  local nl = limits_of(name)
  if nl and nl[1] and redis.call('SCARD', prefix .. 'running:' .. name) >= nl[1] then
    return false, nil
  end
  local hold = holding and tonumber(redis.call('ZSCORE', holds, name))
  if hold and hold > now then return false, hold end
  if nl and nl[2] then
    local per_ms, burst = string.match(nl[2], '^(%S+) (%S+)$')
    local bk = prefix .. 'bucket:' .. name
    return take_token(bk, tonumber(per_ms), tonumber(burst), redis.call('HMGET', bk, 'tk', 'ts'))
  end
  return true, nil
end

-- May a task of this lane ("<limit name>|<key>", lib/lanes.lua) start now, by its key's
-- limits (published as "<concurrency> <tokens per ms> <burst> <weight>" under the limit
-- name, 0: none)? Returns true and whether its run counts in krun; or false and 'park'
-- (the key's concurrency is full) or when a token is back or its hold ends.
local klimits = prefix .. 'limits:keyed'
local kspecs = {} -- limit name -> { most, per_ms, burst, weight }, read once per claim
local function kspec(lane)
  local name = string.match(lane, '^([^|]*)')
  local k = kspecs[name]
  if not k then
    local spec = redis.call('HGET', klimits, name)
    k = { 0, 0, 1, 1 }
    if spec then
      local a, b, c, d = string.match(spec, '^(%S+) (%S+) (%S+) ?(%S*)')
      k = { tonumber(a) or 0, tonumber(b) or 0, tonumber(c) or 1, tonumber(d) or 1 }
    end
    kspecs[name] = k
  end
  return k
end
local function kadmit(lane)
  local k = kspec(lane)
  local most, per_ms, burst = k[1], k[2], k[3]
  if most > 0 and redis.call('SCARD', prefix .. 'krun:' .. lane) >= most then
    return false, 'park'
  end
  local bk = prefix .. 'kbucket:' .. lane
  local b = redis.call('HMGET', bk, 'tk', 'ts', 'hold')
  local hold = tonumber(b[3] or '')
  if hold and hold > now then return false, hold end
  if per_ms > 0 then
    local ok, back = take_token(bk, per_ms, burst, b)
    if not ok then return false, back end
  end
  return true, most > 0, per_ms > 0 and bk
end

local out = { -1, now, 0 }
local token_at = nil
local function note_due(back)
  if back and (not token_at or back < token_at) then token_at = back end
end
local meta = redis.call('HMGET', KEYS[7], 'paused', 'kq')
local paused = meta[1] == '1'
local keyed = tonumber(meta[2] or '0') > 0
-- 'kq' stays (at 0) once a task of the queue waited in a lane: only then can a list hold a
-- keyed task (one that a script of the previous release requeued), so only then does a
-- claim read the lane ('lk') of a task it takes from a list (a missing field costs the
-- server a scan of the record)
local lanes_ever = meta[2] ~= false
local kq_taken = 0
local claim_key = (ARGV[8] or '') ~= '' and (prefix .. 'claim:' .. ARGV[8]) or nil
if (ARGV[9] or '') ~= '' then redis.call('DEL', prefix .. 'claim:' .. ARGV[9]) end
local replay = claim_key and redis.call('LRANGE', claim_key, 0, -1) or {}
-- one table for every start of this call (transition() keeps no reference): built per
-- task, it cost the server more than the transition's own commands; its times are text,
-- formatted once here instead of once or twice per task
-- The try and the generation it starts are written with its status, in the same
-- command (its numbers were read and checked just before: the script runs alone).
-- KSTARTING: the start of a task that counts in its key's concurrency ('cn': '0' and its
-- lane, lib/leases.lua).
local now_text = num_text(now)
local STARTING = { to = 'running', at = now, why = wid,
  set = { 'w', wid, 'st', now_text, 't', 0, 'g', 0 }, score = tostring(now + lease),
  event = 'task.started' }
local KSTARTING = { to = 'running', at = now, why = wid,
  set = { 'w', wid, 'st', now_text, 't', 0, 'g', 0, 'cn', '' }, score = STARTING.score,
  event = 'task.started' }

-- A task of a limited name taken from its list goes to its name's lane (at its head when
-- it is the oldest there), and stays in it (its 'lk'). A claim moves at most MOVES: past
-- them, held tasks stay at the head of their list as before, and the claim leaves a wake
-- token so that the next claim goes on at once.
local MOVES = 1000
local moves, moves_before = MOVES, MOVES
local function to_own_lane(l, own, tk, id, front)
  lane_push(prefix, l, own, id, front)
  redis.call('HSET', tk, 'lk', own)
  moves, keyed, lanes_ever = moves - 1, true, true
  return 'gone'
end

-- Consider one task popped from priority level l (from lane `lane`, or from the list when
-- nil): 'started', 'gone' (ended or moved here, or not queued any more), or 'held' and why
-- ('last', 'park', 'wide': the name's own limit, or when its key's token is back).
local function take(l, id, lane)
  local tk = prefix .. 'task:' .. id
  local f
  if lanes_ever and not lane then
    f = redis.call('HMGET', tk, 's', 'n', 'p', 'to', 'mt', 'in', 'exp', 'wf', 'st', 'hd',
      'd', 't', 'g', 'v', 'v0', 'fw', 'sgk', 'sgw', 'lk')
  else
    f = redis.call('HMGET', tk, 's', 'n', 'p', 'to', 'mt', 'in', 'exp', 'wf', 'st', 'hd',
      'd', 't', 'g', 'v', 'v0', 'fw', 'sgk', 'sgw')
  end
  f[2] = task_name(f[2])
  if f[1] ~= 'queued' and f[1] ~= 'suspended' then return 'gone' end
  if f[19] then
    -- a keyed task queued by a script of the previous release: into its lane
    lane_push(prefix, l, f[19], id, true)
    return 'gone'
  end
  local bad = claimed_not_integer(f)
  local lost = tonumber(f[11] or '0') or 0
  -- its lease lapsed before, and lapsing once more ends it (deliveries or tries spent)
  local last = not bad and lost > 0 and (lost >= max_deliveries - 1
    or tonumber(f[12] or '0') + 1 >= (tonumber(f[5] or '') or math.huge))
  local krun, kbk = false, nil
  if bad then
    undecodable(tk, id, bad)
    return 'gone'
  elseif last and holds_last then
    return 'held', 'last' -- for a worker that runs no other last delivery
  elseif f[8] and workflow_status(Q, f[8]) == 'paused' then
    -- a step of a paused workflow back in the queue (a retry, a Pause): held
    transition(Q, tk, id, { to = 'paused', at = now, why = 'workflow paused', score = now,
      event = 'task.paused', name = f[2] })
    return 'gone'
  elseif f[7] and not f[9] and tonumber(f[7]) < now then
    local err = cjson.encode({ type = 'Expired', reason = 'expired',
      message = 'not started before its expiry' })
    finalize(Q, tk, id, 'expired', now, 'e', err, 'not started before its expiry')
    return 'gone'
  end
  if lane then
    -- a name's own lane ('|<name>') has no key limits: only its name's, below
    if string.byte(lane, 1) ~= 124 then
      local ok, why, bk = kadmit(lane)
      if not ok then return 'held', why end
      krun, kbk = why, bk
    end
  elseif limited and moves > 0 and limits_of(f[2]) then
    -- a task of a limited name waits in its name's lane once one of them is held there,
    -- so that a flood of it is one entry of the ring, not a length of the list to look past
    local own = '|' .. f[2]
    if lanes_ever and redis.call('EXISTS', prefix .. 'lane:' .. l .. ':' .. own) == 1 then
      return to_own_lane(l, own, tk, id, false)
    end
  end
  if limited then
    local ok, back = admit(f[2])
    if not ok then
      -- the key's token goes back: the task did not start
      if kbk then redis.call('HINCRBYFLOAT', kbk, 'tk', 1) end
      note_due(back)
      if not lane and moves > 0 then return to_own_lane(l, '|' .. f[2], tk, id, true) end
      return 'held', back or 'wide'
    end
  end
  local tries, gen = tonumber(f[12] or '0') + 1, tonumber(f[13] or '0') + 1
  local start = krun and KSTARTING or STARTING
  local started = start.set
  started[6], started[8] = num_text(tries), num_text(gen)
  if krun then started[10] = '0' .. lane end
  start.name = f[2]
  transition(Q, tk, id, start)
  if limited and (limits_of(f[2]) or NO_LIMITS)[1] then
    redis.call('SADD', prefix .. 'running:' .. f[2], id)
    redis.call('HSET', tk, 'cn', krun and ('1' .. lane) or 1)
  end
  if krun then redis.call('SADD', prefix .. 'krun:' .. lane, id) end
  count_stat(prefix, 'started', now)
  -- a wait that a pause kept for its resume (lib/signals.lua) is over: this run
  -- replays to it and waits anew, or takes its signal
  if f[18] then redis.call('HDEL', tk, 'sgw', 'sgj', 'sga', 'sgd') end
  local journal = ''
  if f[17] then
    redis.call('HDEL', tk, 'sgk')
    journal = {}
    local st = redis.call('HGETALL', prefix .. 'state:' .. id)
    for j = 1, #st, 2 do
      if string.sub(st[j], 1, 3) == '~j:' then
        journal[#journal + 1] = st[j]
        journal[#journal + 1] = st[j + 1]
      end
    end
  end
  out[#out + 1] = { id, f[2], f[3], tries, gen, f[4], f[5], f[6] or '', f[10] or '', lost,
    f[14] or '', f[15] or '', f[16] or '', journal }
  if last then holds_last = true end
  if claim_key then redis.call('RPUSH', claim_key, id, started[8]) end
  want = want - 1
  return 'started'
end

-- Claim up to n tasks from the list of level l; returns how many. A task held back by its
-- name's limits goes to its name's lane (to_own_lane); one held back otherwise (a last
-- delivery, or past the claim's moves) stays at the head of its list, and the claim looks
-- a little past those, so that others go on.
local function take_list(l, n)
  local held, budget, got = {}, n + 100, 0
  while n > 0 and want > 0 and budget > 0 do
    local ids = redis.call('RPOP', KEYS[l], math.min(want, budget, n))
    if not ids then break end
    budget = budget - #ids + (moves_before - moves)
    moves_before = moves
    for _, id in ipairs(ids) do
      local r = take(l, id, nil)
      if r == 'started' then
        got, n = got + 1, n - 1
      elseif r == 'held' then
        held[#held + 1] = id
      end
    end
  end
  for j = #held, 1, -1 do redis.call('RPUSH', KEYS[l], held[j]) end
  return got
end

-- One turn of a lane at level l: up to its quantum of tasks (its key's weight: set at run
-- time, else its limit's, else 1). A lane still holding tasks goes to the back of the ring,
-- or waits in kpark (its key's concurrency is full) or kdue (a token or a hold is due).
local kweights = prefix .. 'kweight'
local weighted = nil -- whether any key has a weight set at run time, read once per claim
local function take_lane(l, lane)
  local lk = prefix .. 'lane:' .. l .. ':' .. lane
  if weighted == nil then weighted = redis.call('EXISTS', kweights) == 1 end
  local quantum = nil
  if weighted then
    local key = string.match(lane, '^[^|]*|(.*)$') or lane
    quantum = tonumber(redis.call('HGET', kweights, key) or '')
  end
  quantum = quantum or kspec(lane)[4]
  -- a turn a claim's slots cut short goes on at the next claim (hash kcredit: what is left)
  local credit = prefix .. 'kcredit'
  if quantum > 1 then
    local left = tonumber(redis.call('HGET', credit, lane .. '|' .. l) or '')
    if left then
      redis.call('HDEL', credit, lane .. '|' .. l)
      quantum = math.min(quantum, left)
    end
  end
  local got = 0
  LANE_IN_TURN = l .. ':' .. lane
  while got < quantum and want > 0 do
    local id = redis.call('RPOP', lk)
    if not id then
      LANE_IN_TURN = nil
      return got
    end
    kq_taken = kq_taken + 1
    local r, why = take(l, id, lane)
    if r == 'started' then
      got = got + 1
    elseif r == 'held' then
      redis.call('RPUSH', lk, id)
      kq_taken = kq_taken - 1
      if why == 'park' then
        redis.call('SADD', prefix .. 'kpark:' .. lane, l)
        redis.call('ZADD', prefix .. 'kparked', l, lane)
        LANE_IN_TURN = nil
        return got
      elseif type(why) == 'number' then
        redis.call('ZADD', prefix .. 'kdue:' .. l, why, lane)
        note_due(why)
        LANE_IN_TURN = nil
        return got
      end
      break -- held by its name's limit, or a last delivery: its turn comes again
    end
  end
  LANE_IN_TURN = nil
  if redis.call('EXISTS', lk) == 1 then
    if got < quantum and want <= 0 and got > 0 then
      redis.call('HSET', credit, lane .. '|' .. l, quantum - got)
      redis.call('RPUSH', prefix .. 'ring:' .. l, lane)
    else
      redis.call('LPUSH', prefix .. 'ring:' .. l, lane)
    end
  end
  return got
end

if #replay > 0 then
  -- the same claim again: what it leased before, if this worker still holds it
  for i = 1, #replay, 2 do
    local id, gen = replay[i], replay[i + 1]
    local tk = prefix .. 'task:' .. id
    local f = redis.call('HMGET', tk, 's', 'n', 'p', 'to', 'mt', 'in', 'hd', 'w', 'g', 't', 'd',
      'v', 'v0', 'fw')
    f[2] = task_name(f[2])
    if f[1] == 'running' and f[8] == wid and f[9] == gen then
      out[#out + 1] = { id, f[2], f[3], tonumber(f[10]) or 0, tonumber(gen), f[4], f[5],
        f[6] or '', f[7] or '', tonumber(f[11] or '0') or 0, f[12] or '', f[13] or '',
        f[14] or '', '' }
      want = want - 1
    end
  end
  -- kept until it expires: the reply of this replay may be lost too
elseif not paused then
  if keyed then
    -- lanes whose token or hold is due take their turn again
    for l = 1, 3 do
      local kd = prefix .. 'kdue:' .. l
      local lanes = redis.call('ZRANGEBYSCORE', kd, '-inf', now, 'LIMIT', 0, 100)
      for _, lane in ipairs(lanes) do
        redis.call('ZREM', kd, lane)
        redis.call('LPUSH', prefix .. 'ring:' .. l, lane)
      end
    end
  end
  for l = 1, 3 do
    if not keyed then
      take_list(l, want)
    else
      -- rounds: the list's head task, then one turn of each lane in the ring, until the
      -- slots are filled or a round starts nothing (what is left is held back)
      local ring = prefix .. 'ring:' .. l
      while want > 0 do
        local got = take_list(l, 1)
        for _ = 1, redis.call('LLEN', ring) do
          if want <= 0 then break end
          local lane = redis.call('RPOP', ring)
          if not lane then break end
          got = got + take_lane(l, lane)
        end
        if got == 0 then break end
      end
    end
  end
  if claim_key and #out > 3 then redis.call('PEXPIRE', claim_key, lease) end
end
if kq_taken > 0 then redis.call('HINCRBY', KEYS[7], 'kq', -kq_taken) end
if keyed and want > 0 and not paused and redis.call('EXISTS', prefix .. 'ring:1',
    prefix .. 'ring:2', prefix .. 'ring:3', prefix .. 'kdue:1', prefix .. 'kdue:2',
    prefix .. 'kdue:3', prefix .. 'kparked') == 0 then
  -- no lane has a task (each with one is in one of these): a count the reconciler raised
  -- after a restore comes back to the truth
  redis.call('HSET', KEYS[7], 'kq', 0)
  keyed = false
end

local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
if first[2] then out[1] = tonumber(first[2]) end
first = #timed > 0 and redis.call('ZRANGE', KEYS[18], 0, 0, 'WITHSCORES') or sig_first
if first[2] and (out[1] < 0 or tonumber(first[2]) < out[1]) then out[1] = tonumber(first[2]) end
if keyed then
  for l = 1, 3 do
    local d = redis.call('ZRANGE', prefix .. 'kdue:' .. l, 0, 0, 'WITHSCORES')
    if d[2] then note_due(tonumber(d[2])) end
  end
end
if token_at and (out[1] < 0 or token_at < out[1]) then out[1] = token_at end
local queued = redis.call('LLEN', KEYS[1]) + redis.call('LLEN', KEYS[2]) + redis.call('LLEN', KEYS[3])
if keyed then queued = queued + tonumber(redis.call('HGET', KEYS[7], 'kq') or '0') end
-- more work is waiting: wake another idle worker (wake-ups chain worker to worker). Only
-- when this claim filled every slot it was given: if it left slots free, what stays queued
-- is held back by limits, and a wake-up would only make workers spin on it.
-- (A claim that used up its moves into lanes left more of a flood to move: the next one goes
-- on at once.)
if queued > 0 and not paused and (want <= 0 or moves <= 0)
    and redis.call('LLEN', KEYS[6]) == 0 then
  redis.call('LPUSH', KEYS[6], 1)
end
-- a paused queue's queued tasks are not work a burst worker can wait for
if paused then queued = 0 end
out[3] = queued + redis.call('ZCARD', KEYS[5])
flush_stats()
return out
