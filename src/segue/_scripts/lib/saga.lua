--#include outbox
-- Sagas: the compensations of a workflow that failed or was cancelled (see segue._saga).
-- The main workflow record holds the plan, written with it by graph.lua: 'cps' the numbers
-- of the steps that have a compensation, 'cp:<n>' {id = its task id, a = its enqueue fields
-- (SPEC of lib/create.lua), w = the numbers of the nearest compensated steps after n}. A
-- compensated step that succeeds notes its result in its queue's record ('ok:<n>', 'okn');
-- a part hands them to the main record with its 'p' entry. When the main record counts its
-- last end and the workflow failed ('bad') or was cancelled, the compensations of the steps
-- that succeeded start in reverse order: n's waits for those of the succeeded steps after it
-- ('cw:<n>' how many, 'cn:<m>' who waits for m's). Each is created on its own queue through
-- the outbox (entry 'c', forward.lua) and tells its end back the same way (entry 'k'),
-- whatever that end, so one that failed for good does not stop the earlier ones. The record
-- starts its ttl when the last compensation ended ('cs' compensated).

-- A record that has nothing more to wait for: its ttl starts.
local function workflow_ended(wk, at)
  redis.call('HSET', wk, 'et', at)
  local wttl = tonumber(redis.call('HGET', wk, 'ttl') or '-1')
  if wttl >= 0 then redis.call('PEXPIRE', wk, math.max(wttl, 1)) end
end

-- A step of workflow `wf` ended, passed or not; `result`: its result when it succeeded and
-- has a compensation (the compensation's input), noted in this queue's record.
local function saga_note(Q, id, wf, passed, result)
  local wk = Q.base .. 'wf:' .. wf
  if not passed then
    redis.call('HSET', wk, 'bad', '1')
  elseif result then
    local n = string.match(id, '%.(%d+)$')
    local okn = redis.call('HGET', wk, 'okn')
    redis.call('HSET', wk, 'ok:' .. n, result, 'okn', (okn and okn .. ' ' or '') .. n)
  end
end

-- Ask for n's compensation: its queue creates it (forward.lua), with n's result as input.
local function saga_launch(Q, wk, wf, n, at)
  local f = redis.call('HMGET', wk, 'cp:' .. n, 'ok:' .. n)
  local plan = cjson.decode(f[1])
  redis.call('HSET', wk, 'ca:' .. n, at)
  outbox_push(Q, { k = 'c', d = plan.id, w = wf, n = n, a = plan.a, r = f[2] })
end

-- The main record counted its last end: start the compensations when the workflow failed
-- or was cancelled and a compensated step succeeded. Returns whether they started.
local function saga_start(Q, wk, wf, at)
  local f = redis.call('HMGET', wk, 'cps', 'st', 'bad', 'okn', 'cs')
  if not f[1] or not f[4] or f[5] or (f[2] ~= 'cancelled' and not f[3]) then return false end
  local ok = {}
  for n in string.gmatch(f[4], '%S+') do ok[n] = true end
  local memo = {}
  -- the succeeded steps nearest after n (through steps that did not succeed)
  local function waits(n)
    if memo[n] then return memo[n] end
    local out = {}
    memo[n] = out
    for _, m in ipairs(cjson.decode(redis.call('HGET', wk, 'cp:' .. n)).w) do
      m = tostring(m)
      if ok[m] then
        out[m] = true
      else
        for x in pairs(waits(m)) do out[x] = true end
      end
    end
    return out
  end
  local count, ready = 0, {}
  for n in pairs(ok) do
    local k = 0
    for m in pairs(waits(n)) do
      k = k + 1
      local cn = redis.call('HGET', wk, 'cn:' .. m)
      redis.call('HSET', wk, 'cn:' .. m, (cn and cn .. ' ' or '') .. n)
    end
    redis.call('HSET', wk, 'cw:' .. n, k)
    count = count + 1
    if k == 0 then ready[#ready + 1] = n end
  end
  redis.call('HSET', wk, 'cs', 'compensating', 'cl', count,
    'co', f[2] == 'cancelled' and 'cancelled' or 'failed')
  for _, n in ipairs(ready) do saga_launch(Q, wk, wf, n, at) end
  return true
end

-- n's compensation ended (outbox entry 'k'): the ones waiting for it may start; the last
-- one ends the workflow. A repeated delivery changes nothing. Returns whether it counted.
local function saga_ended(Q, wf, n, status, at)
  local wk = Q.base .. 'wf:' .. wf
  if redis.call('HGET', wk, 'cs') ~= 'compensating' then return false end
  if redis.call('HSETNX', wk, 'ck:' .. n, status) == 0 then return false end
  for m in string.gmatch(redis.call('HGET', wk, 'cn:' .. n) or '', '%S+') do
    if redis.call('HINCRBY', wk, 'cw:' .. m, -1) <= 0 then saga_launch(Q, wk, wf, m, at) end
  end
  if redis.call('HINCRBY', wk, 'cl', -1) <= 0 then
    redis.call('HSET', wk, 'cs', 'compensated')
    workflow_ended(wk, at)
  end
  return true
end

-- A step of workflow `wf` ended in this queue: count it in this queue's record of the
-- workflow. A record that counted its last one starts its ttl, unless its compensations
-- start; a part (the record of a queue other than the workflow's own) then tells the main
-- record, which counts parts too, with what the saga needs to know of its steps.
local function count_ended(Q, wf, at)
  local wk = Q.base .. 'wf:' .. wf
  if redis.call('HINCRBY', wk, 'left', -1) <= 0 then
    local f = redis.call('HMGET', wk, 'part', 'okn', 'bad')
    if f[1] then
      workflow_ended(wk, at)
      local e = { k = 'p', w = wf, q = f[1] }
      if f[2] then
        e.ok = {}
        for n in string.gmatch(f[2], '%S+') do e.ok[n] = redis.call('HGET', wk, 'ok:' .. n) end
      end
      if f[3] then e.b = 1 end
      outbox_push(Q, e)
    elseif redis.call('HEXISTS', wk, 'cs') == 0 and not saga_start(Q, wk, wf, at) then
      -- (a record whose compensations started ends when the last of them ended)
      workflow_ended(wk, at)
    end
  end
end

-- A part's end reached the main record (forward.lua): what it knows of its steps first.
local function saga_merge(wk, e)
  if e.b == 1 then redis.call('HSET', wk, 'bad', '1') end
  if type(e.ok) ~= 'table' then return end
  for n, r in pairs(e.ok) do
    if redis.call('HSETNX', wk, 'ok:' .. n, r) == 1 then
      local okn = redis.call('HGET', wk, 'okn')
      redis.call('HSET', wk, 'okn', (okn and okn .. ' ' or '') .. n)
    end
  end
end
