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
invariant); their shared Lua (turn_lua.py) appends as APPEND_MESSAGES does, one message
at a time.

Event stream entries (field `t`): `s` start {g generation id, r reply id, k lock token,
q the user message's seq}; `d` delta {o offset of its first character, x text};
`e` end {p the JSON payload of the final `done` or `error` event}. A stream whose last
entry is not `e` while the lock is free belongs to a generation whose process died."""

from __future__ import annotations

from chatmem.store.turn_lua import _TURN_LUA

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
# ARGV[24] - the key prefix of the user's memories (`keys.user_memories_prefix`; '': the
#   turn reads none), ARGV[25] - the character the turn talks to ('': the session's),
#   ARGV[26] - the memories' sliding TTL ms, ARGV[27] - ',id,id,': characters whose memory
#   policy has no memories. The memories are read (and their TTL slid) only for a session
#   whose memory is on ('mem' not '0') and a character not in ARGV[27].
# ARGV[28..] - messages appended under the lock before the user message (the client's
#   tool results), five values each: id, encoded, tokens, preview, role
# return nil if the session does not exist, else one of
#   {'orphan', {stream entries}}  a dead generation's stream: recover it, then retry
#   {'replay', reply or false, user message, its seq, lock held 1/0}  idempotent retry
#   {'busy'}  another turn holds the lock
#   {'stale'}  the newest message is not ARGV[23] any more (nothing written)
#   {'rate', retry after ms} / {'cap', retry after ms}  over a per-user limit
#   {'quota'}  the user message would pass the user's byte cap (nothing written)
#   {'ok', seq of the user message, meta as a flat list, pttl ms, the messages as one JSON
#    array, oldest first (window_lua.py),
#    stored length, the ordinal the user message was stored with (its reply's too),
#    false or {the character id, {its memories' JSON}} (ARGV[24..27])}
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
for i = 28, #ARGV, 5 do before_bytes = before_bytes + #ARGV[i + 1] end
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
for i = 28, #ARGV, 5 do
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
local mems = false
if ARGV[24] ~= '' then
  local m = redis.call('HMGET', KEYS[2], 'cid', 'mem')
  local cid = ARGV[25]
  if cid == '' then cid = m[1] end
  if m[2] ~= '0' and not string.find(ARGV[27], ',' .. cid .. ',', 1, true) then
    local key = ARGV[24] .. cid
    mems = {cid, redis.call('HVALS', key)}
    if #mems[2] > 0 then redis.call('PEXPIRE', key, ARGV[26]) end
  end
end
return {'ok', seq, redis.call('HGETALL', KEYS[2]), ttl_ms, as_json_array(msgs),
        redis.call('LLEN', KEYS[1]),
        string.format('%d', ordinal), mems}
"""
)

# KEYS[1..9] - see the module docstring
# ARGV[1] - session id, ARGV[2] - now ms, ARGV[3] - max messages kept, ARGV[4] - id window
# ARGV[5] - reply id ('': no reply to store), ARGV[6] - encoded reply, ARGV[7] - its tokens
# ARGV[8] - its preview, ARGV[9] - prompt tokens, ARGV[10] - completion tokens,
# ARGV[11] - cost (usage, added only with a reply newly stored)
# ARGV[12] - lock token, ARGV[13] - generation id
# ARGV[14] - text not yet in the event stream ('' for none), ARGV[15] - its offset
# ARGV[16] - payload of the end event, ARGV[17] - the stream's expiry after the end, ms;
#   '0': the turn was refused before it began (a client's mistake): the stream is deleted,
#   so that nothing is left to re-attach to
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
# ARGV[25] - '1': return the session's figures after the write too (seed `POST /chat`'s
#   stats, in the same round trip)
# ARGV[26] - '1': the session's policy has a summary: its summary state starts now if it
#   has none (the `sumn` field, memory_scripts.py), so that from the first reply on the trim
#   keeps what no summary covers yet (a start after the turn raced the next turns)
# A generation already ended (recovered by another process meanwhile) is not ended twice,
# and an event stream of another generation (a later turn's) is left alone; a reply whose
# id is stored already is not stored twice.
# return nil if the session is gone (deleted meanwhile; the lock is released all the
#   same), else {1 if the reply was stored now else 0, seq of the newest message}, and
#   with ARGV[25]: stored length, pttl ms, window (rounds), the tokens of the newest
#   2 × window messages
FINISH_TURN = (
    _TURN_LUA
    + """
if redis.call('GET', KEYS[6]) == ARGV[12] then redis.call('DEL', KEYS[6]) end
redis.call('ZREM', KEYS[9], ARGV[13])
if redis.call('EXISTS', KEYS[2]) == 0 then return nil end
if ARGV[26] == '1' then redis.call('HSETNX', KEYS[2], 'sumn', 0) end
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
if mine and not ended and ARGV[17] == '0' then
  redis.call('DEL', KEYS[7])
elseif mine and not ended then
  if ARGV[14] ~= '' then
    redis.call('XADD', KEYS[7], 'MAXLEN', ARGV[18], '*', 't', 'd', 'o', ARGV[15],
               'x', ARGV[14])
  end
  redis.call('XADD', KEYS[7], 'MAXLEN', ARGV[18], '*', 't', 'e', 'p', ARGV[16])
  redis.call('PEXPIRE', KEYS[7], ARGV[17])
end
if ARGV[25] == '1' then
  local window = tonumber(redis.call('HGET', KEYS[2], 'window')) or 0
  local tokens = 0
  if window > 0 then
    -- A message's token count is its first member "n" after its text (codec.py): a
    -- quote inside a JSON string is escaped, so the text cannot hold `,"n":`.
    for _, item in ipairs(redis.call('LRANGE', KEYS[1], 0, 2 * window - 1)) do
      tokens = tokens + (tonumber(string.match(item, ',"n":(%d+)')) or 0)
    end
  end
  return {appended, seq, redis.call('LLEN', KEYS[1]), redis.call('PTTL', KEYS[2]), window,
          tokens}
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
