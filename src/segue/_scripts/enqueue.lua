--[[ enqueue: create tasks, each idempotent by id, queued or scheduled.
  KEYS[1] high list   KEYS[2] normal list   KEYS[3] low list   (segue:{q}:q:<level>)
  KEYS[4] scheduled zset (segue:{q}:sched)   KEYS[5] wake list (segue:{q}:wake)
  KEYS[6] events stream (a task.enqueued event per task created)
  KEYS[7] waiting zset   KEYS[8] paused zset (read only with a length limit)
  ARGV[1] key prefix "segue:{q}:" (task hashes are built from it: same hash tag)
  ARGV[2] count of tasks
  ARGV[3] most tasks waiting to run in the queue (0 = no limit): a call that would go over
    it writes nothing and fails with SEGUE_QUEUE_FULL <prefix> <length> <limit> <adding>
  then the 13 enqueue fields per task (SPEC in lib/create.lua, EnqueueSpec in _wire.py):
    id, name, payload, priority (high|normal|low), delay_ms, at_ms (absolute, 0 = none),
    max_tries, timeout_ms (0 = none), ttl_ms (-1 = forever),
    unique key ('' = none; "<name>:<key>": at most one live task holds it),
    expire_in_ms (0 = none: else EXPIRED if not started that long after now; < 0: over),
    headers (JSON object, '' = none), version (the enqueuing code's, 1 when it has none),
    from_worker ('' = none, else "mt to v": what the claiming worker's definition supplies)
  then, only when some have one, the lanes of keyed tasks: their count, then index (from 0)
    and lane ("<limit name>|<key>": the task waits there, lib/lanes.lua) of each; a task
    sent by name (from_worker) takes the limit name its workers publish (sent_lane,
    lib/create.lua)
  Returns: one reply per task: 1 created, 0 already existed (nothing written), or the id
  of the live task that holds its unique key (nothing written).
  A server at maxmemory (noeviction) refuses the first write, before anything is stored. ]]
--#include clock events create
local prefix = ARGV[1]
local n = tonumber(ARGV[2])
local full = queue_full(prefix, tonumber(ARGV[3]), { KEYS[1], KEYS[2], KEYS[3] },
  { KEYS[4], KEYS[7], KEYS[8] }, ARGV, 4, n, SPEC_WIDTH)
if full then return redis.error_reply(full) end
local now = now_ms()
local out = {}
local pushed = false
local lanes = lanes_after(ARGV, 4 + n * SPEC_WIDTH)
for i = 0, n - 1 do
  local b = 4 + i * SPEC_WIDTH
  local id = ARGV[b + SPEC.id]
  local lane = lanes[i]
  if ARGV[b + SPEC.from_worker] ~= '' then lane = sent_lane(prefix, ARGV[b + SPEC.name], lane) end
  local tk, status, due, holder = new_task(prefix, ARGV, b, now, false, lane)
  if holder then
    out[i + 1] = holder
  elseif not tk then
    out[i + 1] = 0
  else
    if status == 'scheduled' then
      redis.call('ZADD', KEYS[4], due, id)
    else
      local list = KEYS[PRIORITY_LISTS[ARGV[b + SPEC.priority]]]
      if lane then push_new(prefix, list, ARGV, b, lane) else redis.call('LPUSH', list, id) end
    end
    pushed = true
    out[i + 1] = 1
    redis.call('XADD', KEYS[6], 'MAXLEN', '~', EVENTS_CAP, '*', 'e', 'task.enqueued',
      'id', id, 'n', ARGV[b + SPEC.name])
  end
end
if pushed and redis.call('LLEN', KEYS[5]) == 0 then
  redis.call('LPUSH', KEYS[5], 1)
end
return out
