"""Lua scripts of a turn: begin, finish and the per-tick lock renewal (SPEC §3.2, §3.7).

A turn costs two round trips: BEGIN_TURN (rate limit, the session's turn lock, the
per-user generation cap, the idempotency check, the user message appended and the
context read) and FINISH_TURN (the reply, its usage, session and user totals, the lock
released, the generation's event stream ended). While a generation runs, its process
renews the lock with RENEW_TURN, pipelined with the stop poll and the stream appends of
all its other generations (chat/inflight.py).
KEYS of BEGIN_TURN and FINISH_TURN (`keys.turn_keys`):
    KEYS[1] messages LIST (newest first), KEYS[2] meta HASH, KEYS[3] message ids STRING,
    KEYS[4] the user's session index ZSET, KEYS[5] the user's totals HASH,
    KEYS[6] the session's turn lock STRING (value: the holder's token),
    KEYS[7] the session's generation event STREAM, KEYS[8] the user's turn rate ZSET
    (sliding window: member = generation id, score = ms), KEYS[9] the user's running
    generations ZSET (member = generation id, score = lock expiry ms).
The first five are laid out as in scripts.py (same meta fields, same id index
invariant); the append below is that of APPEND_MESSAGES for one message.

Event stream entries (field `t`): `s` start {g generation id, r reply id, k lock token,
q the user message's seq}; `d` delta {o offset of its first character, x text};
`e` end {p the JSON payload of the final `done` or `error` event}. A stream whose last
entry is not `e` while the lock is free belongs to a generation whose process died."""

from __future__ import annotations

from chatmem.store.memory_scripts import _KEEP_UNCOVERED
from chatmem.store.scripts import _EXTEND, _QUOTA

# Shared Lua. `append_one` appends one message to the session in KEYS[1..5] (skipped if
# its id is already there) and returns appended (0/1), the newest seq and the ttl in ms;
# appended is -1, and nothing is written, when the user's byte cap `max_bytes` (0: none;
# a reply passes 0: its turn was admitted) would be passed. The session's and the user's
# 'bytes' follow what is stored, as in APPEND_MESSAGES (scripts.py, `_QUOTA`). Its trim
# keeps what the session's summary does not cover yet (memory_scripts.py).
# `find_id` gives the list index (newest first, 0-based) of a message id, or nil.
_TURN_LUA = (
    _EXTEND
    + _QUOTA
    + _KEEP_UNCOVERED
    + """
local function load_ids(id_window)
  local ids = redis.call('GET', KEYS[3])
  if ids then return ids end
  ids = ','
  local items = redis.call('LRANGE', KEYS[1], 0, id_window - 1)
  for i = #items, 1, -1 do
    ids = ids .. (string.match(items[i], '^{"i":"([^"]*)"') or '') .. ','
  end
  return ids
end

local function find_id(ids, id)
  local s = string.find(ids, ',' .. id .. ',', 1, true)
  if not s then return nil end
  local _, k = string.gsub(string.sub(ids, 1, s), ',', ',')
  local _, n = string.gsub(ids, ',', ',')
  return (n - 1) - k
end

-- The ordinal of a stored message (its turn's begin, store/codec.py); 0 for none.
local function ordinal_of(item)
  return tonumber(string.match(item, '^{"i":"[^"]*","r":"%a","o":(%d+)')) or 0
end

-- Put `item` (ordinal `o`) where its turn belongs: newer than every message of an
-- earlier or equal ordinal, older than every later one. Returns the list's length and
-- whether it went to the head (if not, the id index, in list order, is rebuilt).
local function place(item, o)
  local head = redis.call('LINDEX', KEYS[1], 0)
  if o == 0 or not head or ordinal_of(head) <= o then
    return redis.call('LPUSH', KEYS[1], item), true
  end
  local items = redis.call('LRANGE', KEYS[1], 1, -1)
  for i = 1, #items do
    if ordinal_of(items[i]) <= o then
      return redis.call('LINSERT', KEYS[1], 'BEFORE', items[i], item), false
    end
  end
  return redis.call('RPUSH', KEYS[1], item), false
end

local function append_one(sid, now, max_kept, id_window, id, item, ntok, preview, role,
                          ptok, ctok, cost, max_bytes, prefix, ordinal)
  local m = redis.call('HMGET', KEYS[2], 'ttl', 'seq', 'count', 'tokens', 'ptok', 'ctok',
                       'bytes')
  local ttl_ms = tonumber(m[1]) * 1000
  local ids = load_ids(id_window)
  local seq, appended = tonumber(m[2]), 0
  local fields = {'active', now}
  if id ~= '' and not string.find(ids, ',' .. id .. ',', 1, true) then
    -- Quota: the bytes added, less those of the oldest message the trim drops.
    local added = #item
    local drop, lost = trim_count(redis.call('LLEN', KEYS[1]) + 1, max_kept)
    for j = 1, drop do added = added - #(redis.call('LINDEX', KEYS[1], -j) or '') end
    if not bytes_allowed(KEYS[4], KEYS[5], prefix, added, max_bytes) then
      return -1, seq, ttl_ms
    end
    appended = 1
    local stored, at_head = place(item, ordinal or 0)
    local before = stored - 1
    if drop > 0 then
      redis.call('LTRIM', KEYS[1], 0, stored - drop - 1)
      stored = stored - drop
      trimmed(drop, lost)
    end
    if at_head then
      ids = ids .. id .. ','
      local excess = math.min(before, id_window) + 1 - math.min(stored, id_window)
      if excess > 0 then
        local pos = 1
        for _ = 1, excess do pos = string.find(ids, ',', pos + 1, true) end
        ids = string.sub(ids, pos)
      end
    else
      ids = nil
    end
    seq = seq + 1
    local fs = {'seq', seq, 'count', tonumber(m[3]) + 1, 'tokens', tonumber(m[4]) + ntok,
                'state', 'ACTIVE', 'bytes', math.max(0, (tonumber(m[7]) or 0) + added)}
    if at_head then
      for _, v in ipairs({'preview', preview, 'prole', role}) do fs[#fs + 1] = v end
    end
    for _, v in ipairs(fs) do fields[#fields + 1] = v end
    redis.call('HINCRBY', KEYS[5], 'bytes', added)
    redis.call('HINCRBY', KEYS[5], 'count', 1)
    redis.call('HINCRBY', KEYS[5], 'tokens', ntok)
    if ptok > 0 or ctok > 0 or tonumber(cost) > 0 then
      for _, v in ipairs({'ptok', tonumber(m[5]) + ptok, 'ctok', tonumber(m[6]) + ctok}) do
        fields[#fields + 1] = v
      end
      redis.call('HINCRBYFLOAT', KEYS[2], 'cost', cost)
      redis.call('HINCRBY', KEYS[5], 'ptok', ptok)
      redis.call('HINCRBY', KEYS[5], 'ctok', ctok)
      redis.call('HINCRBYFLOAT', KEYS[5], 'cost', cost)
    end
    redis.call('PEXPIRE', KEYS[1], ttl_ms)
    if ids then
      redis.call('SET', KEYS[3], ids, 'PX', ttl_ms)
    else
      redis.call('DEL', KEYS[3])  -- rebuilt from the list by the next load_ids
    end
  end
  redis.call('HSET', KEYS[2], unpack(fields))
  redis.call('PEXPIRE', KEYS[2], ttl_ms)
  redis.call('ZADD', KEYS[4], now, sid)
  extend(KEYS[4], ttl_ms)
  extend(KEYS[5], ttl_ms)
  return appended, seq, ttl_ms
end

-- FINISH_TURN's revision: the newest message (id `id`) becomes ARGV[6] (tokens ARGV[7],
-- preview ARGV[8]) with the usage of ARGV[9..11]; returns replaced (0/1), the newest seq.
local function replace_head(id)
  local head = redis.call('LINDEX', KEYS[1], 0)
  local m = redis.call('HMGET', KEYS[2], 'ttl', 'seq', 'tokens', 'ptok', 'ctok', 'bytes')
  local prefix = '{"i":"' .. id .. '"'
  if not head or string.sub(head, 1, #prefix) ~= prefix then return 0, tonumber(m[2]) end
  local ttl_ms = tonumber(m[1]) * 1000
  local ntok = tonumber(ARGV[7]) - cjson.decode(head).n
  local added = #ARGV[6] - #head
  local ptok, ctok = tonumber(ARGV[9]), tonumber(ARGV[10])
  redis.call('LSET', KEYS[1], 0, ARGV[6])
  redis.call('HSET', KEYS[2], 'tokens', tonumber(m[3]) + ntok, 'ptok', tonumber(m[4]) + ptok,
             'ctok', tonumber(m[5]) + ctok, 'bytes', math.max(0, (tonumber(m[6]) or 0) + added),
             'preview', ARGV[8], 'prole', 'assistant', 'active', ARGV[2])
  redis.call('HINCRBYFLOAT', KEYS[2], 'cost', ARGV[11])
  redis.call('HINCRBY', KEYS[5], 'tokens', ntok)
  redis.call('HINCRBY', KEYS[5], 'bytes', added)
  redis.call('HINCRBY', KEYS[5], 'ptok', ptok)
  redis.call('HINCRBY', KEYS[5], 'ctok', ctok)
  redis.call('HINCRBYFLOAT', KEYS[5], 'cost', ARGV[11])
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl_ms) end
  redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
  extend(KEYS[4], ttl_ms)
  extend(KEYS[5], ttl_ms)
  return 1, tonumber(m[2])
end

-- Whether the event stream is that of generation `g` (a turn whose lock expired may
-- find the next turn's stream there: that one is not its to end).
local function stream_of(g)
  local first = redis.call('XRANGE', KEYS[7], '-', '+', 'COUNT', 1)
  if #first == 0 then return false end
  local f = first[1][2]
  for i = 1, #f, 2 do
    if f[i] == 'g' then return f[i + 1] == g end
  end
  return false
end

local function stream_ended()
  local last = redis.call('XREVRANGE', KEYS[7], '+', '-', 'COUNT', 1)
  if #last == 0 then return true end
  local f = last[1][2]
  for i = 1, #f, 2 do
    if f[i] == 't' then return f[i + 1] == 'e' end
  end
  return true
end
"""
)

# KEYS[1..9] - see the module docstring
# ARGV[1] - session id, ARGV[2] - now ms, ARGV[3] - max messages kept, ARGV[4] - id window
# ARGV[5] - how many newest messages to return (the context read)
# ARGV[6] - preview of the user message
# ARGV[7] - lock token, ARGV[8] - lock ttl ms
# ARGV[9] - turns allowed per rate window (0: no limit), ARGV[10] - rate window ms
# ARGV[11] - generations allowed at once per user (0: no cap)
# ARGV[12] - user message id, ARGV[13] - encoded user message, ARGV[14] - its tokens
# ARGV[15] - the reply's id, ARGV[16] - generation id
# ARGV[17] - '1' if the ids come from an idempotency key (look them up first)
# ARGV[18] - MAXLEN of the event stream
# ARGV[19] - the user's byte cap (0: none), ARGV[20] - the user's session key prefix
# ARGV[21] - the turn's ordinal (its begin: store/codec.py `ordinal`; 0: none), which the
#   encoded user message carries too
# ARGV[22] - '1': the turn was planned from a read (the OpenAI route, chat/reconcile.py):
#   refused as 'stale' unless the newest message still has id ARGV[23] ('': none stored)
# ARGV[24..] - messages appended under the lock before the user message (the client's
#   tool results), five values each: id, encoded, tokens, preview, role
# return nil if the session does not exist, else one of
#   {'orphan', {stream entries}}  a dead generation's stream: recover it, then retry
#   {'replay', reply or false, user message, its seq, lock held 1/0}  idempotent retry
#   {'busy'}  another turn holds the lock
#   {'stale'}  the newest message is not ARGV[23] any more (nothing written)
#   {'rate', retry after ms} / {'cap', retry after ms}  over a per-user limit
#   {'quota'}  the user message would pass the user's byte cap (nothing written)
#   {'ok', seq of the user message, meta as a flat list, pttl ms, {messages, newest first},
#    stored length, the ordinal the user message was stored with (its reply's too)}
BEGIN_TURN = (
    _TURN_LUA
    + """
if redis.call('EXISTS', KEYS[2]) == 0 then return nil end
local now = tonumber(ARGV[2])
local holder = redis.call('GET', KEYS[6])
if not holder and not stream_ended() then
  return {'orphan', redis.call('XRANGE', KEYS[7], '-', '+')}
end
if ARGV[17] == '1' then
  local ids = load_ids(tonumber(ARGV[4]))
  local ui = find_id(ids, ARGV[12])
  if ui then
    local ri = find_id(ids, ARGV[15])
    local reply = false
    if ri then reply = redis.call('LINDEX', KEYS[1], ri) end
    local top = tonumber(redis.call('HGET', KEYS[2], 'seq'))
    return {'replay', reply, redis.call('LINDEX', KEYS[1], ui), top - ui, holder and 1 or 0}
  end
end
if holder then return {'busy'} end
if ARGV[22] == '1' then
  local head = redis.call('LINDEX', KEYS[1], 0)
  local prefix = '{"i":"' .. ARGV[23] .. '"'
  if ARGV[23] == '' then
    if head then return {'stale'} end
  elseif not head or string.sub(head, 1, #prefix) ~= prefix then
    return {'stale'}
  end
end
local before_bytes = 0
for i = 24, #ARGV, 5 do before_bytes = before_bytes + #ARGV[i + 1] end
-- Quota first, so that a refused turn writes nothing (the trim's credit is left out: a
-- user at the cap with a full session is refused a little early, never let past it).
if not bytes_allowed(KEYS[4], KEYS[5], ARGV[20], #ARGV[13] + before_bytes,
                     tonumber(ARGV[19])) then
  return {'quota'}
end
local limit, window = tonumber(ARGV[9]), tonumber(ARGV[10])
if limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', now - window)
  if redis.call('ZCARD', KEYS[8]) >= limit then
    local oldest = redis.call('ZRANGE', KEYS[8], 0, 0, 'WITHSCORES')
    return {'rate', tonumber(oldest[2]) + window - now}
  end
end
local cap, ttl = tonumber(ARGV[11]), tonumber(ARGV[8])
if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[9], '-inf', now)
  if redis.call('ZCARD', KEYS[9]) >= cap then
    local first = redis.call('ZRANGE', KEYS[9], 0, 0, 'WITHSCORES')
    return {'cap', math.min(1000, tonumber(first[2]) - now)}
  end
  redis.call('ZADD', KEYS[9], now + ttl, ARGV[16])
  redis.call('PEXPIRE', KEYS[9], ttl)
end
if limit > 0 then
  redis.call('ZADD', KEYS[8], now, ARGV[16])
  redis.call('PEXPIRE', KEYS[8], window)
end
redis.call('SET', KEYS[6], ARGV[7], 'PX', ttl)
-- The turn begins now, after whatever is stored: its message goes to the head, its
-- ordinal raised past the head's if another process's clock ran ahead.
local item, ordinal = ARGV[13], tonumber(ARGV[21])
local head = redis.call('LINDEX', KEYS[1], 0)
if ordinal > 0 and head and ordinal_of(head) > ordinal then
  ordinal = ordinal_of(head)
  local o = string.format('%d', ordinal)
  item = string.gsub(item, '^({"i":"[^"]*","r":"%a","o":)%d+', '%1' .. o, 1)
end
for i = 24, #ARGV, 5 do
  append_one(ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[i], ARGV[i + 1],
    tonumber(ARGV[i + 2]), ARGV[i + 3], ARGV[i + 4], 0, 0, '0', 0, ARGV[20])
end
local appended, seq, ttl_ms = append_one(ARGV[1], ARGV[2], tonumber(ARGV[3]),
  tonumber(ARGV[4]), ARGV[12], item, tonumber(ARGV[14]), ARGV[6], 'user', 0, 0, '0',
  0, ARGV[20], ordinal)
redis.call('DEL', KEYS[7])
redis.call('XADD', KEYS[7], 'MAXLEN', ARGV[18], '*', 't', 's', 'g', ARGV[16],
           'r', ARGV[15], 'k', ARGV[7], 'q', seq)
redis.call('PEXPIRE', KEYS[7], ttl_ms)
local n = tonumber(ARGV[5])
local msgs = {}
if n > 0 then msgs = redis.call('LRANGE', KEYS[1], 0, n - 1) end
return {'ok', seq, redis.call('HGETALL', KEYS[2]), ttl_ms, msgs, redis.call('LLEN', KEYS[1]),
        string.format('%d', ordinal)}
"""
)

# KEYS[1..9] - see the module docstring
# ARGV[1] - session id, ARGV[2] - now ms, ARGV[3] - max messages kept, ARGV[4] - id window
# ARGV[5] - reply id ('': no reply to store), ARGV[6] - encoded reply, ARGV[7] - its tokens
# ARGV[8] - its preview, ARGV[9] - prompt tokens, ARGV[10] - completion tokens,
# ARGV[11] - cost (usage, added only with a reply newly stored)
# ARGV[12] - lock token, ARGV[13] - generation id
# ARGV[14] - text not yet in the event stream ('' for none), ARGV[15] - its offset
# ARGV[16] - payload of the end event, ARGV[17] - the stream's expiry after the end, ms
# ARGV[18] - MAXLEN of the event stream
# ARGV[19] - a revision (regenerate, continue: SPEC §3b): the id of the newest message,
#   which the reply replaces (its alternatives or its longer text) instead of being
#   appended; '' for a turn. A newest message of another id is left as it is.
# ARGV[20] - the turn's ordinal (BEGIN_TURN's answer; the encoded reply carries it): the
#   reply goes right after its user message even if another turn came in meanwhile
#   (its lock expired during an outage)
# ARGV[21] - the user message's id ('' for none), ARGV[22] - the encoded user message,
#   ARGV[23] - its tokens, ARGV[24] - its preview: stored again first if it is missing
#   (a failover between begin and finish lost it), so that a reply is never alone
# A generation already ended (recovered by another process meanwhile) is not ended twice,
# and an event stream of another generation (a later turn's) is left alone; a reply whose
# id is stored already is not stored twice.
# return nil if the session is gone (deleted meanwhile; the lock is released all the
#   same), else {1 if the reply was stored now else 0, seq of the newest message}
FINISH_TURN = (
    _TURN_LUA
    + """
if redis.call('GET', KEYS[6]) == ARGV[12] then redis.call('DEL', KEYS[6]) end
redis.call('ZREM', KEYS[9], ARGV[13])
if redis.call('EXISTS', KEYS[2]) == 0 then return nil end
local appended, seq = 0, 0
local mine = stream_of(ARGV[13])
local ended = mine and stream_ended()
if ARGV[19] ~= '' then
  if mine and not ended then appended, seq = replace_head(ARGV[19]) end
elseif ARGV[5] ~= '' and not ended then
  if ARGV[21] ~= '' then
    append_one(ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[21], ARGV[22],
      tonumber(ARGV[23]), ARGV[24], 'user', 0, 0, '0', 0, '', tonumber(ARGV[20]))
  end
  appended, seq = append_one(ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]),
    ARGV[5], ARGV[6], tonumber(ARGV[7]), ARGV[8], 'assistant', tonumber(ARGV[9]),
    tonumber(ARGV[10]), ARGV[11], 0, '', tonumber(ARGV[20]))
end
if mine and not ended then
  if ARGV[14] ~= '' then
    redis.call('XADD', KEYS[7], 'MAXLEN', ARGV[18], '*', 't', 'd', 'o', ARGV[15],
               'x', ARGV[14])
  end
  redis.call('XADD', KEYS[7], 'MAXLEN', ARGV[18], '*', 't', 'e', 'p', ARGV[16])
  redis.call('PEXPIRE', KEYS[7], ARGV[17])
end
return {appended, seq}
"""
)

# KEYS[1] - the session's turn lock, KEYS[2] - the user's running generations ZSET
# ARGV[1] - lock token, ARGV[2] - lock ttl ms, ARGV[3] - now ms, ARGV[4] - generation id
# return 1 if the caller still held the lock (its expiry is extended), else 0
RENEW_TURN = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], 'XX', tonumber(ARGV[3]) + tonumber(ARGV[2]), ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""

# KEYS[1] - a sliding-window ZSET of the user's requests of one budget
# ARGV[1] - now ms, ARGV[2] - requests allowed per window, ARGV[3] - window ms,
# ARGV[4] - a unique member for this request
# return 0 if the request is within the budget (and counted), else the ms to wait
SLIDING_RATE = """
local now, limit, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + window - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], window)
return 0
"""
