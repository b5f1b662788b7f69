--[[ migrate: move a running task to its worker's code version, with its state upgraded.
  KEYS[1] state hash (segue:{q}:state:<id>)
  ARGV[1] key prefix "segue:{q}:"   ARGV[2] task id   ARGV[3] lease generation
  ARGV[4] the version the worker read ('v', 1 when absent)   ARGV[5] the worker's version
  ARGV[6] count of state fields to set, then field, JSON value pairs; then fields to delete
  The worker read the state and upgraded it with the task's `migrate` functions; this is
  the first write of its run: the state and the record's version 'v' move together, so a
  worker of the old version, which releases a task whose version is above its own, never
  reads upgraded state. 'v0' keeps the version the task started under (ctx.version). The
  step journal's fields ('~j:...') are not state and are left as they are. Fenced to the
  run, and to the version it read: only the lease holder writes state, so nothing moved
  them between the read and this write unless the run lost its lease.
  A value that refers to an offloaded blob (lib/blobs.lua) adopts it, as state.lua does.
  Returns: 1 written, 0 rejected (the run no longer holds the task). ]]
--#include blobs
local tk = ARGV[1] .. 'task:' .. ARGV[2]
local f = redis.call('HMGET', tk, 's', 'g', 'v', 'v0')
if f[1] ~= 'running' or f[2] ~= ARGV[3] or (f[3] or '1') ~= ARGV[4] then return 0 end
if not f[4] then redis.call('HSET', tk, 'v0', f[3] or '1') end
redis.call('HSET', tk, 'v', ARGV[5])
write_state(ARGV[1], tk, ARGV[2], KEYS[1], ARGV, 6)
return 1
