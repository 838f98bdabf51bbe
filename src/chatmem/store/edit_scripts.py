"""Lua scripts of editing a conversation (SPEC §3b): one script per edit, each refusing
while the session's turn lock is held, so an edit never lands inside a running turn.

The caller reads the session first and passes the messages as they are stored (their
encoded form); a script changes nothing unless they are still stored so (compare and
swap): an edit computed from a stale read is refused, never applied to another message.
Keys are laid out as in scripts.py. A deleted message leaves the id index (KEYS[3]) to be
rebuilt from the list by the next append (its invariant names the newest ids in order).
"""

from __future__ import annotations

from chatmem.store.memory_scripts import _MARK_STALE
from chatmem.store.scripts import _EXTEND, _QUOTA

# KEYS[1..5] - session keys (scripts.py), KEYS[6] - the session's turn lock
# ARGV[1] - session id, ARGV[2] - now, ms since the epoch
# ARGV[3] - the message as stored (encoded), ARGV[4] - its replacement ("" deletes it)
# ARGV[5] - token difference (new - old)
# ARGV[6] - preview, ARGV[7] - preview role: set when the message is the newest one
# ARGV[8] - the user's byte cap (0: none), ARGV[9] - key prefix of the user's sessions
# return nil if the session does not exist, {-1} while the turn lock is held, {-2} if the
#   message is not stored as given, {-3} past the byte cap (nothing written), else {index
#   of the message, newest first}
EDIT_MESSAGE = (
    _EXTEND
    + _QUOTA
    + _MARK_STALE
    + """
if redis.call('EXISTS', KEYS[2]) == 0 then return nil end
if redis.call('EXISTS', KEYS[6]) == 1 then return {-1} end
local items = redis.call('LRANGE', KEYS[1], 0, -1)
local index = nil
for i, item in ipairs(items) do
  if item == ARGV[3] then index = i - 1; break end
end
if not index then return {-2} end
local added = #ARGV[4] - #ARGV[3]
if not bytes_allowed(KEYS[4], KEYS[5], ARGV[9], added, tonumber(ARGV[8])) then
  return {-3}
end
summary_touched(#items - 1 - index, ARGV[4] == '')  -- memory_scripts.py
if ARGV[4] == '' then
  -- '' is never a stored message: mark the one place, then remove that mark.
  redis.call('LSET', KEYS[1], index, '')
  redis.call('LREM', KEYS[1], 1, '')
  redis.call('HINCRBY', KEYS[2], 'count', -1)
  redis.call('DEL', KEYS[3])
else
  redis.call('LSET', KEYS[1], index, ARGV[4])
end
redis.call('HINCRBY', KEYS[2], 'tokens', tonumber(ARGV[5]))
redis.call('HINCRBY', KEYS[2], 'bytes', added)
redis.call('HINCRBY', KEYS[5], 'bytes', added)
if index == 0 then redis.call('HSET', KEYS[2], 'preview', ARGV[6], 'prole', ARGV[7]) end
redis.call('HSET', KEYS[2], 'active', ARGV[2])
local ttl_ms = tonumber(redis.call('HGET', KEYS[2], 'ttl')) * 1000
redis.call('PEXPIRE', KEYS[1], ttl_ms)
redis.call('PEXPIRE', KEYS[2], ttl_ms)
redis.call('PEXPIRE', KEYS[3], ttl_ms)
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
extend(KEYS[4], ttl_ms)
extend(KEYS[5], ttl_ms)
return {index}
"""
)

# KEYS[1] - the source's messages LIST, KEYS[2] - its meta HASH, KEYS[3] - its turn lock
# KEYS[4] - the fork's messages LIST, KEYS[5] - its meta HASH, KEYS[6] - its ids STRING
# KEYS[7] - the user's session index ZSET, KEYS[8] - the user's totals HASH
# ARGV[1] - the fork's session id, ARGV[2] - now, ms since the epoch, ARGV[3] - ttl, s
# ARGV[4] - the user's session cap, ARGV[5] - the user's byte cap (0: none)
# ARGV[6] - key prefix of the user's sessions, ARGV[7] - k, how many messages are copied
# ARGV[8..7+k] - the copies, oldest first, as stored in the source (the last one is the
#   message forked at); they must be stored there, contiguous, in that order
# ARGV[8+k..] - meta field, value pairs (uid, cid, title, window, fork, forkmsg, count,
#   tokens, seq, preview, prole)
# return nil if the source does not exist, {-1} while its turn lock is held, {-2} if the
#   copies are not stored as given, {-3} past the session cap, {-4} past the byte cap,
#   else {meta as a flat list, pttl ms, stored length}
FORK_SESSION = (
    _EXTEND
    + _QUOTA
    + """
if redis.call('EXISTS', KEYS[2]) == 0 then return nil end
if redis.call('EXISTS', KEYS[3]) == 1 then return {-1} end
local k = tonumber(ARGV[7])
local items = redis.call('LRANGE', KEYS[1], 0, -1)
local at = nil
for i, item in ipairs(items) do
  if item == ARGV[7 + k] then at = i; break end
end
if not at then return {-2} end
local bytes = 0
for j = 0, k - 1 do
  if items[at + j] ~= ARGV[7 + k - j] then return {-2} end
  bytes = bytes + #ARGV[7 + k - j]
end
if not session_allowed(KEYS[7], KEYS[8], ARGV[6], tonumber(ARGV[4])) then return {-3} end
if not bytes_allowed(KEYS[7], KEYS[8], ARGV[6], bytes, tonumber(ARGV[5])) then
  return {-4}
end
local ttl_ms = tonumber(ARGV[3]) * 1000
redis.call('DEL', KEYS[4], KEYS[5], KEYS[6])
local fields = {'state', 'ACTIVE', 'created', ARGV[2], 'active', ARGV[2], 'ttl', ARGV[3],
                'ptok', 0, 'ctok', 0, 'cost', 0, 'bytes', bytes}
for i = 8 + k, #ARGV, 2 do
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
end
redis.call('HSET', KEYS[5], unpack(fields))
for j = 8, 7 + k do redis.call('LPUSH', KEYS[4], ARGV[j]) end
redis.call('PEXPIRE', KEYS[4], ttl_ms)
redis.call('PEXPIRE', KEYS[5], ttl_ms)
redis.call('HINCRBY', KEYS[8], 'bytes', bytes)
redis.call('ZADD', KEYS[7], ARGV[2], ARGV[1])
extend(KEYS[7], ttl_ms)
extend(KEYS[8], ttl_ms)
return {redis.call('HGETALL', KEYS[5]), ttl_ms, redis.call('LLEN', KEYS[4])}
"""
)
