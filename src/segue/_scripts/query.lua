--[[ query: hand a query to the worker running a task, only while a run holds it.
  KEYS[1] task record   KEYS[2] the queue's control channel (sharded pub/sub)
  ARGV[1] task id   ARGV[2] the query as the workers read it (_query.py)
  Checking the status and publishing in one step means a query is never sent for a task
  that no run holds; workers that do not hold the task ignore it (old workers, which do
  not know queries, ignore every one).
  Returns: { status, receivers } (the query is published only when status is 'running';
  receivers: how many workers listen on the channel), or false if there is no record. ]]
local status = redis.call('HGET', KEYS[1], 's')
if not status then return false end
if status ~= 'running' then return { status, 0 } end
local receivers = redis.call('SPUBLISH', KEYS[2], 'query ' .. ARGV[1] .. ' ' .. ARGV[2])
return { status, receivers }
