-- The statuses as the scripts group them, and the priority lists' order.
local PRIORITY_LISTS = { high = 1, normal = 2, low = 3 }
local FINAL = { succeeded = true, failed = true, cancelled = true, expired = true }
-- The letters of the statuses in a compact history ('hc', lib/transition.lua; _wire.py
-- HISTORY_CODES), and the first line of one, for a record created in `status`.
local HISTORY_CODES = { queued = 'q', scheduled = 'd', running = 'r', succeeded = 'k',
  failed = 'f', cancelled = 'c', waiting = 'w', suspended = 'u', paused = 'p',
  retrying = 'y', expired = 'x', compensating = 'm' }
local function first_history(status)
  return HISTORY_CODES[status] .. '0\n'
end
local HELD = { queued = true, scheduled = true, retrying = true, suspended = true }

-- A record that holds a reference to an offloaded value (lib/blobs.lua) has this after its
-- name ('n'): a worker of a release before payloads by reference reads 'n' through its own
-- claim script, knows no task of that name, and releases the task without spending a try
-- (as for any unknown name), where reading the reference as arguments or state would fail
-- or mislead it. Every script of this release reads the name through task_name.
local NAME_MARK = '\0offloaded'
local function task_name(n)
  if not n then return n end
  local at = string.find(n, NAME_MARK, 1, true)
  if at then return string.sub(n, 1, at - 1) end
  return n
end
