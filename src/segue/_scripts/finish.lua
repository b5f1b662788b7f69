--[[ finish: record the outcome of runs, fenced by lease generation.
  KEYS[1] high list   KEYS[2] normal list   KEYS[3] low list
  KEYS[4] scheduled zset   KEYS[5] leases zset   KEYS[6] wake list   KEYS[7] dead-letter list
  KEYS[8..11] done zsets: succeeded, failed, cancelled, expired   KEYS[12] paused zset
  KEYS[13] waiting zset   KEYS[14] events stream
  ARGV[1] key prefix "segue:{q}:"   ARGV[2] done channel   ARGV[3] dead-letter cap
  ARGV[4] 1 when a claim of this queue follows in the same round trip (it takes what became
    ready here, and wakes other workers if more is left), else 0
  ARGV[5] count, then 5 fields per outcome: id, gen, action, a, b (a 'pause' has more)
    ok       a = result payload
    fail     a = error JSON, b = reason
    retry    a = error JSON, b = delay ms
    requeue  a = why, '' for a graceful shutdown (back to the head of its list, the try
             not spent: the run stopped for no fault of the task)
    suspend  a = delay ms, -1 for none (the try not spent; not counted as a pause)
    sleep    a = delay ms (a durable sleep, ctx.sleep: SUSPENDED, the try not spent)
    pause    a = delay ms, -1 for none, b = max pauses, -1 for no limit; then k, and k
             field/JSON value pairs (the task raised Pause(delay, state)): the pairs are
             merged into its state and it is suspended, the try not spent. Without progress
             since its last Pause (state written, 'pw', or pairs given here) it counts one
             more pause in a row ('np'), is backed off 0.1 s doubling to 60 s, and past max
             pauses ends FAILED pause_limit; progress resets the count
    limited  a = hold ms, b = max pauses (-1: no limit), c = lane ('' its own): the task
             raised RateLimited. It is queued again at the head of its lane (or list), the
             try not spent, counted as a pause without progress; the budget of `c` (else
             of its own lane, else of its task name: zset <prefix>holds) is held closed
             until then for every worker. With another lane than its own it waits as
             SUSPENDED until then.
    paused   (an operator's pause was carried out: held until resumed, the try not spent)
    cancelled (an operator's cancel was carried out)
    release  a = max releases, b = release window ms (unknown task name: not a try)
    newer    a = base delay ms, b = most delay ms (the worker's code of the task is older than
             the record's version 'v': not a try, and not a release toward the unknown-task
             bound: back after a delay doubling from a to b with each such release, 'vrel')
  Returns: one integer per outcome: 1 applied, 2 applied and it left outbox entries for
  other queues (the worker's forwarder moves them now), 3 already applied (a success sent
  again after the reply to its first sending was lost with the connection: the record
  succeeded under this very generation), 0 rejected (the lease was lost: another worker
  holds the task, or it already ended). A rejected writer must drop the task. ]]
--#include clock finalize
local prefix = ARGV[1]
local channel = ARGV[2]
local n = tonumber(ARGV[5])
local now = now_ms()
gather_stats()
local Q = queue_keys(prefix, KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[6], KEYS[8], KEYS[9],
  KEYS[10], KEYS[11], KEYS[12], channel)
local out = {}

Q.dead = KEYS[7]
Q.waiting = KEYS[13]
Q.events = KEYS[14]
local cap = tonumber(ARGV[3])

local EVENT = { retrying = 'task.retried', suspended = 'task.suspended' }

local function schedule(tk, id, status, at, reason)
  transition(Q, tk, id, { to = status, at = now, why = reason, set = { 'due', at, 'd', 0 },
    score = at, event = EVENT[status] })
  redis.call('HDEL', tk, 'w')
  if status == 'retrying' then count_stat(prefix, 'retried', now) end
  Q.woke = true
end

local function paused_itself(tk, id, b)
  local k = tonumber(ARGV[b + 5])
  if k > 0 then
    local kv = {}
    for j = b + 6, b + 5 + 2 * k do kv[#kv + 1] = ARGV[j] end
    redis.call('HSET', prefix .. 'state:' .. id, unpack(kv))
    for j = 2, #kv, 2 do adopt_blob(prefix, tk, id, kv[j]) end
  end
  local count = 0
  if k > 0 or redis.call('HGET', tk, 'pw') then
    redis.call('HDEL', tk, 'pw', 'np')
  else
    count = redis.call('HINCRBY', tk, 'np', 1)
  end
  local most = tonumber(ARGV[b + 4])
  if most >= 0 and count > most then
    local err = cjson.encode({ type = 'PauseLimit', reason = 'pause_limit',
      message = 'the task raised Pause ' .. count .. ' times in a row without writing state'
        .. ' in between (max_pauses=' .. most .. ')' })
    finalize(Q, tk, id, 'failed', now, 'e', err, 'pause_limit')
    dead_letter(Q, id, cap, now)
    return
  end
  redis.call('HINCRBY', tk, 't', -1)
  if obey_control(Q, tk, id, now) then return end
  local delay = tonumber(ARGV[b + 3])
  if count > 0 then delay = math.max(delay, math.min(60000, 100 * 2 ^ (count - 1))) end
  if delay >= 0 then
    schedule(tk, id, 'suspended', now + delay, 'paused itself')
  else
    transition(Q, tk, id, { to = 'suspended', at = now, why = 'paused itself',
      set = { 'd', 0 }, push = 'back', event = 'task.suspended' })
    redis.call('HDEL', tk, 'w')
  end
end

local function rate_limited(tk, id, b)
  local hold, most, lane = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]), ARGV[b + 5]
  local f = redis.call('HMGET', tk, 'lk', 'n', 'pw')
  f[2] = task_name(f[2])
  local count = 0
  if f[3] then
    redis.call('HDEL', tk, 'pw', 'np')  -- it wrote its state since: progress
  else
    count = redis.call('HINCRBY', tk, 'np', 1)
  end
  if most >= 0 and count > most then
    local err = cjson.encode({ type = 'PauseLimit', reason = 'pause_limit',
      message = 'the task raised RateLimited or Pause ' .. count .. ' times in a row without '
        .. 'progress in between (max_pauses=' .. most .. ')' })
    finalize(Q, tk, id, 'failed', now, 'e', err, 'pause_limit')
    dead_letter(Q, id, cap, now)
    return
  end
  redis.call('HINCRBY', tk, 't', -1)
  if obey_control(Q, tk, id, now) then return end
  local untl = now + hold
  local own = lane == '' or lane == f[1]
  if lane == '' then lane = f[1] end
  -- a name's own lane ('|<name>', claim.lua) has no key: the hold is its name's, which its
  -- tasks still in the list obey too
  if lane and string.byte(lane, 1) ~= 124 then
    local bk = prefix .. 'kbucket:' .. lane
    if tonumber(redis.call('HGET', bk, 'hold') or '0') < untl then
      redis.call('HSET', bk, 'hold', untl)
      if redis.call('PTTL', bk) < hold + 1000 then redis.call('PEXPIRE', bk, hold + 1000) end
    end
  else
    redis.call('ZADD', prefix .. 'holds', 'GT', untl, f[2])
  end
  if own then
    transition(Q, tk, id, { to = 'queued', at = now, why = 'rate limited', set = { 'd', 0 },
      push = 'front', prio = nil, event = 'task.requeued' })
    redis.call('HDEL', tk, 'w')
  else
    schedule(tk, id, 'suspended', untl, 'rate limited')
  end
end

local b = 6
for i = 0, n - 1 do
  local id, gen, action = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  local width = action == 'pause' and 6 + 2 * tonumber(ARGV[b + 5])
    or (action == 'limited' and 6) or 5
  local tk = prefix .. 'task:' .. id
  local f = redis.call('HMGET', tk, 's', 'g')
  Q.outboxed = false
  if f[1] ~= 'running' or f[2] ~= gen then
    -- only this generation's run can have made it succeed under this generation
    out[i + 1] = (action == 'ok' and f[1] == 'succeeded' and f[2] == gen) and 3 or 0
  else
    out[i + 1] = 1
    redis.call('ZREM', KEYS[5], id)
    -- an end (finalize) leaves RUNNING itself: once per task is enough
    if action ~= 'ok' and action ~= 'fail' then leave_running(prefix, tk, id) end
    if action == 'ok' then
      -- its end also sets 'd' (lost deliveries in a row) back to 0
      finalize(Q, tk, id, 'succeeded', now, 'r', ARGV[b + 3], '')
    elseif action == 'fail' then
      finalize(Q, tk, id, 'failed', now, 'e', ARGV[b + 3], ARGV[b + 4])
      dead_letter(Q, id, cap, now)
    elseif action == 'cancelled' then
      if not obey_control(Q, tk, id, now) then
        local err = cjson.encode({ type = 'Cancelled', message = 'cancelled', reason = 'cancelled' })
        finalize(Q, tk, id, 'cancelled', now, 'e', err, 'cancelled')
      end
    elseif action == 'paused' then
      redis.call('HINCRBY', tk, 't', -1)
      if not obey_control(Q, tk, id, now) then
        -- the pause was withdrawn (resumed) while the run was stopping: queue it again
        transition(Q, tk, id, { to = 'queued', at = now, why = 'resumed', set = { 'd', 0 },
          push = 'front' })
        redis.call('HDEL', tk, 'w')
      end
    elseif action == 'retry' then
      redis.call('HSET', tk, 'e', ARGV[b + 3])
      if not obey_control(Q, tk, id, now) then
        schedule(tk, id, 'retrying', now + tonumber(ARGV[b + 4]), 'retry')
      end
    elseif action == 'suspend' then
      redis.call('HINCRBY', tk, 't', -1)
      if not obey_control(Q, tk, id, now) then
        local delay = tonumber(ARGV[b + 3])
        if delay >= 0 then
          schedule(tk, id, 'suspended', now + delay, 'paused itself')
        else
          transition(Q, tk, id, { to = 'suspended', at = now, why = 'paused itself',
            set = { 'd', 0 }, push = 'back', event = 'task.suspended' })
          redis.call('HDEL', tk, 'w')
        end
      end
    elseif action == 'sleep' then
      -- a durable sleep: its due time is in the step journal, the run replays past it
      redis.call('HINCRBY', tk, 't', -1)
      if not obey_control(Q, tk, id, now) then
        schedule(tk, id, 'suspended', now + tonumber(ARGV[b + 3]), 'sleeping')
        redis.call('HSET', tk, 'slp', gen)  -- purge.lua spares it unless asked
      end
    elseif action == 'pause' then
      paused_itself(tk, id, b)
    elseif action == 'limited' then
      rate_limited(tk, id, b)
    elseif action == 'requeue' then
      redis.call('HINCRBY', tk, 't', -1)
      if not obey_control(Q, tk, id, now) then
        transition(Q, tk, id, { to = 'queued', at = now, set = { 'd', 0 }, push = 'front',
          why = ARGV[b + 3] ~= '' and ARGV[b + 3] or 'worker shutdown', event = 'task.requeued' })
        redis.call('HDEL', tk, 'w')
      end
    elseif action == 'release' then
      redis.call('HINCRBY', tk, 't', -1)
      local rel = redis.call('HINCRBY', tk, 'rel', 1)
      local first = tonumber(redis.call('HGET', tk, 'rel0') or now)
      if rel == 1 then redis.call('HSET', tk, 'rel0', now) end
      if rel >= tonumber(ARGV[b + 3]) or now - first >= tonumber(ARGV[b + 4]) then
        local name = task_name(redis.call('HGET', tk, 'n'))
        local err = cjson.encode({ type = 'UnknownTask', reason = 'unknown_task',
          message = 'no worker knows the task name ' .. name .. ' (released ' .. rel .. ' times)' })
        finalize(Q, tk, id, 'failed', now, 'e', err, 'unknown_task')
        dead_letter(Q, id, cap, now)
      else
        schedule(tk, id, 'scheduled', now + 1000 * rel, 'unknown task name, released')
      end
    elseif action == 'newer' then
      redis.call('HINCRBY', tk, 't', -1)
      local vrel = redis.call('HINCRBY', tk, 'vrel', 1)
      if not obey_control(Q, tk, id, now) then
        local step = tonumber(ARGV[b + 3]) * 2 ^ math.min(vrel - 1, 30)
        local delay = math.min(tonumber(ARGV[b + 4]), step)
        schedule(tk, id, 'scheduled', now + math.floor(delay), 'newer version, released')
      end
    end
    if Q.outboxed then out[i + 1] = 2 end
  end
  b = b + width
end
if ARGV[4] ~= '1' then wake_if_needed(Q) end
flush_stats()
return out
