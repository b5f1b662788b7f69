--#include clock states lanes blobs
-- Creating tasks from the enqueue fields (EnqueueSpec in _wire.py, in the same order), read
-- from `argv` at a task's first index b: id, name, payload, priority, delay_ms, at_ms,
-- max_tries, timeout_ms, ttl_ms, unique key ('' none: else a lock uniq:<key> names the one
-- live task), expire_in_ms (0 none), headers (JSON, '' none: carried to the run, e.g. a
-- trace context), version (the enqueuing code's version of the task: stored as 'v' only
-- above 1, so a version-1 record is as it was before versions), from_worker ('' none, else
-- "mt to v": the options an enqueue by name left to the claiming worker's definition; stored
-- as fw). Scripts read them by name, argv[b + SPEC.<field>]: a field added to the spec is
-- added here (and to new_task), and nowhere else. A task's lane ("<limit name>|<key>",
-- lib/lanes.lua) is not one of them: the scripts read it apart (lanes_after), so that an
-- unkeyed task costs no argument more.
local SPEC = { id = 0, name = 1, payload = 2, priority = 3, delay_ms = 4, at_ms = 5,
  max_tries = 6, timeout_ms = 7, ttl_ms = 8, unique = 9, expire_ms = 10, headers = 11,
  version = 12, from_worker = 13 }
local SPEC_WIDTH = 14

-- The lanes of a call's keyed tasks, sent after its task fields from argv[at]: a count,
-- then index (from 0) and lane of each. Returns index -> lane.
local function lanes_after(argv, at)
  local lanes = {}
  for j = 1, tonumber(argv[at] or '0') do
    lanes[tonumber(argv[at + 2 * j - 1])] = argv[at + 2 * j]
  end
  return lanes
end

-- Whether the task whose fields start at argv[b] would be created: false when its id has a
-- record already; false and the holder's id when a live task holds its unique key.
local function creatable(base, argv, b)
  if redis.call('EXISTS', base .. 'task:' .. argv[b + SPEC.id]) == 1 then return false end
  local unique = argv[b + SPEC.unique]
  if unique ~= '' then
    local holder = redis.call('GET', base .. 'uniq:' .. unique)
    if holder then
      local hs = redis.call('HGET', base .. 'task:' .. holder, 's')
      if hs and not FINAL[hs] then return false, holder end
    end
  end
  return true
end

-- Back-pressure (Settings.max_queue_length; `limit` 0 = none): the tasks waiting to run in
-- the queue (its queued lists and lanes, the zsets given: scheduled, waiting, paused) plus those
-- this call would create must stay within the limit. Checked before the call writes
-- anything, so a refused call writes nothing. Costs nothing without a limit; with one, a
-- few O(1) reads and one EXISTS per task of the call. `n` tasks of `width` fields each
-- start at argv[first]. Returns the error text, or nil.
local function queue_full(base, limit, lists, zsets, argv, first, n, width)
  if limit <= 0 then return nil end
  local length = tonumber(redis.call('HGET', base .. 'meta', 'kq') or '0')
  for _, k in ipairs(lists) do length = length + redis.call('LLEN', k) end
  for _, k in ipairs(zsets) do length = length + redis.call('ZCARD', k) end
  local adding = 0
  for i = 0, n - 1 do
    if creatable(base, argv, first + i * width) then adding = adding + 1 end
  end
  if adding > 0 and length + adding > limit then
    return 'SEGUE_QUEUE_FULL ' .. base .. ' ' .. length .. ' ' .. limit .. ' ' .. adding
  end
  return nil
end

-- Create the task record whose fields start at argv[b]. Returns its key, status (queued,
-- scheduled, or `waiting` when told so) and due time; nil when the id already exists; nil,
-- nil, nil, <id> when a live task holds the unique key. Its creation is not a transition:
-- the record starts with its status and first history line, and the caller indexes it.
local function new_task(base, argv, b, now, waiting, lane)
  local id = argv[b + SPEC.id]
  local tk = base .. 'task:' .. id
  local create, holder = creatable(base, argv, b)
  if holder then return nil, nil, nil, holder end
  if not create then return nil end
  local unique = argv[b + SPEC.unique]
  if unique ~= '' then redis.call('SET', base .. 'uniq:' .. unique, id) end
  -- the usual values ('0': no delay, no time, no expiry; '1': the first version) are told
  -- by their text: reading a number costs the server more than the rest of the field
  local delay = argv[b + SPEC.delay_ms]
  local due = delay == '0' and now or now + tonumber(delay)
  local at = argv[b + SPEC.at_ms]
  if at ~= '0' then
    at = tonumber(at)
    if at > 0 then due = at end
  end
  local status = 'queued'
  if waiting then
    status = 'waiting'
  elseif due > now then
    status = 'scheduled'
  end
  local now_text = num_text(now)
  -- lost runs 'd' start absent, read as 0 by the scripts of this release and of the previous
  -- one (HINCRBY, or a default): it put a waiting record in the next size class of the
  -- server's allocator. Tries 't' and the generation 'g' are written: the claim then
  -- replaces them in place, where adding them cost the drain more than it saved
  redis.call('HSET', tk, 'n', argv[b + SPEC.name], 'p', argv[b + SPEC.payload], 's', status,
    'q', argv[b + SPEC.priority], 't', '0', 'g', '0', 'mt', argv[b + SPEC.max_tries],
    'to', argv[b + SPEC.timeout_ms], 'ttl', argv[b + SPEC.ttl_ms], 'ce', now_text,
    'hc', first_history(status))
  if due > now then redis.call('HSET', tk, 'due', due) end
  -- offloaded arguments: their blob now lives as long as this record (lib/blobs.lua)
  adopt_blob(base, tk, id, argv[b + SPEC.payload])
  if unique ~= '' then redis.call('HSET', tk, 'uq', unique) end
  -- expiry arrives relative (ms from now), so only the server's clock decides it; a
  -- negative one is already over (a cron tick fired later than its expire): EXPIRED at claim
  local expire = argv[b + SPEC.expire_ms]
  if expire ~= '0' then
    expire = tonumber(expire)
    if expire ~= 0 then redis.call('HSET', tk, 'exp', now + expire) end
  end
  local headers = argv[b + SPEC.headers]
  if headers ~= '' then redis.call('HSET', tk, 'hd', headers) end
  local version = argv[b + SPEC.version]
  if version ~= '1' then
    version = tonumber(version)
    if version and version > 1 then redis.call('HSET', tk, 'v', version) end
  end
  local from_worker = argv[b + SPEC.from_worker]
  if from_worker and from_worker ~= '' then redis.call('HSET', tk, 'fw', from_worker) end
  if lane then redis.call('HSET', tk, 'lk', lane) end
  return tk, status, due
end

-- The lane of a task sent by name (its record's 'fw': app.send, segue enqueue), whose
-- producer does not know the task's limits: the lane its workers' definition names, as they
-- publish it (hash limits:lanes, task name -> "<limit name>|" for a keyed limit without a
-- key, "<limit name>" for one keyed by an argument). A key sent with the call (limit_key=,
-- lane "<task name>|<key>") goes under that limit name; without one, a task keyed by an
-- argument waits in its list, held only by its name's limits. No worker published (none
-- started yet, or of the previous release): the lane as sent.
local function sent_lane(base, name, lane)
  local pub = redis.call('HGET', base .. 'limits:lanes', name)
  if not pub then return lane end
  if lane then return string.match(pub, '^[^|]*') .. string.match(lane, '|.*$') end
  if string.byte(pub, -1) == 124 then return pub end
  return lane
end

-- A new queued task joins the back of its priority list `list`, or of its lane.
local function push_new(base, list, argv, b, lane)
  if not lane then
    redis.call('LPUSH', list, argv[b + SPEC.id])
  else
    lane_push(base, PRIORITY_LISTS[argv[b + SPEC.priority]], lane, argv[b + SPEC.id], false)
  end
end
