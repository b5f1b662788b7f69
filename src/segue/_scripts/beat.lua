--[[ beat: register a worker or refresh its heartbeat, and prune workers long gone.
  KEYS[1] workers index (zset, score = last beat, server ms)   <prefix>:{workers}:index
  KEYS[2] this worker's record (hash)                          <prefix>:{workers}:w:<id>
  ARGV[1] worker key prefix "<prefix>:{workers}:w:" (the records of pruned workers are
          built from it, in the same {workers} hash tag)
  ARGV[2] worker id   ARGV[3] record ttl ms   ARGV[4] index keep ms
  ARGV[5] started (server ms), 0 on the first beat
  ARGV[6..] field, value pairs of the record (host, pid, queues, running, finished...)
  Returns: { now ms, started ms }
  A record lives a few beats (its ttl, chosen by its own worker): a worker that died, or
  whose event loop is wedged, is first seen stale (its score ages), then its record is gone
  while its index entry still tells when it last beat. Entries older than `keep` whose
  record is gone are pruned here, by any worker's beat; the index itself expires `keep`
  after the last beat of all, so nothing is left once every worker is gone. ]]
--#include clock
local now = now_ms()
local ttl = tonumber(ARGV[3])
local keep = tonumber(ARGV[4])
local started = tonumber(ARGV[5])
if started == 0 then started = now end
local fields = { 'started', started, 'beat', now }
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('ZADD', KEYS[1], now, ARGV[2])
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - keep, 'LIMIT', 0, 100)
for _, id in ipairs(old) do
  if redis.call('EXISTS', ARGV[1] .. id) == 0 then redis.call('ZREM', KEYS[1], id) end
end
if redis.call('PTTL', KEYS[1]) < keep then redis.call('PEXPIRE', KEYS[1], keep) end
return { now, started }
