-- The queue's counters (stats, hist) are keys built from the key prefix, in the queue's
-- hash tag, like the per-task keys.
-- Counters that outlive task records, for metrics and the dashboard (_ops_reads.py):
-- `stats` (hash) counts runs started, runs that ended in a retry, and tasks ended by final
-- status; `hist` (hash) counts tasks ended succeeded or failed per HIST_STEP ms in a ring
-- of HIST_SLOTS steps (25 hours, at most 900 fields: slot -> its step, slot:s, slot:f).
local HIST_STEP, HIST_SLOTS = 300000, 300
local function add_stat(base, what, at, count)
  redis.call('HINCRBY', base .. 'stats', what, count)
  if what ~= 'succeeded' and what ~= 'failed' then return end
  local step = math.floor(at / HIST_STEP)
  local slot = step % HIST_SLOTS
  local hk = base .. 'hist'
  if tonumber(redis.call('HGET', hk, slot) or '-1') ~= step then
    redis.call('HSET', hk, slot, step, slot .. ':s', 0, slot .. ':f', 0)
  end
  redis.call('HINCRBY', hk, slot .. (what == 'succeeded' and ':s' or ':f'), count)
end

-- The hot scripts (claim, finish) handle a batch of tasks per call: they gather their
-- counts here and write each counter once at the end (flush_stats), instead of three or
-- four counter commands per task, which cost the drain more server CPU than the rest of
-- a task's end. Other scripts write at once.
local gathered = nil
local function gather_stats()
  gathered = {}
end

local function count_stat(base, what, at)
  if not gathered then
    add_stat(base, what, at, 1)
    return
  end
  -- one script call counts for one queue at one time (its `now`), so `what` is the key
  local g = gathered[what]
  if g then
    g[3] = g[3] + 1
  else
    gathered[what] = { base, at, 1 }
  end
end

local function flush_stats()
  if not gathered then return end
  for what, g in pairs(gathered) do add_stat(g[1], what, g[2], g[3]) end
  gathered = nil
end
