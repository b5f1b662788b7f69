--[[ event: a running task reports progress, or emits an event of its own.
  KEYS[1] events stream
  ARGV[1] key prefix "segue:{q}:"   ARGV[2] task id   ARGV[3] its lease generation
  ARGV[4] progress | emit
    progress: ARGV[5] done, ARGV[6] total ('' unknown), ARGV[7] message ('' none): stored
      on the record (fields pg, pgm) and streamed as task.progress
    emit: ARGV[5] event name, ARGV[6] data (JSON)
  Returns: 1, or 0 if this run no longer holds the task (nothing written). ]]
--#include states events
local tk = ARGV[1] .. 'task:' .. ARGV[2]
local f = redis.call('HMGET', tk, 's', 'g', 'n')
if f[1] ~= 'running' or f[2] ~= ARGV[3] then return 0 end
f[3] = task_name(f[3])
if ARGV[4] == 'progress' then
  redis.call('HSET', tk, 'pg', ARGV[5] .. ' ' .. ARGV[6], 'pgm', ARGV[7] or '')
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', EVENTS_CAP, '*', 'e', 'task.progress', 'id', ARGV[2],
    'n', f[3], 'done', ARGV[5], 'total', ARGV[6], 'msg', ARGV[7] or '')
else
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', EVENTS_CAP, '*', 'e', ARGV[5], 'id', ARGV[2],
    'n', f[3], 'data', ARGV[6])
end
return 1
