--[[ graph: create tasks that wait for others (after=, workflow steps), and a workflow.
  KEYS[1] high list   KEYS[2] normal list   KEYS[3] low list   KEYS[4] scheduled zset
  KEYS[5] wake list   KEYS[6..9] done zsets: succeeded, failed, cancelled, expired
  KEYS[10] paused zset   KEYS[11] waiting zset   KEYS[12] events stream
  ARGV[1] key prefix "segue:{q}:"   ARGV[2] done channel
  ARGV[3] workflow id ('' for none; this queue's record wf:<id> is created once, with the
    tasks: a workflow whose steps live on several queues has one record on each)
  ARGV[4] workflow record ttl ms (-1 = forever)   ARGV[5] step ids, space-separated (the
    main record: every step, in layout order; a part: the steps of this queue), stored as
    'steps', or as their count 'stn' when they are <workflow id>.1 .. <workflow id>.<n>
  ARGV[6] ids of the last steps (the workflow's result), space-separated ('' in a part)
  ARGV[7] how many ends the record counts before the workflow's part here has ended: its
    steps on this queue, plus (main record) one per other queue of the workflow
  ARGV[8] the workflow's other queues, space-separated (main record; '' none)
  ARGV[9] this queue's name when the record is a part ('' for the main record, which lives
    on the queue of the workflow id)
  ARGV[10] count of tasks   ARGV[11] most tasks waiting to run in the queue (0 = no limit;
    see enqueue.lua: the whole call, workflow record included, is refused or written)
  ARGV[12] count k of compensations (main record; the saga plan of lib/saga.lua), then k
    pairs: a step's number, its 'cp:<n>' JSON
  then 21 fields per task: the 14 of enqueue.lua (SPEC in lib/create.lua), then
    deps: "<id>|<input index>" separated by spaces ('' none; index -1: passes no input)
    input mode: '' none, '1' the one previous result, 'l' the list of previous results
    on_failure: fail|cancel   optional: 1 if its failure must not fail its dependants
    xdeps: dependencies on other queues, "<id>|<input index>" ...: pending until an outbox
      entry resolves them (forward.lua); one that arrived before this task existed waits in
      early:<id> and is applied here
    xdependants: tasks of other queues waiting for this one, "<id>|<input index>|<workflow
      id or ->" ...: told through the outbox when this one ends
    compensable: '1' a workflow step with a compensation (its result is noted when it
      succeeds: lib/saga.lua), '' none
  then, only when some have one, the lanes of keyed tasks (as enqueue.lua)
  Tasks come in dependency order. A dependency that already ended counts at once; one
  whose record is gone fails the dependant. `deps` live in this queue's slot.
  Returns: one reply per task: 1 created, 0 already existed (nothing written), or the id
  of the live task that holds its unique key. ]]
--#include clock create finalize
local prefix = ARGV[1]
local now = now_ms()
local Q = queue_keys(prefix, KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7],
  KEYS[8], KEYS[9], KEYS[10], ARGV[2])
Q.waiting = KEYS[11]
Q.events = KEYS[12]
local n = tonumber(ARGV[10])
local ncp = tonumber(ARGV[12])
local first = 13 + 2 * ncp -- the first task's first field
local WIDTH = SPEC_WIDTH + 7
local full = queue_full(prefix, tonumber(ARGV[11]), { KEYS[1], KEYS[2], KEYS[3] },
  { KEYS[4], KEYS[10], KEYS[11] }, ARGV, first, n, WIDTH)
if full then return redis.error_reply(full) end
local wf = ARGV[3]
if wf ~= '' then
  local wk = prefix .. 'wf:' .. wf
  if redis.call('EXISTS', wk) == 0 then
    -- the usual steps <wf>.1 .. <wf>.<n> are only counted ('stn'): listed, two of them pass
    -- the length at which the server stops keeping the record compact (_wire.py)
    local n = 0
    for sid in string.gmatch(ARGV[5], '%S+') do
      n = n + 1
      if sid ~= wf .. '.' .. n then
        n = nil
        break
      end
    end
    redis.call('HSET', wk, 'st', 'running', n and 'stn' or 'steps', n or ARGV[5], 'last',
      ARGV[6], 'left', ARGV[7], 'ttl', ARGV[4], 'ce', now)
    if ARGV[8] ~= '' then redis.call('HSET', wk, 'queues', ARGV[8]) end
    if ARGV[9] ~= '' then redis.call('HSET', wk, 'part', ARGV[9]) end
    if ncp > 0 then
      local nums = {}
      for j = 0, ncp - 1 do
        local num = ARGV[13 + 2 * j]
        nums[#nums + 1] = num
        redis.call('HSET', wk, 'cp:' .. num, ARGV[14 + 2 * j])
      end
      redis.call('HSET', wk, 'cps', table.concat(nums, ' '))
    end
  end
end
local out = {}
local lanes = lanes_after(ARGV, first + n * WIDTH)
for i = 0, n - 1 do
  local b = first + i * WIDTH
  local g = b + SPEC_WIDTH -- this task's own graph fields (GraphStep in _wire.py)
  local id, deps, mode, xdeps = ARGV[b + SPEC.id], ARGV[g], ARGV[g + 1], ARGV[g + 4]
  local lane = lanes[i]
  if ARGV[b + SPEC.from_worker] ~= '' then lane = sent_lane(prefix, ARGV[b + SPEC.name], lane) end
  local tk, status, due, holder = new_task(prefix, ARGV, b, now, deps ~= '' or xdeps ~= '',
    lane)
  if holder then
    out[i + 1] = holder
  elseif not tk then
    out[i + 1] = 0
  else
    out[i + 1] = 1
    emit(Q, 'task.enqueued', id, ARGV[b + SPEC.name])
    redis.call('HSET', tk, 'of', ARGV[g + 2], 'opt', ARGV[g + 3])
    if wf ~= '' then redis.call('HSET', tk, 'wf', wf) end
    if ARGV[g + 5] ~= '' then redis.call('HSET', tk, 'xd', ARGV[g + 5]) end
    if ARGV[g + 6] == '1' then redis.call('HSET', tk, 'cp', '1') end
    if status == 'scheduled' then
      redis.call('ZADD', KEYS[4], due, id)
    elseif status == 'queued' then
      push_new(prefix, KEYS[PRIORITY_LISTS[ARGV[b + SPEC.priority]]], ARGV, b, lane)
      Q.woke = true
    else
      local pending, inputs, bad = 0, 0, nil
      for dep, idx in string.gmatch(deps, '(%S+)|(%-?%d+)') do
        if tonumber(idx) >= 0 then inputs = inputs + 1 end
        local df = redis.call('HMGET', prefix .. 'task:' .. dep, 's', 'r', 'opt', 'n')
        df[4] = task_name(df[4])
        if not df[1] then
          bad = bad or { 'failed', 'dependency_missing', 'dependency ' .. dep
            .. ' has no record (it never existed, or its record expired)' }
        elseif FINAL[df[1]] then
          if df[1] == 'succeeded' or df[3] == '1' then
            if tonumber(idx) >= 0 then
              local r = 'null'
              if df[1] == 'succeeded' then r = df[2] or 'null' end
              redis.call('HSET', tk, 'i:' .. idx, r)
            end
          else
            bad = bad or { df[1], 'dependency_' .. df[1], 'dependency ' .. (df[4] or '?')
              .. ' (' .. dep .. ') ended ' .. df[1] }
          end
        else
          redis.call('RPUSH', prefix .. 'next:' .. dep, id .. '|' .. idx .. '|a')
          pending = pending + 1
        end
      end
      for dep, idx in string.gmatch(xdeps, '(%S+)|(%-?%d+)') do
        -- one count per dependency: it is resolved once, however often it is named
        if redis.call('HSETNX', tk, 'x:' .. dep, '0') == 1 then
          if tonumber(idx) >= 0 then inputs = inputs + 1 end
          pending = pending + 1
        end
      end
      if mode ~= '' then redis.call('HSET', tk, 'im', mode, 'nd', inputs) end
      if bad then
        local cancel = ARGV[g + 2] == 'cancel'
        local err = cjson.encode({ type = cancel and 'Cancelled' or 'DependencyFailed',
          message = bad[3], reason = bad[2] })
        finalize(Q, tk, id, cancel and 'cancelled' or 'failed', now, 'e', err, bad[3])
      elseif pending == 0 then
        assemble_input(tk)
        make_ready(Q, tk, id, now)
      else
        redis.call('HSET', tk, 'wait', pending)
        redis.call('ZADD', KEYS[11], now, id)
      end
      if xdeps ~= '' then
        local ek = prefix .. 'early:' .. id
        local early = redis.call('HGETALL', ek)
        if #early > 0 then
          redis.call('DEL', ek)
          for j = 2, #early, 2 do resolve_cross(Q, id, cjson.decode(early[j]), now) end
        end
      end
    end
  end
end
wake_if_needed(Q)
return out
