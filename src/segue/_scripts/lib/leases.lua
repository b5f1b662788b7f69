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
-- against its key's. Its 'cn' says where it counts: '1' in its name's set (running:<name>;
-- the only value the previous release writes), '0<lane>' in its key's (krun:<lane>), and
-- '1<lane>' in both. A worker of the previous release ending a keyed run takes it out of its
-- name's set (where it may not be: harmless) and leaves its key's slot to the reconciler.
local function leave_sets(base, tk, id, cn, name)
  if string.byte(cn, 1) ~= 48 then redis.call('SREM', base .. 'running:' .. name, id) end
  if #cn > 1 then lane_release(base, string.sub(cn, 2), id) end
  redis.call('HDEL', tk, 'cn')
end

local function leave_running(base, tk, id)
  local f = redis.call('HMGET', tk, 'cn', 'n')
  if f[1] then leave_sets(base, tk, id, f[1], task_name(f[2])) end
end
