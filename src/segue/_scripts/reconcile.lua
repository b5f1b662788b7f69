--[[ reconcile: one bounded step of a pass that finds and repairs disagreements between a
  queue's task records and the structures that index them (RELIABILITY §5.9). Every
  transition keeps them in step atomically; they part only when the data itself changed
  under segue: a restore from an older copy, a hand edit, eviction.
  KEYS[1] high list   KEYS[2] normal list   KEYS[3] low list   KEYS[4] scheduled zset
  KEYS[5] leases zset   KEYS[6] paused zset   KEYS[7] waiting zset   KEYS[8] wake list
  KEYS[9] signal deadlines zset (sigdue)
  ARGV[1] key prefix "segue:{q}:" (records and per-task keys are built from it, and SCAN
    matches only it: every key the step touches is in the queue's hash tag and slot)
  ARGV[2] lease ms   ARGV[3] entries per step   ARGV[4] phase   ARGV[5] its cursor
  Phases, in order: keys (SCAN of the queue's keys: records, durable state, signal buffers
  and accepted signal ids, unique locks, concurrency sets, offloaded blobs, output streams; a
  record whose cascade to sub-tasks is under way, field 'cw', gets its marker in the hash
  <prefix>cascade back if it lost it), leases, sched, paused, waiting, sigdue (ZSCAN), q1,
  q2, q3 (list offsets). A task waiting for a signal is never queued here: only its
  deadline's entry is put back.
  A workflow record that is compensating (lib/saga.lua) asks again for each compensation
  it asked for and has not heard the end of, when that compensation's task is gone or ended
  SAGA_TOLD_MS ago (its queue's), or (another queue's) when it was asked for
  SAGA_ASK_AGAIN_MS ago: the outbox entry that creates it, or the one that tells its end,
  may have been lost. Asking again creates nothing that exists, and an end is counted once.
  Returns: { next phase ('done' when the pass is over), its cursor, kind, id, kind, id... }
  with one kind, id pair per repair. Repairing twice changes nothing: a repaired
  disagreement is gone. ]]
--#include clock states outbox
local prefix, lease = ARGV[1], tonumber(ARGV[2])
local count = tonumber(ARGV[3])
local phase, cursor = ARGV[4], ARGV[5]
local now = now_ms()
local out = {}
local woke = false
local LISTS = { KEYS[1], KEYS[2], KEYS[3] }
local IN_SCHEDULE = { scheduled = true, retrying = true, suspended = true }
local IN_LIST = { queued = true, suspended = true }
local ORDER = { 'keys', 'leases', 'sched', 'paused', 'waiting', 'sigdue', 'q1', 'q2', 'q3',
  'done' }
local STALE = { leases = 'stale_lease', sched = 'stale_schedule', paused = 'stale_paused',
  waiting = 'stale_waiting', sigdue = 'stale_signal_deadline' }
local ZSETS = { leases = { KEYS[5], 'running' }, paused = { KEYS[6], 'paused' },
  waiting = { KEYS[7], 'waiting' }, sigdue = { KEYS[9], 'waiting' } }
-- a list longer than this is not searched for a missing entry in this pass: LPOS is
-- linear, so a pass over a backlog of N searched N times for N entries (10,000 queued
-- tasks held the server 14-55 ms per step); a backlog drains, and a later pass finds
-- what is missing
local LIST_SEARCH_MAX = 1000
-- the linger of a stream whose task's record is gone (end_task's default)
local STREAM_LINGER_MS = 300000
-- an offloaded value's lifetime before a record adopts it (_offload.PENDING_SECONDS)
local BLOB_PENDING_MS = 600000

local function repaired(kind, id)
  out[#out + 1] = kind
  out[#out + 1] = id
end

local function status_of(id)
  return redis.call('HGET', prefix .. 'task:' .. id, 's')
end

local function listed(list, id)
  if redis.call('LLEN', list) > LIST_SEARCH_MAX then return true end
  return redis.call('LPOS', list, id) ~= false
end

-- a record whose structure lost it: put it back where its status says it is
local function check_record(id)
  local tk = prefix .. 'task:' .. id
  local f = redis.call('HMGET', tk, 's', 'q', 'due', 'cw', 'cz', 'nk', 'sgd')
  if f[4] and f[5] and redis.call('HEXISTS', prefix .. 'cascade', id) == 0 then
    -- a cascade to its sub-tasks under way lost its marker: walked again from the first
    -- (a step repeated changes nothing)
    redis.call('HSET', prefix .. 'cascade', id, f[5] .. '|1|' .. (f[6] or '0') .. '|reconciled')
    repaired('cascade_lost', id)
  end
  local s, list = f[1], LISTS[PRIORITY_LISTS[f[2] or '']]
  if not s or not list then return end
  if s == 'running' then
    if not redis.call('ZSCORE', KEYS[5], id) then
      -- a live holder renews it (renew extends an existing entry); a gone one lets it
      -- expire, and the next claim takes the task back as from any lost worker
      redis.call('ZADD', KEYS[5], now + lease, id)
      repaired('running_without_lease', id)
    end
  elseif s == 'queued' or (s == 'suspended' and not f[3]) then
    if not listed(list, id) then
      redis.call('LPUSH', list, id)
      woke = true
      repaired('queued_not_listed', id)
    end
  elseif IN_SCHEDULE[s] then
    if not redis.call('ZSCORE', KEYS[4], id) then
      redis.call('ZADD', KEYS[4], tonumber(f[3] or now), id)
      woke = true
      repaired('scheduled_not_indexed', id)
    end
  elseif s == 'paused' then
    if not redis.call('ZSCORE', KEYS[6], id) then
      redis.call('ZADD', KEYS[6], now, id)
      repaired('paused_not_indexed', id)
    end
  elseif s == 'waiting' then
    if not redis.call('ZSCORE', KEYS[7], id) then
      redis.call('ZADD', KEYS[7], now, id)
      repaired('waiting_not_indexed', id)
    end
    if f[7] and not redis.call('ZSCORE', KEYS[9], id) then
      -- a signal wait's deadline entry lost under segue (a restore, a hand edit)
      redis.call('ZADD', KEYS[9], tonumber(f[7]) or now, id)
      repaired('signal_deadline_not_indexed', id)
    end
  end
end

local function ended_or_gone(id)
  local s = status_of(id)
  return not s or FINAL[s]
end

-- A compensating workflow whose compensation was asked for and did not tell its end.
local SAGA_ASK_AGAIN_MS = 300000
local SAGA_TOLD_MS = 60000 -- an end is told within this (a worker's forwarder, or its poll)
local function check_saga(key, wf)
  local f = redis.call('HMGET', key, 'cs', 'cps')
  if f[1] ~= 'compensating' then return end
  local Q = { base = prefix }
  for n in string.gmatch(f[2] or '', '%S+') do
    local g = redis.call('HMGET', key, 'ca:' .. n, 'ck:' .. n, 'cp:' .. n, 'ok:' .. n)
    if g[1] and not g[2] then
      local plan = cjson.decode(g[3])
      local again
      if plan.id == wf .. '.c' .. n then
        -- of this queue: gone, or ended a while ago and its end not heard
        local t = redis.call('HMGET', prefix .. 'task:' .. plan.id, 's', 'et')
        again = not t[1] or (FINAL[t[1]] and now - tonumber(t[2] or '0') > SAGA_TOLD_MS)
      else
        again = now - tonumber(g[1]) > SAGA_ASK_AGAIN_MS
      end
      if again then
        redis.call('HSET', key, 'ca:' .. n, now)
        outbox_push(Q, { k = 'c', d = plan.id, w = wf, n = n, a = plan.a, r = g[4] })
        repaired('saga_asked_again', plan.id)
      end
    end
  end
end

local function check_key(key)
  local rest = string.sub(key, #prefix + 1)
  local kind, tail = string.match(rest, '^(%a+):(.+)$')
  if kind == 'task' then
    check_record(tail)
  elseif kind == 'state' then
    if ended_or_gone(tail) then
      redis.call('DEL', key)
      repaired('orphan_state', tail)
    end
  elseif kind == 'sig' then
    -- a buffer left by a release whose end of task did not know signals
    if ended_or_gone(tail) then
      redis.call('DEL', key)
      repaired('orphan_signals', tail)
    end
  elseif kind == 'sgi' then
    -- accepted signal ids live as long as the record
    local tk = prefix .. 'task:' .. tail
    local s = status_of(tail)
    if not s then
      redis.call('DEL', key)
      repaired('orphan_signal_ids', tail)
    elseif FINAL[s] and redis.call('PTTL', key) == -1 and redis.call('PTTL', tk) > 0 then
      redis.call('PEXPIRE', key, redis.call('PTTL', tk))
      repaired('signal_ids_without_ttl', tail)
    end
  elseif kind == 'uniq' then
    local holder = redis.call('GET', key)
    if holder and ended_or_gone(holder) then
      redis.call('DEL', key)
      repaired('stale_unique', holder)
    end
  elseif kind == 'blob' then
    -- an offloaded value (lib/blobs.lua). One with a TTL is pending or follows its record:
    -- left to expire. A kept one whose record is gone, or no longer names it, is an orphan
    -- (its record deleted by a script that knew nothing of blobs, or a rollback): it gets
    -- the pending TTL, not a DEL, since a key being written looks the same (a client's
    -- pipeline sets its TTL after its first chunk, and a DEL there would leave the later
    -- chunks without the first). One kept while its record expires (ended under such a
    -- script) takes the record's lifetime.
    local id, name = string.match(tail, '^(.+):([^:]+)$')
    if id and redis.call('PTTL', key) == -1 then
      local tk = prefix .. 'task:' .. id
      local f = redis.call('HMGET', tk, 's', 'off')
      local named = f[2] and string.find(' ' .. f[2] .. ' ', ' ' .. name .. ' ', 1, true)
      if not f[1] or not named or (FINAL[f[1]] and string.sub(name, 1, 6) == 'state.') then
        redis.call('PEXPIRE', key, BLOB_PENDING_MS)
        repaired('orphan_blob', id)
      else
        local life = redis.call('PTTL', tk)
        if life > 0 then
          redis.call('PEXPIRE', key, life)
          repaired('blob_lifetime', id)
        end
      end
    end
  elseif kind == 'wf' then
    check_saga(key, tail)
  elseif kind == 'out' then
    -- an output stream lives without expiry only while its task has not ended (or ended
    -- with ttl -1, end marker written); one whose task ended without writing the marker (a
    -- record restored or edited as ended) would hold its readers and live for ever
    if ended_or_gone(tail) and redis.call('PTTL', key) == -1 then
      local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)[1]
      local ended = false
      local n = 0
      if last then
        for i = 1, #last[2], 2 do
          if last[2][i] == 'end' then ended = true end
          if last[2][i] == 'n' then n = tonumber(last[2][i + 1]) or 0 end
        end
      end
      local s = status_of(tail)
      if not ended then
        redis.call('XADD', key, '*', 'n', n + 1, 'end', s or 'gone')
        repaired('stream_without_end', tail)
      end
      if not s then redis.call('PEXPIRE', key, STREAM_LINGER_MS) end
    end
  elseif kind == 'running' then
    -- a member that no longer runs would hold a slot of its name's limit for ever
    for _, id in ipairs(redis.call('SMEMBERS', key)) do
      if status_of(id) ~= 'running' then
        redis.call('SREM', key, id)
        repaired('stale_concurrency', id)
      end
    end
  end
end

local function escape_glob(text)
  return (string.gsub(text, '([%*%?%[%]\\])', '\\%1'))
end

local next_cursor = '0'
if phase == 'keys' then
  local r = redis.call('SCAN', cursor, 'MATCH', escape_glob(prefix) .. '*', 'COUNT', count)
  next_cursor = r[1]
  for _, key in ipairs(r[2]) do check_key(key) end
elseif phase == 'sched' or ZSETS[phase] then
  local zset, want = KEYS[4], nil
  if ZSETS[phase] then zset, want = ZSETS[phase][1], ZSETS[phase][2] end
  local r = redis.call('ZSCAN', zset, cursor, 'COUNT', count)
  next_cursor = r[1]
  for i = 1, #r[2], 2 do
    local id = r[2][i]
    local s = status_of(id)
    local belongs = s and ((want and s == want) or (not want and IN_SCHEDULE[s]))
    if belongs and phase == 'sigdue' then
      belongs = redis.call('HEXISTS', prefix .. 'task:' .. id, 'sgd') == 1
    end
    if not belongs then
      redis.call('ZREM', zset, id)
      repaired(STALE[phase], id)
    end
  end
elseif phase == 'q1' or phase == 'q2' or phase == 'q3' then
  local list = LISTS[tonumber(string.sub(phase, 2))]
  local from = tonumber(cursor)
  local ids = redis.call('LRANGE', list, from, from + count - 1)
  local gone = 0
  for i, id in ipairs(ids) do
    if not IN_LIST[status_of(id) or ''] then
      -- marked in place, then removed in one sweep: one linear LREM per step, not per entry
      redis.call('LSET', list, from + i - 1, '\0stale')
      gone = gone + 1
      repaired('stale_queued', id)
    end
  end
  if gone > 0 then redis.call('LREM', list, 0, '\0stale') end
  if #ids == count then next_cursor = tostring(from + count - gone) end
end
if woke and redis.call('LLEN', KEYS[8]) == 0 then redis.call('LPUSH', KEYS[8], 1) end
local next_phase = 'done'
for i, p in ipairs(ORDER) do
  if p == phase then next_phase = next_cursor == '0' and (ORDER[i + 1] or 'done') or phase end
end
local reply = { next_phase, next_cursor }
for _, v in ipairs(out) do reply[#reply + 1] = v end
return reply
