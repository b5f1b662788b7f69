--[[ control: an operator's pause, resume or cancel of one task, from any process.
  KEYS[1] high list   KEYS[2] normal list   KEYS[3] low list   KEYS[4] scheduled zset
  KEYS[5] leases zset   KEYS[6] wake list   KEYS[7] control channel (sharded pub/sub)
  KEYS[8..11] done zsets: succeeded, failed, cancelled, expired   KEYS[12] paused zset
  KEYS[13] waiting zset   KEYS[14] events stream
  ARGV[1] key prefix "segue:{q}:"   ARGV[2] task id   ARGV[3] command: pause|resume|cancel
  ARGV[4] reason (who asked, why)   ARGV[5] done channel
  A task that is not running changes state here and now (a WAITING one is marked to be
  held when its dependencies are done). A running task gets a stored request (field `ctl`,
  the truth a worker also reads when it renews its lease) and a message on the control
  channel (the fast path); its worker carries it out.
  The command reaches the task's sub-tasks through a cascade marker (lib/cascade.lua),
  built from the key prefix (same hash tag); a command sent here, by an operator, to a
  sub-task that a cascade paused makes that pause the operator's own (field 'pc' removed).
  Returns: { status after the command, 1 if a running task was asked (0 otherwise),
  1 if it left work for the forwarder (a cascade to walk, outbox entries) }.
  Errors: SEGUE_NOT_FOUND, SEGUE_INVALID_TRANSITION <status> <command>. ]]
--#include clock operator
local Q = queue_keys(ARGV[1], KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[6], KEYS[8], KEYS[9],
  KEYS[10], KEYS[11], KEYS[12], ARGV[5])
Q.waiting = KEYS[13]
Q.events = KEYS[14]
local reply = control_task(Q, ARGV[2], ARGV[3], ARGV[4], KEYS[7], now_ms())
wake_if_needed(Q)
if reply.err then return reply end
redis.call('HDEL', ARGV[1] .. 'task:' .. ARGV[2], 'pc')
reply[3] = Q.outboxed and 1 or 0
return reply
