--[[ wait: a running task waits for its sub-tasks without holding a worker slot.
  KEYS[1] leases zset   KEYS[2] waiting zset
  ARGV[1] key prefix "segue:{q}:"   ARGV[2] parent task id   ARGV[3] its lease generation
  ARGV[4..] ids of the sub-tasks (in this queue: their ids derive from the parent's)
  Returns: -1 if this run no longer holds the parent; 0 when every sub-task has ended (read
  their results now); n > 0 when the parent now WAITS for n of them: the run must stop, its
  try is not spent, and the last sub-task to end queues the parent again. ]]
--#include clock transition leases
local prefix, id = ARGV[1], ARGV[2]
local tk = prefix .. 'task:' .. id
local f = redis.call('HMGET', tk, 's', 'g')
if f[1] ~= 'running' or f[2] ~= ARGV[3] then return -1 end
local open = {}
for i = 4, #ARGV do
  local s = redis.call('HGET', prefix .. 'task:' .. ARGV[i], 's')
  if s and not FINAL[s] then open[#open + 1] = ARGV[i] end
end
if #open == 0 then return 0 end
for _, child in ipairs(open) do
  redis.call('RPUSH', prefix .. 'next:' .. child, id .. '|-1|w')
end
local now = now_ms()
redis.call('ZREM', KEYS[1], id)
transition({ base = prefix, waiting = KEYS[2] }, tk, id, { to = 'waiting', at = now,
  why = 'waiting for ' .. #open .. ' sub-task(s)', set = { 'wait', #open, 'd', 0 }, score = now })
redis.call('HINCRBY', tk, 't', -1)
redis.call('HDEL', tk, 'w')
leave_running(prefix, tk, id)
return #open
