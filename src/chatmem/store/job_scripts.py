"""Lua scripts of the background jobs (store/jobs.py): enqueue, finish, fail, promote.

KEYS, for every script here (all under the `{jobs}` hash tag, `keys.JOBS_*`):
    KEYS[1] the jobs STREAM (consumer group `keys.JOBS_GROUP`), KEYS[2] the delayed ZSET
    (member: job JSON, score: due ms), KEYS[3] the dead-letter STREAM, KEYS[4] the dedupe
    HASH (dedupe key → ms until which an equal job counts as queued).
A job is one stream entry with field `j` (its JSON). It leaves the stream only by
ACK_JOB (done) or FAIL_JOB (to the delayed set, or the dead letter), each of which also
acknowledges it, so a job is always somewhere: queued, pending with a consumer, delayed,
or dead.
"""

from __future__ import annotations

# ARGV[1] - job JSON, ARGV[2] - dedupe key ('' for none), ARGV[3] - dedupe ttl ms,
# ARGV[4] - now ms, ARGV[5] - the stream's MAXLEN
# return the new entry id, or false if an equal job is queued already (dedupe)
ENQUEUE_JOB = """
local now = tonumber(ARGV[4])
if ARGV[2] ~= '' then
  local until_ms = tonumber(redis.call('HGET', KEYS[4], ARGV[2]) or '0')
  if until_ms > now then return false end
  redis.call('HSET', KEYS[4], ARGV[2], now + tonumber(ARGV[3]))
end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*', 'j', ARGV[1])
"""

# ARGV[1] - group, ARGV[2] - entry id, ARGV[3] - dedupe key ('' for none)
# return 1 if the entry was still pending (acknowledged now), else 0
ACK_JOB = """
local n = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if ARGV[3] ~= '' then redis.call('HDEL', KEYS[4], ARGV[3]) end
return n
"""

# ARGV[1] - group, ARGV[2] - entry id, ARGV[3] - the job JSON for its next attempt,
# ARGV[4] - due ms of the retry, ARGV[5] - '1' to send it to the dead letter instead,
# ARGV[6] - the error text, ARGV[7] - now ms, ARGV[8] - dead letter MAXLEN,
# ARGV[9] - dedupe key ('' for none)
# return 'dead', 'retry', or 'gone' (the entry was not pending: done elsewhere meanwhile)
FAIL_JOB = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 'gone' end
redis.call('XDEL', KEYS[1], ARGV[2])
if ARGV[5] == '1' then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[8], '*', 'j', ARGV[3], 'e', ARGV[6],
             'at', ARGV[7])
  if ARGV[9] ~= '' then redis.call('HDEL', KEYS[4], ARGV[9]) end
  return 'dead'
end
redis.call('ZADD', KEYS[2], tonumber(ARGV[4]), ARGV[3])
return 'retry'
"""

# ARGV[1] - now ms, ARGV[2] - at most this many, ARGV[3] - the stream's MAXLEN
# return how many delayed jobs became due and were queued again
PROMOTE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, job in ipairs(due) do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'j', job)
  redis.call('ZREM', KEYS[2], job)
end
return #due
"""
