--[[ signal_wait: a running task waits for a signal (ctx.wait_signal), fenced to its run.
  KEYS[1] high list   KEYS[2] normal list   KEYS[3] low list   KEYS[4] scheduled zset
  KEYS[5] leases zset   KEYS[6] wake list   KEYS[7] control channel (unused here)
  KEYS[8..11] done zsets: succeeded, failed, cancelled, expired   KEYS[12] paused zset
  KEYS[13] waiting zset   KEYS[14] events stream   KEYS[15] signal deadlines zset (sigdue)
  ARGV[1] key prefix "segue:{q}:"   ARGV[2] task id   ARGV[3] lease generation
  ARGV[4] signal name   ARGV[5] the wait's journal field ('~j:<name>')
  ARGV[6] deadline (server ms; -1 none)   ARGV[7] when the wait began (ms)   ARGV[8] done channel
  The record, its state hash and signal buffer are built from ARGV[1] (lib/signals.lua).
  A buffered signal of the name is taken and journaled as the wait's outcome in this one
  call, so no crash can fall between taking it and journaling it; past the deadline the
  timeout is journaled instead. Otherwise the wait's deadline is journaled ({"sw": ms}) and
  the task WAITS: its lease and slot are released, its try is not spent; a signal
  (signal.lua) or the deadline (claim.lua) queues it again. An operator's pause or cancel
  asked of the run is carried out here instead of the wait.
  A resend (after a lost reply) finds the outcome journaled by the first and returns it.
  Returns: { -1 } the run no longer holds the task; { 1, data } a signal taken;
  { 2 } timed out; { 0 } the run must stop (waiting, paused or cancelled). ]]
--#include clock operator
local prefix, id, gen, name, field = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local deadline, started = tonumber(ARGV[6]), ARGV[7]
local tk = prefix .. 'task:' .. id
local f = redis.call('HMGET', tk, 's', 'g')
if f[1] ~= 'running' or f[2] ~= gen then return { -1 } end
-- a resend after a lost reply: the outcome journaled by the first sending, not another
local done = redis.call('HGET', prefix .. 'state:' .. id, field)
if done and string.sub(done, 1, 5) == '{"s":' then return { 1, string.sub(done, 6, -2) } end
if done and string.sub(done, 1, 5) == '{"x":' then return { 2 } end
local now = now_ms()
local jname = string.sub(field, 4)
local data = sig_take(prefix, id, name)
if data then
  sig_journal(prefix, tk, id, field, '{"s":' .. data .. '}', jname, started, now, 1, '')
  redis.call('HSET', tk, 'jp', gen)
  return { 1, data }
end
if deadline >= 0 and deadline <= now then
  sig_journal(prefix, tk, id, field, '{"x":1}', jname, started, now, 0, 'SignalTimeout')
  redis.call('HSET', tk, 'jp', gen)
  return { 2 }
end
local Q = queue_keys(prefix, KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[6], KEYS[8], KEYS[9],
  KEYS[10], KEYS[11], KEYS[12], ARGV[8])
Q.waiting = KEYS[13]
Q.events = KEYS[14]
redis.call('HSET', prefix .. 'state:' .. id, field,
  '{"sw":' .. (deadline >= 0 and deadline or 'null') .. ',"at":' .. started .. '}')
redis.call('ZREM', KEYS[5], id)
redis.call('HINCRBY', tk, 't', -1)
redis.call('HDEL', tk, 'w')
leave_running(prefix, tk, id)
transition(Q, tk, id, { to = 'waiting', at = now, why = 'waiting for signal ' .. name,
  set = { 'sgw', name, 'sgj', field, 'sga', started, 'd', 0 }, score = now,
  event = 'task.waiting' })
if deadline >= 0 then
  redis.call('HSET', tk, 'sgd', deadline)
  redis.call('ZADD', KEYS[15], deadline, id)
end
if redis.call('HEXISTS', tk, 'ctl') == 1 then
  sig_hold(Q, id)  -- a pause keeps the wait for its resume; a cancel ends it all
  obey_control(Q, tk, id, now)
end
wake_if_needed(Q)
return { 0 }
