-- The statuses as the scripts group them, and the priority lists' order.
local PRIORITY_LISTS = { high = 1, normal = 2, low = 3 }
local FINAL = { succeeded = true, failed = true, cancelled = true, expired = true }
local HELD = { queued = true, scheduled = true, retrying = true, suspended = true }
