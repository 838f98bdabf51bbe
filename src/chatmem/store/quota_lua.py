"""Lua shared by every script that writes a user's sessions: the expiry of user-level
keys, and the per-user caps (SPEC §8) on sessions and stored bytes."""

from __future__ import annotations

# Shared Lua: extend a key's expiry to at least ttl_ms, never shorten it (user-level keys
# must outlive the longest-lived session of the user).
_EXTEND = """
local function extend(key, ttl_ms)
  local cur = redis.call('PTTL', key)
  if cur ~= -2 and cur < ttl_ms then redis.call('PEXPIRE', key, ttl_ms) end
end
"""

# Per-user caps (SPEC §8), shared by CREATE_SESSION and APPEND_MESSAGES; carry this block
# and its two call sites over to any script that adds sessions or messages.
# The user's totals HASH keeps 'bytes', the sum of the 'bytes' meta field of the user's
# sessions. A session that expires leaves its bytes (and its index entry) behind until
# `reconcile` walks the user's sessions, which happens only when a cap would be passed:
# under the caps a write costs a few O(1) calls more (an append: LLEN, HGET, HINCRBY and
# an LINDEX per message its trim drops), whatever the user holds.
_QUOTA = """
-- Drop expired sessions from the index; resets the totals' 'bytes' to the live sum.
-- return the number of live sessions, their bytes
local function reconcile(index, totals, prefix)
  local n, bytes = 0, 0
  for _, sid in ipairs(redis.call('ZRANGE', index, 0, -1)) do
    local meta = prefix .. sid .. ':h'
    local b = redis.call('HGET', meta, 'bytes')
    if b then
      n, bytes = n + 1, bytes + tonumber(b)
    elseif redis.call('EXISTS', meta) == 1 then
      n = n + 1  -- written before the quota existed: its size is not known
    else
      redis.call('ZREM', index, sid)
    end
  end
  if redis.call('EXISTS', totals) == 1 then redis.call('HSET', totals, 'bytes', bytes) end
  return n, bytes
end
-- true if the user may start one more session (max 0: no cap)
local function session_allowed(index, totals, prefix, max)
  if max <= 0 or redis.call('ZCARD', index) < max then return true end
  local n = reconcile(index, totals, prefix)
  return n < max
end
-- true if the user may store `add` more bytes (max 0: no cap)
local function bytes_allowed(index, totals, prefix, add, max)
  if max <= 0 or add <= 0 then return true end
  if tonumber(redis.call('HGET', totals, 'bytes') or '0') + add <= max then return true end
  local _, used = reconcile(index, totals, prefix)
  return used + add <= max
end
"""
