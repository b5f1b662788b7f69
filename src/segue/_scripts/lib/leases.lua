--#include states lanes
-- A server that stood still (DEBUG SLEEP, a long fork or fsync, a paused VM, a restart)
-- stopped no lease clock: deadlines are server time, so once it goes on, leases look
-- expired that no holder could renew meanwhile. Claims and renewals note in the queue's
-- meta hash when they last ran (`seen`); a gap of more than half a lease (live holders
-- renew every third of one) means nobody could act, and each lease that ran out within the
-- gap gets back what it had left when the gap began, at most half a lease: a live holder
-- renews it within that, a dead one's task is reaped when it runs out again. The cost: when
-- no worker at all touched the queue for that long, a dead worker's tasks are recovered up
-- to half a lease later. Called before any lease of the queue is reaped or renewed.
local function bridge_gap(meta, leases, now, lease)
  local seen = tonumber(redis.call('HGET', meta, 'seen') or now)
  redis.call('HSET', meta, 'seen', now)
  if now - seen <= lease / 2 then return end
  local lapsed = redis.call('ZRANGEBYSCORE', leases, '(' .. seen, now, 'WITHSCORES')
  for i = 1, #lapsed, 2 do
    local left = math.min(tonumber(lapsed[i + 1]) - seen, lease / 2)
    redis.call('ZADD', leases, now + left, lapsed[i])
  end
end

-- A task leaves RUNNING: it no longer counts against its name's concurrency limit, nor
-- against its key's ('kc': the lane whose krun set counts it). A run that counts in either
-- has 'cn' (a keyed one too: so an end reads 'kc' only then, and a worker of the previous
-- release ending it removes it from its name's set, where it is not, and leaves 'kc' to
-- the reconciler).
local function leave_running(base, tk, id)
  local f = redis.call('HMGET', tk, 'cn', 'n', 'kc')
  if f[1] then redis.call('SREM', base .. 'running:' .. task_name(f[2]), id) end
  if f[3] then lane_release(base, f[3], id) end
  if f[1] or f[3] then redis.call('HDEL', tk, 'cn', 'kc') end
end
