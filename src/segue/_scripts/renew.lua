--[[ renew: extend the leases a worker still holds; report the ones it lost.
  KEYS[1] leases zset   KEYS[2] queue meta hash (when leases were last seen to: bridge_gap)
  ARGV[1] key prefix "segue:{q}:"   ARGV[2] worker id   ARGV[3] lease ms
  ARGV[4..] pairs: id, gen
  Returns: { ids whose lease this worker no longer holds (it must stop them),
    {id, request}... for every held task: its stored operator request (pause|cancel, or
    none) }: the stored request is the truth, which reaches the worker here even if a
    pub/sub message was lost (a request, or the withdrawal of a pause). ]]
--#include clock leases
local prefix = ARGV[1]
local wid = ARGV[2]
local now = now_ms()
local deadline = now + tonumber(ARGV[3])
bridge_gap(KEYS[2], KEYS[1], now, tonumber(ARGV[3]))
local lost = {}
local requests = {}
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  local f = redis.call('HMGET', prefix .. 'task:' .. id, 's', 'g', 'w', 'ctl')
  if f[1] == 'running' and f[2] == ARGV[i + 1] and f[3] == wid then
    redis.call('ZADD', KEYS[1], 'XX', deadline, id)
    requests[#requests + 1] = { id, f[4] or 'none' }
  else
    lost[#lost + 1] = id
  end
end
return { lost, requests }
