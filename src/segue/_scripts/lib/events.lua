-- Lifecycle events go to the queue's capped stream (about the last EVENTS_CAP kept), in
-- the same atomic step as the transition they report.
-- (text, as every constant number a hot script sends: the server formats a number it is
-- given, at more cost than some of the commands it goes in)
local EVENTS_CAP = '10000'
local function emit(Q, kind, id, name)
  if Q.events then
    redis.call('XADD', Q.events, 'MAXLEN', '~', EVENTS_CAP, '*', 'e', kind, 'id', id,
      'n', name or '')
  end
end
