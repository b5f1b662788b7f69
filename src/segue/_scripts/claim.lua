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
  name's rate or concurrency limit stays at the head of its list; the reply's next_due then
  includes the moment a rate-limit token comes back. ]]
--#include clock finalize
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
  local f = redis.call('HMGET', tk, 'q', 's')
  local prio = f[1]
  -- an entry left over from a state the task has since left (a restore from an older copy,
  -- a hand edit) must not queue it again
  if prio and DUE_STATES[f[2]] and not PRIORITY_LISTS[prio] then
    undecodable(tk, id, 'priority q=' .. string.sub(prio, 1, 40))
  elseif prio and DUE_STATES[f[2]] then
    transition(Q, tk, id, { to = 'queued', at = now, why = 'due', push = 'back', prio = prio })
    redis.call('HDEL', tk, 'due')
  end
end

-- waits for a signal whose deadline passed: the timeout is journaled as the wait's outcome
-- and the task queued (a signal that came first already took it out of this index)
local timed = redis.call('ZRANGEBYSCORE', KEYS[18], '-inf', now, 'LIMIT', 0, 1000)
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
  local f = redis.call('HMGET', tk, 'q', 's', 't', 'mt', 'd', 'jp', 'g')
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
        prio = prio, event = 'task.requeued' })
    end
  end
end

-- May a task of this name start now? Concurrency: fewer running than its limit. Rate: a
-- token in its bucket (refilled continuously, at most `burst` + 0.5; the bucket key
-- expires once it would be full again). Returns ok, and when refused for rate, when a token is back.
local limited = redis.call('EXISTS', KEYS[14], KEYS[15]) > 0
local function admit(name)
  local most = redis.call('HGET', KEYS[15], name)
  if most and redis.call('SCARD', prefix .. 'running:' .. name) >= tonumber(most) then
    return false, nil
  end
  local rl = redis.call('HGET', KEYS[14], name)
  if rl then
    local per_ms, burst = string.match(rl, '^(%S+) (%S+)$')
    per_ms, burst = tonumber(per_ms), tonumber(burst)
    local bk = prefix .. 'bucket:' .. name
    local b = redis.call('HMGET', bk, 'tk', 'ts')
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
  end
  return true, nil
end

local out = { -1, now, 0 }
local token_at = nil
local paused = redis.call('HGET', KEYS[7], 'paused') == '1'
local claim_key = (ARGV[8] or '') ~= '' and (prefix .. 'claim:' .. ARGV[8]) or nil
if (ARGV[9] or '') ~= '' then redis.call('DEL', prefix .. 'claim:' .. ARGV[9]) end
local replay = claim_key and redis.call('LRANGE', claim_key, 0, -1) or {}
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
  -- one table for every start of this call (transition() keeps no reference): built per
  -- task, it cost the server more than the transition's own commands; its times are text,
  -- formatted once here instead of once or twice per task
  -- The try and the generation it starts are written with its status, in the same
  -- command (its numbers were read and checked just before: the script runs alone).
  local now_text = num_text(now)
  local STARTING = { to = 'running', at = now, why = wid,
    set = { 'w', wid, 'st', now_text, 't', 0, 'g', 0 }, score = tostring(now + lease),
    event = 'task.started' }
  local started = STARTING.set
  for l = 1, 3 do
    -- look a little past tasks held back by their limits, so that others go on
    local held, budget = {}, want + 100
    while want > 0 and budget > 0 do
      local ids = redis.call('RPOP', KEYS[l], math.min(want, budget))
      if not ids then break end
      budget = budget - #ids
      for _, id in ipairs(ids) do
        local tk = prefix .. 'task:' .. id
        local f = redis.call('HMGET', tk, 's', 'n', 'p', 'to', 'mt', 'in', 'exp', 'wf', 'st',
          'hd', 'd', 't', 'g', 'v', 'v0', 'fw', 'sgk', 'sgw')
        f[2] = task_name(f[2])
        if f[1] == 'queued' or f[1] == 'suspended' then
          local ok, back = true, nil
          local bad = claimed_not_integer(f)
          local lost = tonumber(f[11] or '0') or 0
          -- its lease lapsed before, and lapsing once more ends it (deliveries or tries spent)
          local last = not bad and lost > 0 and (lost >= max_deliveries - 1
            or tonumber(f[12] or '0') + 1 >= (tonumber(f[5] or '') or math.huge))
          if bad then
            undecodable(tk, id, bad)
            ok = false
          elseif last and holds_last then
            held[#held + 1] = id  -- for a worker that runs no other last delivery
            ok = false
          elseif f[8] and workflow_status(Q, f[8]) == 'paused' then
            -- a step of a paused workflow back in the queue (a retry, a Pause): held
            transition(Q, tk, id, { to = 'paused', at = now, why = 'workflow paused', score = now,
              event = 'task.paused', name = f[2] })
            ok = false
          elseif f[7] and not f[9] and tonumber(f[7]) < now then
            local err = cjson.encode({ type = 'Expired', reason = 'expired',
              message = 'not started before its expiry' })
            finalize(Q, tk, id, 'expired', now, 'e', err, 'not started before its expiry')
            ok = false
          elseif limited then
            ok, back = admit(f[2])
            if not ok then
              held[#held + 1] = id
              if back and (not token_at or back < token_at) then token_at = back end
            end
          end
          if ok then
            local tries, gen = tonumber(f[12] or '0') + 1, tonumber(f[13] or '0') + 1
            started[6], started[8] = num_text(tries), num_text(gen)
            STARTING.name = f[2]
            transition(Q, tk, id, STARTING)
            if limited and redis.call('HEXISTS', KEYS[15], f[2]) == 1 then
              redis.call('SADD', prefix .. 'running:' .. f[2], id)
              redis.call('HSET', tk, 'cn', 1)
            end
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
            out[#out + 1] = { id, f[2], f[3], tries, gen, f[4], f[5], f[6] or '', f[10] or '',
              lost, f[14] or '', f[15] or '', f[16] or '', journal }
            if last then holds_last = true end
            if claim_key then redis.call('RPUSH', claim_key, id, started[8]) end
            want = want - 1
          end
        end
      end
    end
    for j = #held, 1, -1 do redis.call('RPUSH', KEYS[l], held[j]) end
  end
  if claim_key and #out > 3 then redis.call('PEXPIRE', claim_key, lease) end
end

local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
if first[2] then out[1] = tonumber(first[2]) end
first = redis.call('ZRANGE', KEYS[18], 0, 0, 'WITHSCORES')
if first[2] and (out[1] < 0 or tonumber(first[2]) < out[1]) then out[1] = tonumber(first[2]) end
if token_at and (out[1] < 0 or token_at < out[1]) then out[1] = token_at end
local queued = redis.call('LLEN', KEYS[1]) + redis.call('LLEN', KEYS[2]) + redis.call('LLEN', KEYS[3])
-- more work is waiting: wake another idle worker (wake-ups chain worker to worker). Only
-- when this claim filled every slot it was given: if it left slots free, what stays queued
-- is held back by limits, and a wake-up would only make workers spin on it.
if queued > 0 and not paused and want <= 0 and redis.call('LLEN', KEYS[6]) == 0 then
  redis.call('LPUSH', KEYS[6], 1)
end
-- a paused queue's queued tasks are not work a burst worker can wait for
if paused then queued = 0 end
out[3] = queued + redis.call('ZCARD', KEYS[5])
flush_stats()
return out
