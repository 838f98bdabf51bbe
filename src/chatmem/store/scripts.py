"""Lua scripts: every multi-command change to a session is one of these, run atomically.

Each script's header gives its contract. KEYS follow `keys.session_keys` where a script
takes a session:
    KEYS[1] messages LIST (newest first), KEYS[2] meta HASH, KEYS[3] message ids STRING,
    KEYS[4] the user's session index ZSET, KEYS[5] the user's totals HASH.
Scripts that walk a user's sessions build those keys from a prefix passed in ARGV; that
is safe under Redis Cluster because every one of them carries the same `{u:<id>}` tag as
the declared keys, so they live in the slot the script runs on.

Meta fields: uid, cid, title, window, state, created and active (ms), ttl (s), count and
tokens (messages and their tokens since creation or the last clear), bytes (the encoded
size of the messages it stores now: the user's storage quota), seq (the seq of the
newest message ever appended: seqs are 1-based and never reused, so paging cursors stay
valid while old messages are trimmed or cleared), ptok, ctok, cost (usage), preview and
prole (the last message's preview and role).

The messages LIST is newest first so that reading the newest ones starts at its head and
costs the same at any length (Redis 6 walks a long list from the head to reach a tail
index). Scripts return messages newest first; the store reverses them.

Idempotency: KEYS[3] holds `,id,id,…,` for the newest min(stored, id window) messages, so
an append finds a repeated id with one plain substring search instead of reading the
list. Its invariant — it names exactly that many ids, the list's newest, in order — is
kept by every script that changes the list, given one max_messages for every process
sharing the Redis (which each trims to); if it is missing (it expired a moment before the
meta, or was lost) the append script rebuilds it from the list.
"""

from __future__ import annotations

from chatmem.store.memory_scripts import _CLEAR_SUMMARY, _KEEP_UNCOVERED
from chatmem.store.quota_lua import _EXTEND, _QUOTA
from chatmem.store.window_lua import _WINDOW_JSON

# KEYS[1..5] - session keys (see module docstring)
# ARGV[1] - session id
# ARGV[2] - now, ms since the epoch
# ARGV[3] - ttl, seconds
# ARGV[4] - greeting, encoded message ("" for none)
# ARGV[5] - greeting's id, ARGV[6] - its token count, ARGV[7] - its preview text
# ARGV[8] - the user's session cap, ARGV[9] - the user's byte cap (0: none)
# ARGV[10] - key prefix of the user's sessions ("cm:{u:<id>}:s:"), for the caps
# ARGV[11..] - meta field, value pairs (uid, cid, title, window)
# return {1 if created else 0 (it existed and is left as it was), meta as a flat list,
#         pttl ms, stored length}, or {-1} past the session cap, {-2} past the byte
#         cap (nothing written)
CREATE_SESSION = (
    _EXTEND
    + _QUOTA
    + """
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {0, redis.call('HGETALL', KEYS[2]), redis.call('PTTL', KEYS[2]),
          redis.call('LLEN', KEYS[1])}
end
-- Quota: refused before anything is written.
if not session_allowed(KEYS[4], KEYS[5], ARGV[10], tonumber(ARGV[8])) then return {-1} end
if not bytes_allowed(KEYS[4], KEYS[5], ARGV[10], #ARGV[4], tonumber(ARGV[9])) then
  return {-2}
end
local now, ttl_ms = tonumber(ARGV[2]), tonumber(ARGV[3]) * 1000
local fields = {'state', 'ACTIVE', 'created', ARGV[2], 'active', ARGV[2], 'ttl', ARGV[3],
                'count', 0, 'tokens', 0, 'seq', 0, 'ptok', 0, 'ctok', 0, 'cost', 0,
                'preview', '', 'prole', '', 'bytes', #ARGV[4]}
for i = 11, #ARGV, 2 do
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
end
redis.call('HSET', KEYS[2], unpack(fields))
-- A session id may be reused after a delete or expiry: nothing of the old one survives.
redis.call('DEL', KEYS[1], KEYS[3])
local stored = 0
if ARGV[4] ~= '' then
  local tokens = tonumber(ARGV[6])
  redis.call('LPUSH', KEYS[1], ARGV[4])
  redis.call('SET', KEYS[3], ',' .. ARGV[5] .. ',', 'PX', ttl_ms)
  redis.call('PEXPIRE', KEYS[1], ttl_ms)
  redis.call('HSET', KEYS[2], 'count', 1, 'tokens', tokens, 'seq', 1, 'preview', ARGV[7],
             'prole', 'assistant')
  redis.call('HINCRBY', KEYS[5], 'count', 1)
  redis.call('HINCRBY', KEYS[5], 'tokens', tokens)
  redis.call('HINCRBY', KEYS[5], 'bytes', #ARGV[4])
  stored = 1
end
redis.call('PEXPIRE', KEYS[2], ttl_ms)
redis.call('ZADD', KEYS[4], now, ARGV[1])
redis.call('HSETNX', KEYS[5], 'created', ARGV[2])
extend(KEYS[4], ttl_ms)
extend(KEYS[5], ttl_ms)
return {1, redis.call('HGETALL', KEYS[2]), ttl_ms, stored}
"""
)

# KEYS[1..5] - session keys
# ARGV[1] - session id
# ARGV[2] - now, ms since the epoch
# ARGV[3] - max messages kept (older ones are trimmed)
# ARGV[4] - id window: how many of the newest messages' ids are remembered (<= ARGV[3])
# ARGV[5] - after the write, return the meta and this many newest messages (-1: no read)
# ARGV[6] - preview text, ARGV[7] - preview role (of the last message given)
# ARGV[8] - prompt tokens, ARGV[9] - completion tokens, ARGV[10] - cost (usage to add;
#           skipped when every message given was a duplicate: a retry pays once)
# ARGV[11] - the user's byte cap (0: none), ARGV[12] - key prefix of the user's sessions
# ARGV[13..] - triples: message id, encoded message, token count
# return nil if the session does not exist (never created, deleted or expired), {-1} if
#   the new messages would pass the user's byte cap (nothing written), else
#   {appended, {duplicate ids}, stored length, seq of the newest message}
#   followed, when ARGV[5] >= 0, by: meta as a flat list, pttl ms,
#   the newest messages as one JSON array, oldest first (window_lua.py)
# This runs on every turn: it reads what it needs with one HMGET and writes the meta with
# one HSET, because each redis.call costs more than the work most of them do.
APPEND_MESSAGES = (
    _EXTEND
    + _QUOTA
    + _KEEP_UNCOVERED
    + _WINDOW_JSON
    + """
local m = redis.call('HMGET', KEYS[2], 'ttl', 'seq', 'count', 'tokens', 'ptok', 'ctok',
                     'bytes')
if not m[1] then return nil end
local ttl_ms = tonumber(m[1]) * 1000
local max_kept, id_window = tonumber(ARGV[3]), tonumber(ARGV[4])
local ids = redis.call('GET', KEYS[3])
if not ids then
  ids = ','
  local items = redis.call('LRANGE', KEYS[1], 0, id_window - 1)
  for i = #items, 1, -1 do
    ids = ids .. (string.match(items[i], '^{"i":"([^"]*)"') or '') .. ','
  end
end
local appended, tokens, dups, items, last_new = 0, 0, {}, {}, false
for i = 13, #ARGV, 3 do
  local id = ARGV[i]
  if string.find(ids, ',' .. id .. ',', 1, true) then
    dups[#dups + 1] = id
    last_new = false
  else
    ids = ids .. id .. ','
    items[#items + 1] = ARGV[i + 1]
    tokens = tokens + tonumber(ARGV[i + 2])
    appended = appended + 1
    last_new = true
  end
end
-- Quota: the bytes this write adds, less those of the messages its trim drops (the
-- oldest stored ones, then, if it brings more than max_kept, its own oldest).
local added, over, lost = 0, 0, 0
if appended > 0 then
  for _, item in ipairs(items) do added = added + #item end
  local len = redis.call('LLEN', KEYS[1])
  over, lost = trim_count(len + appended, max_kept)  -- memory_scripts.py
  -- LINDEX from the tail: the cost is that of what is dropped, not of the list.
  for j = 1, math.min(over, len) do added = added - #redis.call('LINDEX', KEYS[1], -j) end
  for j = 1, over - len do added = added - #items[j] end
  if not bytes_allowed(KEYS[4], KEYS[5], ARGV[12], added, tonumber(ARGV[11])) then
    return {-1}
  end
end
local seq, stored = tonumber(m[2]), 0
local fields = {}
if appended > 0 then
  stored = redis.call('LPUSH', KEYS[1], unpack(items))
  local before = stored - appended
  if over > 0 then
    redis.call('LTRIM', KEYS[1], 0, stored - over - 1)
    stored = stored - over
    trimmed(over, lost)
  end
  -- Drop the ids of trimmed messages (and those beyond the id window) from the front.
  local excess = math.min(before, id_window) + appended - math.min(stored, id_window)
  if excess > 0 then
    local pos = 1
    for _ = 1, excess do pos = string.find(ids, ',', pos + 1, true) end
    ids = string.sub(ids, pos)
  end
  seq = seq + appended
  fields = {'seq', seq, 'count', tonumber(m[3]) + appended, 'tokens', tonumber(m[4]) + tokens,
            'active', ARGV[2], 'state', 'ACTIVE',
            'bytes', math.max(0, (tonumber(m[7]) or 0) + added)}
  if last_new then
    for _, v in ipairs({'preview', ARGV[6], 'prole', ARGV[7]}) do fields[#fields + 1] = v end
  end
  redis.call('HINCRBY', KEYS[5], 'count', appended)
  redis.call('HINCRBY', KEYS[5], 'tokens', tokens)
  redis.call('HINCRBY', KEYS[5], 'bytes', added)
else
  stored = redis.call('LLEN', KEYS[1])
end
if appended > 0 or #ARGV < 13 then
  local ptok, ctok, cost = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
  if ptok > 0 or ctok > 0 or cost > 0 then
    for _, v in ipairs({'ptok', tonumber(m[5]) + ptok, 'ctok', tonumber(m[6]) + ctok}) do
      fields[#fields + 1] = v
    end
    redis.call('HINCRBYFLOAT', KEYS[2], 'cost', ARGV[10])
    redis.call('HINCRBY', KEYS[5], 'ptok', ptok)
    redis.call('HINCRBY', KEYS[5], 'ctok', ctok)
    redis.call('HINCRBYFLOAT', KEYS[5], 'cost', ARGV[10])
  end
end
if #fields > 0 then redis.call('HSET', KEYS[2], unpack(fields)) end
if stored > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl_ms)
  redis.call('SET', KEYS[3], ids, 'PX', ttl_ms)
end
redis.call('PEXPIRE', KEYS[2], ttl_ms)
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
extend(KEYS[4], ttl_ms)
extend(KEYS[5], ttl_ms)
local n = tonumber(ARGV[5])
if n < 0 then return {appended, dups, stored, seq} end
local msgs = {}
if n > 0 and stored > 0 then msgs = redis.call('LRANGE', KEYS[1], 0, n - 1) end
return {appended, dups, stored, seq, redis.call('HGETALL', KEYS[2]), ttl_ms,
        as_json_array(msgs)}
"""
)

# KEYS[1] - messages LIST, KEYS[2] - meta HASH
# ARGV[1] - how many messages (0: meta only)
# ARGV[2] - return only messages whose seq is below this (0: the newest)
# The list is newest first: the message at index i has seq = meta.seq - i.
# return nil if the session does not exist, else
#   {meta as a flat list, pttl ms, stored length, seq of the oldest message returned,
#    the messages as one JSON array, oldest first (window_lua.py)}
READ_SESSION = (
    _WINDOW_JSON
    + """
local meta = redis.call('HGETALL', KEYS[2])
if #meta == 0 then return nil end
local n, before = tonumber(ARGV[1]), tonumber(ARGV[2])
local stored = redis.call('LLEN', KEYS[1])
local top = tonumber(redis.call('HGET', KEYS[2], 'seq'))
local first = 0
if before > 0 then first = math.max(0, top - before + 1) end
local last = math.min(stored, first + n) - 1
local msgs = {}
if n > 0 and last >= first then msgs = redis.call('LRANGE', KEYS[1], first, last) end
return {meta, redis.call('PTTL', KEYS[2]), stored, top - last, as_json_array(msgs)}
"""
)

# KEYS[1..5] - session keys
# ARGV[1] - now, ms since the epoch
# ARGV[2..] - meta field, value pairs to set; a 'ttl' field (seconds) re-applies the expiry
# Every key of the session gets its (possibly new) ttl: an update is a write.
# return nil if the session does not exist, else {meta as a flat list, pttl ms, stored}
UPDATE_SESSION = (
    _EXTEND
    + """
if redis.call('EXISTS', KEYS[2]) == 0 then return nil end
local fields = {}
for i = 2, #ARGV, 2 do
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
end
if #fields > 0 then redis.call('HSET', KEYS[2], unpack(fields)) end
local ttl_ms = tonumber(redis.call('HGET', KEYS[2], 'ttl')) * 1000
redis.call('PEXPIRE', KEYS[1], ttl_ms)
redis.call('PEXPIRE', KEYS[2], ttl_ms)
redis.call('PEXPIRE', KEYS[3], ttl_ms)
extend(KEYS[4], ttl_ms)
extend(KEYS[5], ttl_ms)
return {redis.call('HGETALL', KEYS[2]), ttl_ms, redis.call('LLEN', KEYS[1])}
"""
)

# KEYS[1..5] - session keys
# ARGV[1] - session id
# ARGV[2] - now, ms since the epoch
# The messages go and the session's count, tokens and bytes restart at 0; seq, usage and
# the user's totals stay (seqs are never reused; usage is what was spent), but for the
# bytes, which were freed.
# return 0 if the session does not exist, else 1
CLEAR_SESSION = (
    _EXTEND
    + _CLEAR_SUMMARY
    + """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local freed = tonumber(redis.call('HGET', KEYS[2], 'bytes') or '0')
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('HSET', KEYS[2], 'count', 0, 'tokens', 0, 'preview', '', 'prole', '',
           'active', ARGV[2], 'bytes', 0)
summary_cleared()  -- memory_scripts.py
if freed > 0 then redis.call('HINCRBY', KEYS[5], 'bytes', -freed) end
local ttl_ms = tonumber(redis.call('HGET', KEYS[2], 'ttl')) * 1000
redis.call('PEXPIRE', KEYS[2], ttl_ms)
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
extend(KEYS[4], ttl_ms)
extend(KEYS[5], ttl_ms)
return 1
"""
)

# KEYS[1..5] - session keys, KEYS[6] - the session's turn lock, KEYS[7] - its stop flag,
# KEYS[8] - its generation event stream
# ARGV[1] - session id
# The session's bytes leave the user's totals.
# return 1 if the session existed, else 0
DELETE_SESSION = """
local existed = redis.call('EXISTS', KEYS[2])
local freed = tonumber(redis.call('HGET', KEYS[2], 'bytes') or '0')
if freed > 0 and redis.call('EXISTS', KEYS[5]) == 1 then
  redis.call('HINCRBY', KEYS[5], 'bytes', -freed)
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[6], KEYS[7], KEYS[8])
redis.call('ZREM', KEYS[4], ARGV[1])
return existed
"""

# KEYS[1] - the user's session index ZSET
# ARGV[1] - key prefix of the user's sessions ("cm:{u:<id>}:s:")
# ARGV[2] - at most this many sessions, most recently active first
# Members whose meta has expired are removed from the index here.
# return {{session id, pttl ms, stored length, meta as a flat list}, ...}
LIST_SESSIONS = """
local out = {}
local limit = tonumber(ARGV[2])
for _, sid in ipairs(redis.call('ZREVRANGE', KEYS[1], 0, -1)) do
  local meta = redis.call('HGETALL', ARGV[1] .. sid .. ':h')
  if #meta == 0 then
    redis.call('ZREM', KEYS[1], sid)
  elseif #out < limit then
    out[#out + 1] = {sid, redis.call('PTTL', ARGV[1] .. sid .. ':h'),
                     redis.call('LLEN', ARGV[1] .. sid .. ':m'), meta}
  end
end
return out
"""

# KEYS[1] - the user's session index ZSET, KEYS[2] - the user's totals HASH
# ARGV[1] - key prefix of the user's sessions ("cm:{u:<id>}:s:")
# Members whose meta has expired are removed from the index here, and the totals'
# 'bytes' recounted from the live sessions.
# return {totals as a flat list, number of live sessions}
USER_TOTALS = (
    _QUOTA
    + """
local n = reconcile(KEYS[1], KEYS[2], ARGV[1])
return {redis.call('HGETALL', KEYS[2]), n}
"""
)

# KEYS[1] - the user's session index ZSET, KEYS[2] - the user's totals HASH
# ARGV[1] - key prefix of the user's sessions ("cm:{u:<id>}:s:")
# Every key of every indexed session goes (messages, meta, ids, turn lock, stop flag,
# event stream).
# return the number of sessions deleted
DELETE_USER = """
local sids = redis.call('ZRANGE', KEYS[1], 0, -1)
for _, sid in ipairs(sids) do
  local p = ARGV[1] .. sid
  redis.call('DEL', p .. ':m', p .. ':h', p .. ':i', p .. ':lock', p .. ':stop', p .. ':ev')
end
redis.call('DEL', KEYS[1], KEYS[2])
return #sids
"""
