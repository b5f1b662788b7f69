-- The server's time in ms: the one clock for leases, due times and histories.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- An integer (a time in server ms, a count) as text. Lua formats a number each time it
-- goes into a string or a command, at more cost than a hash field's write; a script call
-- writes the same few numbers (its `now`, now + a ttl, a first try) for each task it
-- handles, so each is converted once per call. Past 14 digits Lua's text would lose
-- digits: such a number is given back as it is (the server formats it in full).
local TEXT_OF = {}
local function num_text(n)
  local s = TEXT_OF[n]
  if s then return s end
  if n >= 1e14 or n <= -1e14 then return n end
  s = tostring(n)
  TEXT_OF[n] = s
  return s
end
