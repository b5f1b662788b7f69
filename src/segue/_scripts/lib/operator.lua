--#include finalize
-- An operator's pause|resume|cancel of one task (see control.lua for the table).
-- Returns { status after, 1 if a running task was asked }, or an error reply. A command that
-- changed something reaches the task's sub-tasks too (cascade_mark, lib/cascade.lua).
local function control_task(Q, id, cmd, reason, control_channel, now)
  local tk = Q.base .. 'task:' .. id
  local f = redis.call('HMGET', tk, 's', 'q', 'ctl', 'hold', 'nk')
  local status, prio, ctl = f[1], f[2], f[3]
  local function reach(c) cascade_mark(Q, id, c, reason, f[5]) end
  if not status then return redis.error_reply('SEGUE_NOT_FOUND ' .. id) end
  local function unqueue()
    redis.call('LREM', Q.lists[PRIORITY_LISTS[prio]], 0, id)
    redis.call('ZREM', Q.sched, id)
  end
  local function invalid()
    return redis.error_reply('SEGUE_INVALID_TRANSITION ' .. status .. ' ' .. cmd)
  end
  if cmd == 'pause' then
    if status == 'paused' then return { status, 0 } end
    if FINAL[status] then return invalid() end
    if status == 'waiting' and redis.call('HEXISTS', tk, 'sgw') == 1 then
      -- waiting for a signal holds no slot: PAUSED at once, its wait kept on the record
      -- for resume; a signal sent meanwhile is buffered
      sig_hold(Q, id)
      transition(Q, tk, id, { to = 'paused', at = now, why = reason, set = { 'd', 0 },
        score = now, event = 'task.paused' })
      reach('pause')
      return { 'paused', 0 }
    end
    if status == 'waiting' then
      -- held where it is: when its dependencies are done it becomes PAUSED, not queued
      if not f[4] then
        redis.call('HSET', tk, 'hold', 1)
        add_history(tk, 'waiting', now, reason)
        reach('pause')
      end
      return { status, 0 }
    end
    if HELD[status] then
      unqueue()
      transition(Q, tk, id, { to = 'paused', at = now, why = reason, set = { 'd', 0 },
        score = now, event = 'task.paused' })
      redis.call('HDEL', tk, 'due')
      reach('pause')
      return { 'paused', 0 }
    end
    if ctl == 'cancel' then return { status, 1 } end -- a cancel already asked for wins
    if ctl ~= 'pause' then reach('pause') end
    redis.call('HSET', tk, 'ctl', 'pause', 'ctlr', reason, 'ctlt', now)
    redis.call('SPUBLISH', control_channel, 'pause ' .. id)
    return { status, 1 }
  elseif cmd == 'resume' then
    if status == 'paused' then
      redis.call('ZREM', Q.paused, id)
      redis.call('HDEL', tk, 'ctl', 'ctlr', 'ctlt')
      local after = sig_resume(Q, tk, id, reason, now)
      if after then
        reach('resume')
        return { after, 0 }
      end
      transition(Q, tk, id, { to = 'queued', at = now, why = reason, push = 'back', prio = prio,
        event = 'task.resumed' })
      reach('resume')
      return { 'queued', 0 }
    end
    if status == 'running' and ctl == 'pause' then
      -- the pause was not carried out yet: withdraw it, and tell the worker
      redis.call('HDEL', tk, 'ctl', 'ctlr', 'ctlt')
      redis.call('SPUBLISH', control_channel, 'resume ' .. id)
      reach('resume')
      return { status, 1 }
    end
    if status == 'waiting' then
      if f[4] then reach('resume') end
      redis.call('HDEL', tk, 'hold')
      return { status, 0 }
    end
    if HELD[status] then return { status, 0 } end
    return invalid()
  elseif cmd == 'cancel' then
    if FINAL[status] then return { status, 0 } end
    if status == 'running' then
      -- its sub-tasks are cancelled now, not when it stops (its end cascades again, for
      -- any it starts meanwhile)
      if ctl ~= 'cancel' then reach('cancel') end
      redis.call('HSET', tk, 'ctl', 'cancel', 'ctlr', reason, 'ctlt', now)
      redis.call('SPUBLISH', control_channel, 'cancel ' .. id)
      return { status, 1 }
    end
    unqueue()
    finalize(Q, tk, id, 'cancelled', now, 'e', cancel_error(reason), reason)
    return { 'cancelled', 0 }
  end
  return redis.error_reply('SEGUE_INVALID_COMMAND ' .. cmd)
end
