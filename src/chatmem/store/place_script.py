"""PLACE_TURN: a turn the outbox kept, stored where it began (durability/replay.py).

It shares the turn scripts' Lua (turn_lua.py): the same append, the same ordinal
placement, the same id index, so a message is stored once whichever path stored it.
"""

from __future__ import annotations

from chatmem.store.turn_lua import _TURN_LUA

# KEYS[1..5] - as BEGIN_TURN's (messages, meta, message ids, session index, totals)
# ARGV[1] - session id, ARGV[2] - now ms, ARGV[3] - max messages kept, ARGV[4] - id window
# ARGV[5] - the turn's ordinal (0: none, the messages go to the head)
# ARGV[6] - prompt tokens, ARGV[7] - completion tokens, ARGV[8] - cost: the usage, added
#   with the last message if it is stored now
# then 5 ARGV per message: id, encoded message (carrying the ordinal), its tokens, its
#   preview, its role ('user' or 'assistant')
# The outbox's replay (durability/replay.py): a turn's messages put where the turn
# began among what other processes stored meanwhile. A message whose id is stored
# already is skipped, so a record replayed twice is stored once.
# return nil if the session does not exist, else how many messages were stored now
PLACE_TURN = (
    _TURN_LUA
    + """
if redis.call('EXISTS', KEYS[2]) == 0 then return nil end
local n, stored = (#ARGV - 8) / 5, 0
for k = 1, n do
  local a = 8 + (k - 1) * 5
  local ptok, ctok, cost = 0, 0, '0'
  if k == n then ptok, ctok, cost = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8] end
  local appended = append_one(ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]),
    ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3]), ARGV[a + 4], ARGV[a + 5], ptok, ctok,
    cost, 0, '', tonumber(ARGV[5]))
  stored = stored + appended
end
return stored
"""
)
