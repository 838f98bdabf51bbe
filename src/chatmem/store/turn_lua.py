"""The Lua a turn's scripts share (turn_scripts.py, place_script.py): the append of one
message with its trim, quota and id index, the ordinal placement, the revision's
replacement of the newest message, and the event stream checks. KEYS as in
turn_scripts.py."""

from __future__ import annotations

from chatmem.store.memory_scripts import _KEEP_UNCOVERED
from chatmem.store.quota_lua import _EXTEND, _QUOTA
from chatmem.store.window_lua import _WINDOW_JSON

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
    + _WINDOW_JSON
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
