"""Lua that hands a read's messages back as one JSON array (store/codec.py
`decode_window`): one reply string that the client parses at once, instead of one bulk
string per message, each decoded and parsed on its own (the turn's largest client cost).
The stored messages are JSON documents, so joined with commas inside brackets they are
one JSON document."""

from __future__ import annotations

# `as_json_array(items)`: `items` as LRANGE gives them (newest first) → '[oldest,…,newest]'.
_WINDOW_JSON = """
local function as_json_array(items)
  local n, out = #items, {}
  for i = n, 1, -1 do out[n - i + 1] = items[i] end
  return '[' .. table.concat(out, ',') .. ']'
end
"""
