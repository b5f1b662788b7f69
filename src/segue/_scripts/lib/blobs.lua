--#include states
-- Offloaded values (issue 21, _offload.py): a value over Settings.offload_bytes is written
-- by the client, before the script that refers to it, as a chunk hash
-- `<base>blob:<task id>:<name>` in the task's slot, with a pending TTL: a client that stops
-- between the two leaves a key that expires by itself. The record field (p, r, a state
-- value) then holds a reference, and the script that stores it adopts the blob: PERSIST,
-- and its name added to the record's 'off' (space-separated). From then on the blob
-- follows the record: its ttl when the task ends (state blobs end with the state), kept
-- with a dead letter, deleted with the record.
local REF_HEAD = '{"\\u0000ref":'

-- Whether a stored value is a reference (to any store).
-- (its third byte, a backslash, tells nearly every inline value apart at once: no
-- substring is built for them, and every task's arguments and result are asked)
local REF_BYTE = string.byte(REF_HEAD, 3)
local function is_ref(value)
  return type(value) == 'string' and string.byte(value, 3) == REF_BYTE
    and string.sub(value, 1, #REF_HEAD) == REF_HEAD
end

-- The task id and blob name a stored value refers to in the Redis chunk store, else nil
-- (an inline JSON value; a reference to another store). _offload.py writes the fields in
-- this order.
local function blob_ref(value)
  if not is_ref(value) then return nil end
  return string.match(value, '^{"\\u0000ref":{"store":"redis","id":"([^"\\]+)","name":"([%w%._%-]+)"')
end

-- A value that refers to an offloaded one is about to be stored in the record `tk`: the
-- record's name takes the mark (lib/states.lua), and a blob of this task in the Redis
-- chunk store is adopted.
local function adopt_blob(base, tk, id, value)
  if not is_ref(value) then return end
  local f = redis.call('HMGET', tk, 'off', 'n')
  if f[2] and not string.find(f[2], NAME_MARK, 1, true) then
    redis.call('HSET', tk, 'n', f[2] .. NAME_MARK)
  end
  local rid, name = blob_ref(value)
  if not name or rid ~= id then return end
  redis.call('PERSIST', base .. 'blob:' .. id .. ':' .. name)
  local off = f[1]
  if not off then
    redis.call('HSET', tk, 'off', name)
  elseif not string.find(' ' .. off .. ' ', ' ' .. name .. ' ', 1, true) then
    redis.call('HSET', tk, 'off', off .. ' ' .. name)
  end
end

-- Give the blobs listed in `off` the record's lifetime: `ttl` ms (0: gone with the
-- record, -1: kept). `ended`: the task ended, so its state's blobs go with its state.
local function blobs_live(base, id, off, ttl, ended)
  if not off then return end
  for name in string.gmatch(off, '%S+') do
    local k = base .. 'blob:' .. id .. ':' .. name
    if ttl == 0 or (ended and string.sub(name, 1, 6) == 'state.') then
      redis.call('DEL', k)
    elseif ttl < 0 then
      redis.call('PERSIST', k)
    else
      redis.call('PEXPIRE', k, ttl)
    end
  end
end

-- Write a running task's state hash `sk` from a call's arguments: from `args[at]`, a count
-- n, then n field/JSON value pairs to set (each offloaded value adopted), then the fields
-- to delete. state.lua and migrate.lua both write state this way.
local function write_state(base, tk, id, sk, args, at)
  local i = at + 1
  for _ = 1, tonumber(args[at]) do
    redis.call('HSET', sk, args[i], args[i + 1])
    adopt_blob(base, tk, id, args[i + 1])
    i = i + 2
  end
  while i <= #args do
    redis.call('HDEL', sk, args[i])
    i = i + 1
  end
end
