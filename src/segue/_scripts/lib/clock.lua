-- The server's time in ms: the one clock for leases, due times and histories.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A time (server ms) as text. Lua formats a number each time it goes into a string or a
-- command, at more cost than a hash field's write; a script call writes the same time
-- (its `now`) for each task it handles, so the last one converted is kept.
local last_ms, last_ms_text = nil, nil
local function ms_text(ms)
  if ms ~= last_ms then last_ms, last_ms_text = ms, tostring(ms) end
  return last_ms_text
end
