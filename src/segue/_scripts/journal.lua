--[[ journal: record one entry of a running task's step journal, fenced to its current run.
  KEYS[1] state hash (segue:{q}:state:<id>): the entry is its field '~j:<name>', so it
    lives and dies with ctx.state (end_task deletes the hash)
  ARGV[1] key prefix "segue:{q}:"   ARGV[2] task id   ARGV[3] lease generation
  ARGV[4] field   ARGV[5] entry (JSON)   ARGV[6] summary line "<name>|<start ms>|<ms>|<ok>|<type>"
  The summary line is appended to the record's 'js' (kept for the record's ttl: TaskInfo.steps),
  and 'jp' is set to the generation: the claim script's lease-expiry path reads it to tell a
  lost run that made progress (no try spent) from one that made none.
  Returns: 1 written, 0 rejected (the run no longer holds the task). ]]
local tk = ARGV[1] .. 'task:' .. ARGV[2]
local f = redis.call('HMGET', tk, 's', 'g', 'js')
if f[1] ~= 'running' or f[2] ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], ARGV[4], ARGV[5])
redis.call('HSET', tk, 'js', (f[3] or '') .. ARGV[6] .. '\n', 'jp', ARGV[3])
return 1
