--[[ query: hand a query to the worker running a task, only while a run holds it.
  KEYS[1] task record   KEYS[2] the queue's control channel (sharded pub/sub)
  ARGV[1] task id   ARGV[2] the query as the workers read it (_query.py)
  Checking the status and publishing in one step means a query is never sent for a task
  that no run holds. The message names the worker that holds the task (field w): the others
  ignore it, and that one answers even if the claim's reply has not reached its loop yet.
  Workers of a release without queries ignore every one.
  Returns: { status, receivers, worker id } (the query is published only when status is
  'running'; receivers: how many workers listen on the channel), or false if there is no
  record. ]]
local f = redis.call('HMGET', KEYS[1], 's', 'w')
local status, worker = f[1], f[2] or ''
if not status then return false end
if status ~= 'running' then return { status, 0, worker } end
local message = 'query ' .. ARGV[1] .. ' ' .. worker .. ' ' .. ARGV[2]
return { status, redis.call('SPUBLISH', KEYS[2], message), worker }
