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
from chatmem.store.quota_lua import _EXTEND, _QUOTA

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

# The OpenAI route's divergence (chat/reconcile.py), in one script: the session's stored
# messages are kept as a fork and the session then holds the client's version.
# KEYS[1..5] - session keys (scripts.py), KEYS[6] - the session's turn lock
# KEYS[7] - the fork's messages LIST, KEYS[8] - its meta HASH, KEYS[9] - its ids STRING
# ARGV[1] - session id, ARGV[2] - now, ms since the epoch, ARGV[3] - max messages kept
# ARGV[4] - how many messages the session held when read, ARGV[5] - the newest one's id
# ARGV[6] - the user's session cap, ARGV[7] - the user's byte cap (0: none)
# ARGV[8] - key prefix of the user's sessions, ARGV[9] - the fork's session id
# ARGV[10] - its title, ARGV[11], ARGV[12] - preview and its role of the stored version
# ARGV[13], ARGV[14] - preview and its role of the client's version
# ARGV[15..] - the client's version, oldest first, encoded (past max messages, the oldest
#   are left out, as an append's trim would)
# Like a clear then an append, the session keeps its seqs counting (the client's version
# gets new ones) and the user's totals count its messages and tokens once more.
# return nil if the session does not exist, {-1} while its turn lock is held, {-2} if it
#   does not hold what was read (length and newest id), {-3} past the session cap, {-4}
#   past the byte cap (nothing written in any case), else {1} (the fork made) or {0} (the
#   session held nothing: no fork)
DIVERGE_SESSION = (
    _EXTEND
    + _QUOTA
    + """
if redis.call('EXISTS', KEYS[2]) == 0 then return nil end
if redis.call('EXISTS', KEYS[6]) == 1 then return {-1} end
local items = redis.call('LRANGE', KEYS[1], 0, -1)
if #items ~= tonumber(ARGV[4]) then return {-2} end
if #items > 0 then
  local prefix = '{"i":"' .. ARGV[5] .. '"'
  if string.sub(items[1], 1, #prefix) ~= prefix then return {-2} end
end
local old_bytes, old_tokens = 0, 0
for _, item in ipairs(items) do
  old_bytes = old_bytes + #item
  old_tokens = old_tokens + cjson.decode(item).n
end
local first = math.max(15, #ARGV - tonumber(ARGV[3]) + 1)
local new_bytes, new_tokens, kept = 0, 0, 0
for i = first, #ARGV do
  new_bytes = new_bytes + #ARGV[i]
  new_tokens = new_tokens + cjson.decode(ARGV[i]).n
  kept = kept + 1
end
local forking = #items > 0
if forking and not session_allowed(KEYS[4], KEYS[5], ARGV[8], tonumber(ARGV[6])) then
  return {-3}
end
local fork_bytes = forking and old_bytes or 0
if not bytes_allowed(KEYS[4], KEYS[5], ARGV[8], fork_bytes + new_bytes - old_bytes,
                     tonumber(ARGV[7])) then
  return {-4}
end
local m = redis.call('HMGET', KEYS[2], 'uid', 'cid', 'window', 'ttl', 'seq')
local ttl_ms = tonumber(m[4]) * 1000
if forking then
  redis.call('DEL', KEYS[7], KEYS[8], KEYS[9])
  redis.call('HSET', KEYS[8], 'state', 'ACTIVE', 'created', ARGV[2], 'active', ARGV[2],
             'ttl', m[4], 'ptok', 0, 'ctok', 0, 'cost', 0, 'bytes', old_bytes,
             'uid', m[1], 'cid', m[2], 'title', ARGV[10], 'window', m[3] or 10,
             'fork', ARGV[1], 'forkmsg', ARGV[5], 'count', #items, 'tokens', old_tokens,
             'seq', #items, 'preview', ARGV[11], 'prole', ARGV[12])
  for _, item in ipairs(items) do redis.call('RPUSH', KEYS[7], item) end
  redis.call('PEXPIRE', KEYS[7], ttl_ms)
  redis.call('PEXPIRE', KEYS[8], ttl_ms)
  redis.call('ZADD', KEYS[4], ARGV[2], ARGV[9])
end
redis.call('DEL', KEYS[1], KEYS[3])
for i = first, #ARGV do redis.call('LPUSH', KEYS[1], ARGV[i]) end
redis.call('HSET', KEYS[2], 'count', kept, 'tokens', new_tokens, 'bytes', new_bytes,
           'seq', tonumber(m[5]) + kept, 'preview', ARGV[13], 'prole', ARGV[14],
           'active', ARGV[2], 'state', 'ACTIVE')
redis.call('HINCRBY', KEYS[5], 'bytes', fork_bytes + new_bytes - old_bytes)
redis.call('HINCRBY', KEYS[5], 'count', kept)
redis.call('HINCRBY', KEYS[5], 'tokens', new_tokens)
if kept > 0 then redis.call('PEXPIRE', KEYS[1], ttl_ms) end
redis.call('PEXPIRE', KEYS[2], ttl_ms)
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
extend(KEYS[4], ttl_ms)
extend(KEYS[5], ttl_ms)
return {forking and 1 or 0}
"""
)
