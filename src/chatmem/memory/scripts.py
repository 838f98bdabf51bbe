"""Lua scripts: every multi-command change to a session is one of these, run atomically.

Each script's header gives its contract. KEYS follow `keys.session_keys` where a script
takes a session:
    KEYS[1] messages LIST (oldest first), KEYS[2] meta HASH,
    KEYS[3] the user's session index ZSET, KEYS[4] the user's totals HASH.
Scripts that walk a user's sessions build those keys from a prefix passed in ARGV; that
is safe under Redis Cluster because every one of them carries the same `{u:<id>}` tag as
the declared keys, so they live in the slot the script runs on.

Messages are stored as compact JSON whose first member is the id (`{"i":"<id>",…`); the
append script reads ids by that prefix to refuse a message id it already holds.
"""

from __future__ import annotations

# Shared Lua: extend a key's expiry to at least ttl_ms, never shorten it (user-level keys
# must outlive the longest-lived session of the user).
_EXTEND = """
local function extend(key, ttl_ms)
  local cur = redis.call('PTTL', key)
  if cur ~= -2 and cur < ttl_ms then redis.call('PEXPIRE', key, ttl_ms) end
end
"""

# KEYS[1..4] - session keys (see module docstring)
# ARGV[1] - session id
# ARGV[2] - now, ms since the epoch
# ARGV[3] - ttl, seconds
# ARGV[4] - "create" (fail if it exists) or "ensure" (keep an existing one)
# ARGV[5] - greeting, encoded message ("" for none)
# ARGV[6] - greeting's token count
# ARGV[7] - greeting's preview text
# ARGV[8..] - meta field, value pairs (uid, cid, title, window, ...)
# return 1 if created, 0 if it existed already
CREATE_SESSION = (
    _EXTEND
    + """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local now, ttl_ms = tonumber(ARGV[2]), tonumber(ARGV[3]) * 1000
local fields = {'state', 'ACTIVE', 'created', ARGV[2], 'active', ARGV[2], 'ttl', ARGV[3],
                'count', 0, 'tokens', 0, 'ptok', 0, 'ctok', 0, 'cost', 0,
                'preview', '', 'prole', ''}
for i = 8, #ARGV, 2 do
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
end
redis.call('HSET', KEYS[2], unpack(fields))
if ARGV[5] ~= '' then
  local tokens = tonumber(ARGV[6])
  redis.call('RPUSH', KEYS[1], ARGV[5])
  redis.call('PEXPIRE', KEYS[1], ttl_ms)
  redis.call('HSET', KEYS[2], 'count', 1, 'tokens', tokens, 'preview', ARGV[7],
             'prole', 'assistant')
  redis.call('HINCRBY', KEYS[4], 'count', 1)
  redis.call('HINCRBY', KEYS[4], 'tokens', tokens)
end
redis.call('PEXPIRE', KEYS[2], ttl_ms)
redis.call('ZADD', KEYS[3], now, ARGV[1])
redis.call('HSETNX', KEYS[4], 'created', ARGV[2])
extend(KEYS[3], ttl_ms)
extend(KEYS[4], ttl_ms)
return 1
"""
)

# KEYS[1..4] - session keys
# ARGV[1] - session id
# ARGV[2] - now, ms since the epoch
# ARGV[3] - max messages kept (older ones are trimmed)
# ARGV[4] - after the write, return the meta and this many newest messages (-1: return no read)
# ARGV[5] - preview text, ARGV[6] - preview role (of the last message appended)
# ARGV[7] - prompt tokens, ARGV[8] - completion tokens, ARGV[9] - cost (usage to add)
# ARGV[10..] - triples: message id, encoded message, token count
# return nil if the session does not exist (never created, deleted or expired), else
#   {appended, {duplicate ids}, stored length, meta as a flat list or {}, {messages}, pttl ms}
APPEND_MESSAGES = (
    _EXTEND
    + """
if redis.call('EXISTS', KEYS[2]) == 0 then return nil end
local held = {}
if redis.call('LLEN', KEYS[1]) > 0 then
  for _, item in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
    local id = string.match(item, '^{"i":"([^"]*)"')
    if id then held[id] = true end
  end
end
local appended, tokens, dups, items = 0, 0, {}, {}
for i = 10, #ARGV, 3 do
  local id = ARGV[i]
  if held[id] then
    dups[#dups + 1] = id
  else
    held[id] = true
    items[#items + 1] = ARGV[i + 1]
    tokens = tokens + tonumber(ARGV[i + 2])
    appended = appended + 1
  end
end
local ttl_ms = tonumber(redis.call('HGET', KEYS[2], 'ttl')) * 1000
if appended > 0 then
  redis.call('RPUSH', KEYS[1], unpack(items))
  redis.call('LTRIM', KEYS[1], -tonumber(ARGV[3]), -1)
  redis.call('HINCRBY', KEYS[2], 'count', appended)
  redis.call('HINCRBY', KEYS[2], 'tokens', tokens)
  redis.call('HSET', KEYS[2], 'active', ARGV[2], 'state', 'ACTIVE',
             'preview', ARGV[5], 'prole', ARGV[6])
  redis.call('HINCRBY', KEYS[4], 'count', appended)
  redis.call('HINCRBY', KEYS[4], 'tokens', tokens)
end
local ptok, ctok, cost = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
if ptok > 0 or ctok > 0 or cost > 0 then
  redis.call('HINCRBY', KEYS[2], 'ptok', ptok)
  redis.call('HINCRBY', KEYS[2], 'ctok', ctok)
  redis.call('HINCRBYFLOAT', KEYS[2], 'cost', ARGV[9])
  redis.call('HINCRBY', KEYS[4], 'ptok', ptok)
  redis.call('HINCRBY', KEYS[4], 'ctok', ctok)
  redis.call('HINCRBYFLOAT', KEYS[4], 'cost', ARGV[9])
end
redis.call('PEXPIRE', KEYS[1], ttl_ms)
redis.call('PEXPIRE', KEYS[2], ttl_ms)
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
extend(KEYS[3], ttl_ms)
extend(KEYS[4], ttl_ms)
local stored = redis.call('LLEN', KEYS[1])
local n = tonumber(ARGV[4])
local meta, msgs = {}, {}
if n >= 0 then
  meta = redis.call('HGETALL', KEYS[2])
  if n > 0 then msgs = redis.call('LRANGE', KEYS[1], -n, -1) end
end
return {appended, dups, stored, meta, msgs, ttl_ms}
"""
)

# KEYS[1] - messages LIST, KEYS[2] - meta HASH
# ARGV[1] - how many messages (0: meta only)
# ARGV[2] - return only messages whose seq is below this (0: the newest)
# Seqs are 1-based positions since the session began: the first stored message has
# seq = count - stored + 1, so a cursor stays valid while older messages are trimmed.
# return nil if the session does not exist, else
#   {meta as a flat list, pttl ms, stored length, seq of the first message returned, {messages}}
READ_SESSION = """
local meta = redis.call('HGETALL', KEYS[2])
if #meta == 0 then return nil end
local n, before = tonumber(ARGV[1]), tonumber(ARGV[2])
local stored = redis.call('LLEN', KEYS[1])
local count = tonumber(redis.call('HGET', KEYS[2], 'count'))
local first_seq = count - stored + 1
local stop = stored - 1
if before > 0 then stop = math.min(stop, before - first_seq - 1) end
local start = math.max(0, stop - n + 1)
local msgs = {}
if n > 0 and stop >= 0 then msgs = redis.call('LRANGE', KEYS[1], start, stop) end
return {meta, redis.call('PTTL', KEYS[2]), stored, first_seq + start, msgs}
"""

# KEYS[1..4] - session keys
# ARGV[1] - now, ms since the epoch
# ARGV[2..] - meta field, value pairs to set; a 'ttl' field (seconds) re-applies the expiry
# return 0 if the session does not exist, else 1
UPDATE_SESSION = (
    _EXTEND
    + """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local fields = {}
for i = 2, #ARGV, 2 do
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
end
if #fields > 0 then redis.call('HSET', KEYS[2], unpack(fields)) end
local ttl_ms = tonumber(redis.call('HGET', KEYS[2], 'ttl')) * 1000
redis.call('PEXPIRE', KEYS[1], ttl_ms)
redis.call('PEXPIRE', KEYS[2], ttl_ms)
extend(KEYS[3], ttl_ms)
extend(KEYS[4], ttl_ms)
return 1
"""
)

# KEYS[1..4] - session keys
# ARGV[1] - now, ms since the epoch
# return 0 if the session does not exist, else 1 (its messages are gone, the session stays)
CLEAR_SESSION = """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local stored = redis.call('LLEN', KEYS[1])
redis.call('DEL', KEYS[1])
-- Keep seqs monotonic: count stays, so a cursor from before the clear finds nothing.
redis.call('HSET', KEYS[2], 'preview', '', 'prole', '', 'active', ARGV[1])
redis.call('PEXPIRE', KEYS[2], tonumber(redis.call('HGET', KEYS[2], 'ttl')) * 1000)
return 1
"""

# KEYS[1..4] - session keys
# ARGV[1] - session id
# return 1 if the session existed, else 0
DELETE_SESSION = """
local existed = redis.call('EXISTS', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
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
# return the number of sessions deleted
DELETE_USER = """
local sids = redis.call('ZRANGE', KEYS[1], 0, -1)
for _, sid in ipairs(sids) do
  redis.call('DEL', ARGV[1] .. sid .. ':m', ARGV[1] .. sid .. ':h', ARGV[1] .. sid .. ':lock')
end
redis.call('DEL', KEYS[1], KEYS[2])
return #sids
"""
