--[[ wf_index: list a workflow in its queue's index, and store its shape, once its record
  exists (a record that ended and expired already is not listed again).
  KEYS[1] workflows index (zset: workflow id -> creation, server ms)
  ARGV[1] key prefix "segue:{q}:"   ARGV[2] workflow id   ARGV[3] its shape (JSON)
  ARGV[4] its steps' name= labels, JSON {label: step id} ('' none; absent from an old
    release's call)
  The record key `<prefix>wf:<id>` of the workflow and of sampled index entries is built
  from ARGV[1], in the queue's hash tag. Each call also drops the entries, among ten drawn
  at random, whose record expired: the index stays in proportion to the records it names.
  Returns: 1 listed, 0 no such record. ]]
local prefix, wf = ARGV[1], ARGV[2]
local wk = prefix .. 'wf:' .. wf
local created = redis.call('HGET', wk, 'ce')
if not created then return 0 end
redis.call('HSET', wk, 'shape', ARGV[3])
if (ARGV[4] or '') ~= '' then redis.call('HSET', wk, 'sn', ARGV[4]) end
redis.call('ZADD', KEYS[1], created, wf)
for _, other in ipairs(redis.call('ZRANDMEMBER', KEYS[1], 10)) do
  if redis.call('EXISTS', prefix .. 'wf:' .. other) == 0 then
    redis.call('ZREM', KEYS[1], other)
  end
end
return 1
