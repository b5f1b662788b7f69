--[[ state: write a running task's durable state, fenced to its current run.
  KEYS[1] state hash (segue:{q}:state:<id>)
  ARGV[1] key prefix "segue:{q}:"   ARGV[2] task id   ARGV[3] lease generation
  ARGV[4] count of fields to set, then field, JSON value pairs; then fields to delete
  Marks the task as having made progress ('pw', cleared by its next Pause).
  A value that refers to an offloaded blob (lib/blobs.lua) adopts it: it then ends with
  the state.
  Returns: 1 written, 0 rejected (the run no longer holds the task). ]]
--#include blobs
local tk = ARGV[1] .. 'task:' .. ARGV[2]
local f = redis.call('HMGET', tk, 's', 'g')
if f[1] ~= 'running' or f[2] ~= ARGV[3] then return 0 end
-- progress: the task's next Pause does not count toward max_pauses (finish.lua)
redis.call('HSET', tk, 'pw', 1)
write_state(ARGV[1], tk, ARGV[2], KEYS[1], ARGV, 4)
return 1
