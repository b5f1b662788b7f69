--#include transition
-- Signals (ctx.wait_signal, handle.signal). Per task, built from the key prefix in the
-- queue's hash tag: `sig:<id>`, the buffer (a hash: 'c' signals buffered in all; per name
-- 'h:<name>' and 't:<name>', the first and next sequence numbers, and 'm:<name>:<n>' each
-- signal's data), and `sgi:<id>`, the set of the signal ids accepted (a resend of one is a
-- success that changes nothing). The queue's `sigdue` zset holds the deadlines of the
-- waits that have one. A waiting record has 'sgw' (the name), 'sgj' (the journal field of
-- the wait) and 'sgd' (its deadline, if any).

-- The oldest buffered signal of `name` (its data), removed from the buffer; nil if none.
local function sig_take(base, id, name)
  local bk = base .. 'sig:' .. id
  local f = redis.call('HMGET', bk, 'h:' .. name, 't:' .. name)
  local h, t = tonumber(f[1] or '0'), tonumber(f[2] or '0')
  if h >= t then return nil end
  local mk = 'm:' .. name .. ':' .. h
  local data = redis.call('HGET', bk, mk)
  if h + 1 >= t then
    redis.call('HDEL', bk, mk, 'h:' .. name, 't:' .. name)
  else
    redis.call('HDEL', bk, mk)
    redis.call('HSET', bk, 'h:' .. name, h + 1)
  end
  if redis.call('HINCRBY', bk, 'c', -1) <= 0 then redis.call('DEL', bk) end
  return data
end

local function sig_put(base, id, name, data)
  local bk = base .. 'sig:' .. id
  local t = redis.call('HINCRBY', bk, 't:' .. name, 1) - 1
  redis.call('HSET', bk, 'm:' .. name .. ':' .. t, data)
  redis.call('HINCRBY', bk, 'c', 1)
end

-- Journal the outcome of a wait (`entry`: {"s": data} or {"x": 1}) with its summary line,
-- in the state hash where the step journal lives ('~j:' fields, _journal.py).
local function sig_journal(base, tk, id, field, entry, name, started, now, ok, kind)
  redis.call('HSET', base .. 'state:' .. id, field, entry)
  local n = tonumber(redis.call('HGET', tk, 'jn') or '0') + 1
  local took = math.max(0, now - (tonumber(started) or now))
  local line = name .. '|' .. (tonumber(started) or now) .. '|' .. took .. '|' .. ok .. '|' .. kind
  redis.call('HSET', tk, 'j:' .. n, line, 'jn', n, 'pw', 1)
end

-- A task WAITING for a signal gets its outcome: journaled, then queued to run again (its
-- replay reads the outcome from the journal). Also an operator's pause takes it out of the
-- wait (sig_unwait) without an outcome: its next run waits again.
local function sig_unwait(Q, tk, id)
  redis.call('HDEL', tk, 'sgw', 'sgj', 'sgd', 'sga')
  if Q.waiting then redis.call('ZREM', Q.waiting, id) end
  redis.call('ZREM', Q.base .. 'sigdue', id)
end

-- A waiting task paused (by an operator, or at its wait): out of the wait's indexes, the
-- wait itself kept on the record ('sgw', 'sgj', 'sga', 'sgd') for sig_resume.
local function sig_hold(Q, id)
  if Q.waiting then redis.call('ZREM', Q.waiting, id) end
  redis.call('ZREM', Q.base .. 'sigdue', id)
end

local function sig_wake(Q, tk, id, entry, ok, kind, why, now)
  local f = redis.call('HMGET', tk, 'sgj', 'q', 'sgw', 'sga', 'hold')
  local jname = string.sub(f[1] or '~j:?', 4)
  sig_journal(Q.base, tk, id, f[1], entry, jname, f[4], now, ok, kind)
  sig_unwait(Q, tk, id)
  -- 'sgk': the claim that runs it next hands the run its journal (claim.lua), sparing the
  -- woken run the read of it before its wait returns
  redis.call('HSET', tk, 'sgk', 1)
  if f[5] and Q.paused then
    -- held while it waited (a pause by a release that did not know signals): PAUSED
    redis.call('HDEL', tk, 'hold')
    transition(Q, tk, id, { to = 'paused', at = now, why = 'paused while waiting',
      score = now, event = 'task.paused' })
    return
  end
  transition(Q, tk, id, { to = 'queued', at = now, why = why, push = 'back', prio = f[2] })
end

-- Resume of a PAUSED task that was waiting for a signal: queued if a signal of its name
-- is buffered (taken and journaled now) or its deadline passed (the timeout journaled),
-- else WAITING again with its deadline. Returns the status after, or nil for a task that
-- was not waiting (the caller queues it).
local function sig_resume(Q, tk, id, reason, now)
  local f = redis.call('HMGET', tk, 'sgw', 'sgd', 'sgj')
  if not f[1] or not f[3] then return nil end
  local data = sig_take(Q.base, id, f[1])
  if data then
    sig_wake(Q, tk, id, '{"s":' .. data .. '}', 1, '', reason, now)
    return 'queued'
  end
  local due = tonumber(f[2] or '')
  if due and due <= now then
    sig_wake(Q, tk, id, '{"x":1}', 0, 'SignalTimeout', reason, now)
    return 'queued'
  end
  transition(Q, tk, id, { to = 'waiting', at = now, why = reason, score = now,
    event = 'task.resumed' })
  if due then redis.call('ZADD', Q.base .. 'sigdue', due, id) end
  return 'waiting'
end

-- At a task's end: the signals still buffered are dropped (counted on the record, 'sgx',
-- and reported by a task.signals_dropped event); the accepted ids live as long as the
-- record, so a resend after the end still reports success.
-- `waited`: the record's 'sgw' (the task ends while it waits: cancelled, say).
local function sig_end(Q, tk, id, ttl, name, waited)
  local bk = Q.base .. 'sig:' .. id
  local ik = Q.base .. 'sgi:' .. id
  -- a task never signalled (most) has neither key: one command instead of two per end
  local signalled = redis.call('EXISTS', bk, ik) > 0
  local c = signalled and tonumber(redis.call('HGET', bk, 'c') or '0') or 0
  if c > 0 then
    redis.call('HSET', tk, 'sgx', c)
    if Q.events then
      redis.call('XADD', Q.events, 'MAXLEN', '~', EVENTS_CAP, '*', 'e', 'task.signals_dropped',
        'id', id, 'n', name or '', 'data', '{"dropped":' .. c .. '}')
    end
    redis.call('DEL', bk)
  end
  if waited then sig_unwait(Q, tk, id) end
  if not signalled then return end
  if ttl == 0 then
    redis.call('DEL', ik)
  elseif ttl > 0 then
    redis.call('PEXPIRE', ik, ttl)
  end
end
