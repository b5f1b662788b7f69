--[[ signal: deliver a signal to a task, once per signal id (handle.signal, from any process).
  KEYS[1] high list   KEYS[2] normal list   KEYS[3] low list   KEYS[4] wake list
  KEYS[5] waiting zset   KEYS[6] signal deadlines zset (sigdue)   KEYS[7] events stream
  KEYS[8] paused zset
  ARGV[1] key prefix "segue:{q}:"   ARGV[2] task id   ARGV[3] signal name
  ARGV[4] data (JSON)   ARGV[5] signal id (made by the sender, the same on every resend)
  ARGV[6] max_pending_signals (signals a task may hold buffered)
  The task's record, signal buffer `sig:<id>`, accepted ids `sgi:<id>` and state hash
  `state:<id>` are built from ARGV[1], in the queue's hash tag (lib/signals.lua).
  A task WAITING for a signal of this name gets it at once: journaled as the outcome of its
  wait, and the task is queued (it runs again and its wait returns the data). Any other task
  that has not ended buffers it (FIFO per name), for a wait to take later.
  Returns: { 'delivered' | 'buffered' | 'duplicate' (an id accepted before: nothing
  changed), the task's status after }.
  Errors: SEGUE_NOT_FOUND <id>; SEGUE_INVALID_TRANSITION <status> signal (the task ended
  before this id was first sent); SEGUE_SIGNAL_BUFFER_FULL <buffered>. ]]
--#include clock signals
local prefix, id, name, data, sid = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local tk = prefix .. 'task:' .. id
local f = redis.call('HMGET', tk, 's', 'sgw')
if not f[1] then return redis.error_reply('SEGUE_NOT_FOUND ' .. id) end
local ik = prefix .. 'sgi:' .. id
if redis.call('SISMEMBER', ik, sid) == 1 then return { 'duplicate', f[1] } end
if FINAL[f[1]] then
  return redis.error_reply('SEGUE_INVALID_TRANSITION ' .. f[1] .. ' signal')
end
local Q = { base = prefix, lists = { KEYS[1], KEYS[2], KEYS[3] }, wake = KEYS[4],
  waiting = KEYS[5], events = KEYS[7], paused = KEYS[8], woke = false }
if f[1] == 'waiting' and f[2] == name then
  redis.call('SADD', ik, sid)
  sig_wake(Q, tk, id, '{"s":' .. data .. '}', 1, '', 'signal ' .. name, now_ms())
  wake_if_needed(Q)
  return { 'delivered', 'queued' }
end
local held = tonumber(redis.call('HGET', prefix .. 'sig:' .. id, 'c') or '0') or 0
if held >= tonumber(ARGV[6]) then
  return redis.error_reply('SEGUE_SIGNAL_BUFFER_FULL ' .. held)
end
redis.call('SADD', ik, sid)
sig_put(prefix, id, name, data)
return { 'buffered', f[1] }
