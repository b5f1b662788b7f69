--[[ generation: advance this worker's mark in a queue's generation marker, and say whether
  the server's data went back in time since this worker last advanced it.
  KEYS[1] generation hash (segue:{q}:gen): worker id -> "<n> <server ms>"
  KEYS[2] events stream (a queue.rollback event when the mark went back)
  ARGV[1] worker id   ARGV[2] the n this worker last wrote (0: none yet)
  ARGV[3] keep ms (a mark not advanced for that long is a gone worker's, and is pruned)
  ARGV[4] prune cursor (HSCAN)
  Each worker checks only its own mark, so no other worker's advance can hide a rollback:
  a mark below what this worker wrote (or gone) means the data was restored from an older
  copy, or lost. The hash expires `keep` after the last advance of all.
  Returns: { 1 if the mark went back, else 0;  the n written now;  next prune cursor;
    the n found (0: none) } ]]
--#include clock events
local now = now_ms()
local wid, last, keep = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local cur = redis.call('HGET', KEYS[1], wid)
local found = 0
if cur then found = tonumber(string.match(cur, '^(%d+)')) or 0 end
local back = 0
if last > 0 and found < last then
  back = 1
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', EVENTS_CAP, '*', 'e', 'queue.rollback', 'id', '',
    'n', '', 'data', cjson.encode({ worker = wid, found = found, written = last }))
end
local n = math.max(found, last) + 1
redis.call('HSET', KEYS[1], wid, n .. ' ' .. now)
local r = redis.call('HSCAN', KEYS[1], ARGV[4], 'COUNT', 20)
for i = 1, #r[2], 2 do
  local at = tonumber(string.match(r[2][i + 1], ' (%d+)$') or '0')
  if at < now - keep then redis.call('HDEL', KEYS[1], r[2][i]) end
end
redis.call('PEXPIRE', KEYS[1], keep)
return { back, n, r[1], found }
