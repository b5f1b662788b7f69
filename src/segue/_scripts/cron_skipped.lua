--[[ cron_skipped: note in a queue's event stream that a schedule skipped a tick.
  KEYS[1] events stream (segue:{q}:events)
  ARGV[1] the id the tick's task would have had   ARGV[2] the task's name
  ARGV[3] JSON {schedule, tick (ms), running (the id of the run still going)}
  Returns 1. ]]
--#include events
redis.call('XADD', KEYS[1], 'MAXLEN', '~', EVENTS_CAP, '*', 'e', 'cron.skipped', 'id', ARGV[1],
  'n', ARGV[2], 'data', ARGV[3])
return 1
