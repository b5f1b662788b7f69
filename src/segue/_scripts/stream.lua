--[[ stream: append a batch of chunks to a running task's output stream, fenced to its run.
  KEYS[1] task record (segue:{q}:task:<id>)   KEYS[2] its output stream (segue:{q}:out:<id>)
  ARGV[1] lease generation   ARGV[2] the run's try   ARGV[3] most entries kept (MAXLEN ~)
  ARGV[4] linger ms (how long the stream outlives the task's end: end_task reads it)
  ARGV[5] the chunks: a JSON array text   ARGV[6] the batch's number in its run (1, 2, ...):
    a batch sent again after its reply was lost is not appended twice ('sb' holds the run's
    last one)   ARGV[7] 1: the run found durable state of an earlier run (ctx.state, a
    step journal) and goes on from it: its restart marker says so ('rp'), else 0
  Every entry carries 'n', its number in the stream (1, 2, ...; the record's 'sn' counts
  them), so a reader tells a trimmed stream from a whole one. A chunk entry holds 'c' (the
  JSON array); a restart marker 'r' (the try of the run that starts over); the end marker
  'end' (the final status, written by end_task). The first write of a run whose stream holds
  an earlier run's output ('sg', the generation that last wrote, is another) puts a restart
  marker first, so that readers never mix attempts silently.
  Returns: the entry id ('sent' for a batch appended before), or 0 rejected (the run no
  longer holds the task). ]]
local f = redis.call('HMGET', KEYS[1], 's', 'g', 'sg', 'sn', 'sb')
if f[1] ~= 'running' or f[2] ~= ARGV[1] then return 0 end
local n = tonumber(f[4] or '0') or 0
if f[3] == ARGV[1] and tonumber(f[5] or '0') >= tonumber(ARGV[6]) then return 'sent' end
if f[3] ~= ARGV[1] then
  if f[3] then
    n = n + 1
    if ARGV[7] == '1' then
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'n', n, 'r', ARGV[2], 'rp', 1)
    else
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'n', n, 'r', ARGV[2])
    end
  end
  redis.call('HSET', KEYS[1], 'sg', ARGV[1], 'sl', ARGV[4])
end
n = n + 1
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'n', n, 'c', ARGV[5])
redis.call('HSET', KEYS[1], 'sn', n, 'sb', ARGV[6])
return id
