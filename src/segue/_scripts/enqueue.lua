--[[ enqueue: create tasks, each idempotent by id, queued or scheduled.
  KEYS[1] high list   KEYS[2] normal list   KEYS[3] low list   (segue:{q}:q:<level>)
  KEYS[4] scheduled zset (segue:{q}:sched)   KEYS[5] wake list (segue:{q}:wake)
  KEYS[6] events stream (a task.enqueued event per task created)
  ARGV[1] key prefix "segue:{q}:" (task hashes are built from it: same hash tag)
  ARGV[2] count of tasks, then 12 fields per task:
    id, name, payload, priority (high|normal|low), delay_ms, at_ms (absolute, 0 = none),
    max_tries, timeout_ms (0 = none), ttl_ms (-1 = forever),
    unique key ('' = none; "<name>:<key>": at most one live task holds it),
    expire_in_ms (0 = none: else EXPIRED if not started that long after now),
    headers (JSON object, '' = none)
  Returns: one reply per task: 1 created, 0 already existed (nothing written), or the id
  of the live task that holds its unique key (nothing written). ]]
local prefix = ARGV[1]
local n = tonumber(ARGV[2])
local now = now_ms()
local out = {}
local pushed = false
for i = 0, n - 1 do
  local b = 3 + i * 12
  local tk, status, due, holder = new_task(prefix, b, now, false)
  if holder then
    out[i + 1] = holder
  elseif not tk then
    out[i + 1] = 0
  else
    if status == 'scheduled' then
      redis.call('ZADD', KEYS[4], due, ARGV[b])
    else
      redis.call('LPUSH', KEYS[PRIORITY_LISTS[ARGV[b + 3]]], ARGV[b])
    end
    pushed = true
    out[i + 1] = 1
    redis.call('XADD', KEYS[6], 'MAXLEN', '~', EVENTS_CAP, '*', 'e', 'task.enqueued',
      'id', ARGV[b], 'n', ARGV[b + 1])
  end
end
if pushed and redis.call('LLEN', KEYS[5]) == 0 then
  redis.call('LPUSH', KEYS[5], 1)
end
return out
