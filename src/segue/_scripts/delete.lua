--[[ delete: remove the record of a task that ended, and every index that names it.
  KEYS[1..4] done zsets: succeeded, failed, cancelled, expired   KEYS[5] dead-letter list
  ARGV[1] key prefix "segue:{q}:"   ARGV[2] task id
  The task key `<prefix>task:<id>`, its output stream `<prefix>out:<id>` and its accepted
  signal ids `<prefix>sgi:<id>` (which go with it) are built from ARGV[1], in the queue's
  hash tag. A task that has not ended is refused: cancel it first. Its state was deleted
  when it ended; its offloaded values (blobs named in 'off', lib/blobs.lua) go with it.
  Returns: its final status, or 0 when there was no record (deleted already, or expired).
  Errors: SEGUE_INVALID_TRANSITION <status> delete. ]]
--#include states blobs
local prefix, id = ARGV[1], ARGV[2]
local tk = prefix .. 'task:' .. id
local status = redis.call('HGET', tk, 's')
if status and not FINAL[status] then
  return redis.error_reply('SEGUE_INVALID_TRANSITION ' .. status .. ' delete')
end
-- an index entry left without its record goes too
for k = 1, 4 do redis.call('ZREM', KEYS[k], id) end
redis.call('LREM', KEYS[5], 0, id)
redis.call('DEL', prefix .. 'out:' .. id)
redis.call('DEL', prefix .. 'sgi:' .. id)
if not status then return 0 end
blobs_live(prefix, id, redis.call('HGET', tk, 'off'), 0, true)
redis.call('DEL', tk)
return status
