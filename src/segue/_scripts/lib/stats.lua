-- The queue's counters (stats, hist) are keys built from the key prefix, in the queue's
-- hash tag, like the per-task keys.
-- Counters that outlive task records, for metrics and the dashboard (_ops_reads.py):
-- `stats` (hash) counts runs started, runs that ended in a retry, and tasks ended by final
-- status; `hist` (hash) counts tasks ended succeeded or failed per HIST_STEP ms in a ring
-- of HIST_SLOTS steps (25 hours, at most 900 fields: slot -> its step, slot:s, slot:f).
local HIST_STEP, HIST_SLOTS = 300000, 300
local function count_stat(base, what, at)
  redis.call('HINCRBY', base .. 'stats', what, 1)
  if what ~= 'succeeded' and what ~= 'failed' then return end
  local step = math.floor(at / HIST_STEP)
  local slot = step % HIST_SLOTS
  local hk = base .. 'hist'
  if tonumber(redis.call('HGET', hk, slot) or '-1') ~= step then
    redis.call('HSET', hk, slot, step, slot .. ':s', 0, slot .. ':f', 0)
  end
  redis.call('HINCRBY', hk, slot .. (what == 'succeeded' and ':s' or ':f'), 1)
end
