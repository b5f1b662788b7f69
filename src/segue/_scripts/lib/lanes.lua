-- Keyed tasks (a limit key: segue.Limit(key=...) or .options(limit_key=...)) do not wait in
-- their priority list but in a lane of their own, one per priority level and lane id
-- ("<limit name>|<key>", the record's 'lk'), so that a flood of one key is one entry to
-- skip, however long, and keys are served in turn (lib: claim.lua). Keys, all in the queue's
-- hash tag, built from its prefix:
--   lane:<level>:<lane>  list of task ids, LPUSH back / RPUSH front / RPOP head, as the
--                        priority lists; gone when empty
--   ring:<level>         lanes with work that may start, in turn order (a lane is in it at
--                        most once: it enters when its list goes from empty to one task)
--   kpark:<lane>         levels whose lane waits for one of its runs to end (its key's
--                        concurrency is full): the end puts the lane back in the ring
--   kparked              zset of the parked lanes (for reads: the busiest keys)
--   kdue:<level>         zset: lanes waiting for a rate token or a RateLimited hold, by when
--   krun:<lane>          set of the lane's running tasks (its key's concurrency)
--   kbucket:<lane>       hash: its key's rate bucket (tk, ts) and RateLimited hold ('hold')
--   meta 'kq'            tasks in lanes, all levels: 0 or absent and claims skip all this
-- A lane with tasks is in exactly one of ring, kpark and kdue, so none is served twice and
-- none is forgotten; an empty lane leaves nothing behind.

-- The lane a claim is serving (its turn decides where it goes after), "<level>:<lane>"
local LANE_IN_TURN = nil

local function lane_push(base, level, lane, id, front)
  local n = redis.call(front and 'RPUSH' or 'LPUSH', base .. 'lane:' .. level .. ':' .. lane, id)
  redis.call('HINCRBY', base .. 'meta', 'kq', 1)
  if n == 1 and LANE_IN_TURN ~= level .. ':' .. lane then
    redis.call('LPUSH', base .. 'ring:' .. level, lane)
  end
end

-- An id taken out of its lane other than by a claim (an operator's pause or cancel). A
-- lane it leaves empty leaves its turn structures too: a later push puts it in the ring
-- again, and it must not be there twice.
local function lane_remove(base, level, lane, id)
  local lk = base .. 'lane:' .. level .. ':' .. lane
  local removed = redis.call('LREM', lk, 0, id)
  if removed > 0 then redis.call('HINCRBY', base .. 'meta', 'kq', -removed) end
  if redis.call('EXISTS', lk) == 0 then
    redis.call('LREM', base .. 'ring:' .. level, 0, lane)
    redis.call('ZREM', base .. 'kdue:' .. level, lane)
    redis.call('HDEL', base .. 'kcredit', lane .. '|' .. level)
    if redis.call('SREM', base .. 'kpark:' .. lane, level) == 1
        and redis.call('EXISTS', base .. 'kpark:' .. lane) == 0 then
      redis.call('ZREM', base .. 'kparked', lane)
    end
  end
end

-- A keyed run ends: it frees a slot of its key's concurrency, so the lane that waited for
-- one goes back in turn.
local function lane_release(base, lane, id)
  redis.call('SREM', base .. 'krun:' .. lane, id)
  local levels = redis.call('SPOP', base .. 'kpark:' .. lane, 3)
  for _, level in ipairs(levels) do redis.call('LPUSH', base .. 'ring:' .. level, lane) end
  if #levels > 0 then redis.call('ZREM', base .. 'kparked', lane) end
end
