--[[ watch: tasks of other queues start waiting for tasks of this queue (after= across
  queues, once the waiting task exists). A dependency still unfinished adds the waiting
  task to its 'xd' field (told through the outbox when it ends, see finalize); one that
  already ended, or has no record, gets its outbox entry now. Sent again, it adds nothing
  twice (and a repeated entry changes nothing where it is delivered).
  KEYS[1] outbox list
  ARGV[1] key prefix "segue:{q}:"
  ARGV[2..] groups of 4: dependency id (this queue), waiting task id, its input index (-1),
    its workflow id ('' none)
  Returns: how many outbox entries it added. ]]
--#include finalize
local prefix = ARGV[1]
local pushed = 0
for i = 2, #ARGV, 4 do
  local sid, did, idx, wf = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local tk = prefix .. 'task:' .. sid
  local f = redis.call('HMGET', tk, 's', 'r', 'opt', 'n', 'xd')
  f[4] = task_name(f[4])
  local e = { k = 'd', d = did, i = idx, w = wf, s = sid, c = 0 }
  if not f[1] then
    e.st, e.p = 'missing', 0
    e.m = 'dependency ' .. sid .. ' has no record (it never existed, or its record expired)'
  elseif FINAL[f[1]] then
    e.st = f[1]
    e.p = (f[1] == 'succeeded' or f[3] == '1') and 1 or 0
    if f[1] == 'succeeded' then e.r = f[2] end
    e.m = (f[4] or '?') .. ' (' .. sid .. ') ended ' .. f[1]
  else
    local item = did .. '|' .. idx .. '|' .. (wf == '' and '-' or wf)
    local xd = f[5] or ''
    if not string.find(' ' .. xd .. ' ', ' ' .. item .. ' ', 1, true) then
      redis.call('HSET', tk, 'xd', xd == '' and item or (xd .. ' ' .. item))
    end
    e = nil
  end
  if e then
    redis.call('RPUSH', KEYS[1], cjson.encode(e))
    pushed = pushed + 1
  end
end
return pushed
