--[[ journal: record one entry of a running task's step journal, fenced to its current run.
  KEYS[1] state hash (segue:{q}:state:<id>): the entry is its field '~j:<name>', so it
    lives and dies with ctx.state (end_task deletes the hash)
  ARGV[1] key prefix "segue:{q}:"   ARGV[2] task id   ARGV[3] lease generation
  ARGV[4] field   ARGV[5] entry (JSON)   ARGV[6] summary line "<name>|<start ms>|<ms>|<ok>|<type>"
  The summary line is the record's field 'j:<n>', n counted by its field 'jn' (kept for the
  record's ttl: TaskInfo.steps; a field per line, so a step's cost does not grow with the
  journal), and 'jp' is set to the generation: the claim script's lease-expiry path reads it to tell a
  lost run that made progress (no try spent) from one that made none; 'pw' marks progress
  for the Pause limit as state.lua does (finish.lua clears it at the next Pause).
  Returns: 1 written, 0 rejected (the run no longer holds the task). ]]
local tk = ARGV[1] .. 'task:' .. ARGV[2]
local f = redis.call('HMGET', tk, 's', 'g', 'jn', 'jp')
if f[1] ~= 'running' or f[2] ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], ARGV[4], ARGV[5])
local n = (tonumber(f[3] or '0') or 0) + 1
if f[4] == ARGV[3] then
  redis.call('HSET', tk, 'j:' .. n, ARGV[6], 'jn', n, 'pw', 1)
else
  redis.call('HSET', tk, 'j:' .. n, ARGV[6], 'jn', n, 'pw', 1, 'jp', ARGV[3])
end
return 1
