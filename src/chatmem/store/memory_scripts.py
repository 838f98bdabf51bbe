"""Lua of memory beyond the window (SPEC §2b): the rolling summary and long-term memories.

Summary fields of a session's meta HASH (scripts.py lists the others): `sumn` how many
of the oldest stored messages the summary covers (its presence: the session keeps a
summary), `sum` its text, `sumtok` its tokens, `sumthru` the id of the newest covered
message, `sumcov` how many it ever covered, `sumstale` '1' when a covered message was
edited or deleted, `sumv` its version (bumped by every store), `sumlost` messages the
hard cap trimmed before they were covered, not yet reported. `memseq`: the seq up to
which long-term memories were extracted from the session.

`sumn` stays true because every script that removes stored messages keeps it so: the
trim (`_KEEP_UNCOVERED`, used by the append scripts), a delete (`_MARK_STALE`, used by
the edit script), a clear (CLEAR_SESSION zeroes it).
"""

from __future__ import annotations

# Shared Lua for the append scripts' trim, with KEYS[2] the session's meta. A session
# with a summary keeps the messages it does not cover yet: `trim_count(len, max_kept)`
# gives how many of the oldest of `len` messages to drop now, and how many of those are
# not covered (forced by the hard cap: SUMMARY_HARD_CAP_FACTOR × max_kept).
# `trimmed(n, lost)` records that they were dropped.
_KEEP_UNCOVERED = """
local function trim_count(len, max_kept)
  if len <= max_kept then return 0, 0 end
  local n = tonumber(redis.call('HGET', KEYS[2], 'sumn') or '')
  if not n then return len - max_kept, 0 end
  local drop = math.min(len - max_kept, n)
  local lost = math.max(0, len - drop - 2 * max_kept)
  return drop + lost, lost
end

local function trimmed(n, lost)
  local cur = tonumber(redis.call('HGET', KEYS[2], 'sumn') or '')
  if not cur or n <= 0 then return end
  redis.call('HSET', KEYS[2], 'sumn', math.max(0, cur - n))
  if lost > 0 then redis.call('HINCRBY', KEYS[2], 'sumlost', lost) end
end
"""

# Shared Lua for the edit script, with KEYS[2] the session's meta: the message at
# `pos` (0: the oldest stored) is edited, or deleted if `deleted`; a covered one makes
# the summary stale (and a deleted one is no longer covered).
_MARK_STALE = """
local function summary_touched(pos, deleted)
  local n = tonumber(redis.call('HGET', KEYS[2], 'sumn') or '0')
  if pos >= n then return end
  redis.call('HSET', KEYS[2], 'sumstale', 1)
  if deleted then
    redis.call('HSET', KEYS[2], 'sumn', n - 1)
    redis.call('HINCRBY', KEYS[2], 'sumcov', -1)
  end
end
"""

# Shared Lua for CLEAR_SESSION (KEYS[2] the session's meta): its summary goes with its
# messages.
_CLEAR_SUMMARY = """
local function summary_cleared()
  if redis.call('HEXISTS', KEYS[2], 'sumn') == 0 then return end
  redis.call('HSET', KEYS[2], 'sumn', 0, 'sum', '', 'sumtok', 0, 'sumthru', '', 'sumcov', 0,
             'sumstale', 0)
end
"""

# KEYS[1] - the session's messages LIST (newest first), KEYS[2] - its meta HASH
# ARGV[1] - the summary version it was made from (compare and swap)
# ARGV[2] - the id of the newest message it covers, ARGV[3] - its text, ARGV[4] - tokens
# ARGV[5] - how many messages it newly folds in (for `sumcov`; 0 for a rebuild)
# ARGV[6] - '1' if it is a rebuild (`sumcov` restarts at what it covers)
# return nil if the session is gone, {-1} if another summary was stored meanwhile,
#   {-2} if that message is no longer stored, else {1, messages it covers, sumlost}
#   (`sumlost` is reset: the caller reports it)
STORE_SUMMARY = """
if redis.call('EXISTS', KEYS[2]) == 0 then return nil end
local m = redis.call('HMGET', KEYS[2], 'sumv', 'sumcov', 'sumlost', 'sumn')
if tonumber(m[1] or '0') ~= tonumber(ARGV[1]) then return {-1} end
local items = redis.call('LRANGE', KEYS[1], 0, -1)
local prefix = '{"i":"' .. ARGV[2] .. '"'
local at = nil
for i, item in ipairs(items) do
  if string.sub(item, 1, #prefix) == prefix then at = i; break end
end
if not at then return {-2} end
local covers = #items - at + 1
local total = tonumber(m[2] or '0') + tonumber(ARGV[5])
if ARGV[6] == '1' then total = math.max(covers, tonumber(m[2] or '0')) end
redis.call('HSET', KEYS[2], 'sum', ARGV[3], 'sumtok', ARGV[4], 'sumn', covers,
           'sumthru', ARGV[2], 'sumcov', total, 'sumv', tonumber(ARGV[1]) + 1,
           'sumstale', 0, 'sumlost', 0)
return {1, covers, tonumber(m[3] or '0')}
"""

# KEYS[1] - the (user, character) memories HASH (id → JSON), KEYS[2] - the user's SET of
# character ids with memories, KEYS[3] - the session's meta HASH ('' checks: none)
# ARGV[1] - memory ttl ms, ARGV[2] - character id, ARGV[3] - the session's `memseq`
# the operations were computed from ('-1': no check), ARGV[4] - its new `memseq`,
# ARGV[5] - at most this many memories, ARGV[6..] - triples: op ('put' / 'new' / 'del'),
#   memory id, memory JSON ('' for del)
#   `new` adds (skipped past the cap), `put` replaces an existing one only, `del` removes
# return {-1} if the operations were applied already (memseq moved on), else
#   {applied, memories now}
APPLY_MEMORY_OPS = """
if ARGV[3] ~= '-1' then
  if tonumber(redis.call('HGET', KEYS[3], 'memseq') or '0') ~= tonumber(ARGV[3]) then
    return {-1}
  end
  if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('HSET', KEYS[3], 'memseq', ARGV[4]) end
end
local applied, cap = 0, tonumber(ARGV[5])
for i = 6, #ARGV, 3 do
  local op, id = ARGV[i], ARGV[i + 1]
  if op == 'new' then
    if redis.call('HLEN', KEYS[1]) < cap and redis.call('HSETNX', KEYS[1], id, ARGV[i + 2]) == 1
    then applied = applied + 1 end
  elseif op == 'put' then
    if redis.call('HEXISTS', KEYS[1], id) == 1 then
      redis.call('HSET', KEYS[1], id, ARGV[i + 2])
      applied = applied + 1
    end
  elseif op == 'del' then
    applied = applied + redis.call('HDEL', KEYS[1], id)
  end
end
local n = redis.call('HLEN', KEYS[1])
if n > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  redis.call('SADD', KEYS[2], ARGV[2])
  local cur = redis.call('PTTL', KEYS[2])
  if cur < tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[2], ARGV[1]) end
else
  redis.call('SREM', KEYS[2], ARGV[2])
end
return {applied, n}
"""

# Put before scripts.DELETE_USER (store/users.py): the user's memories go with the rest.
# KEYS[3] - the user's SET of character ids with memories
# ARGV[2] - the key prefix of the user's memory hashes (`keys.user_memories_prefix`)
ERASE_MEMORIES_FIRST = """
for _, cid in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  redis.call('DEL', ARGV[2] .. cid)
end
redis.call('DEL', KEYS[3])
"""

# A generated title (chat/titles.py), which must never replace one the user set.
# KEYS[1] - the session's meta HASH
# ARGV[1] - the title it replaces (compare and swap), ARGV[2] - the new title
# return 1 if set, 0 if the title changed meanwhile (or the session is gone)
SET_TITLE_IF = """
if redis.call('HGET', KEYS[1], 'title') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'title', ARGV[2])
return 1
"""
