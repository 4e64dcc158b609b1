"""The store's Lua scripts: every multi-key change of a run is one of these, atomic on the server.

Each script takes the keys it touches as KEYS (so a cluster can route it); a key it builds
itself from a prefix passed in ARGV (``job:`` + id, ``cands:state:`` + state) shares the run's
hash tag, so it lands in the same slot. Record fields arrive already JSON-encoded (see
:mod:`.keys`); a script compares and writes the encoded forms (``'"queued"'``, quotes included)
and never decodes a whole record. Which key is which: the schema in :mod:`.keys`.

``_SCRIPTS`` maps the names the Store calls them by to their source.
"""

from __future__ import annotations

# Write fields of a hash only if the hash's existence is as expected (create a run / update one).
#   KEYS[1]  the hash (run, cand:<id>)
#   ARGV     must_exist (1|0), field, json, field, json, ...
#   returns  1 written; 0 the hash's existence differs from must_exist (nothing written)
_HSET_IF = """
if redis.call('EXISTS', KEYS[1]) ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2)) return 1"""

# Store a new candidate and index it under its creation sequence, in ``cands`` and its state's zset.
#   KEYS     cand:<id>, cands, cands:seq, cands:state:<state>
#   ARGV     id, field, json, field, json, ...
#   returns  1 added; 0 a candidate with that id exists (nothing written)
_ADD_CAND = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local seq = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('ZADD', KEYS[2], seq, ARGV[1])
redis.call('ZADD', KEYS[4], seq, ARGV[1]) return 1"""

# Move a candidate to another state (and its id to that state's index) if it is in one of n states,
# setting more fields with it.
#   KEYS     cand:<id>, cands
#   ARGV     id, state-index key prefix (P cands:state:), to_state, n, n from-states, field, json, ...
#   returns  1 moved; 0 its state is not among the from-states (nothing changed); -1 no such candidate
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return -1 end
cur = string.sub(cur, 2, -2)
local n, ok = tonumber(ARGV[4]), false
for i = 5, 4 + n do if ARGV[i] == cur then ok = true break end end
if not ok then return 0 end
local seq = redis.call('ZSCORE', KEYS[2], ARGV[1])
redis.call('ZREM', ARGV[2] .. cur, ARGV[1])
redis.call('ZADD', ARGV[2] .. ARGV[3], seq, ARGV[1])
redis.call('HSET', KEYS[1], 'state', '"' .. ARGV[3] .. '"')
if #ARGV > 4 + n then redis.call('HSET', KEYS[1], unpack(ARGV, 5 + n)) end
return 1"""

# Store a job and push its id on the queue (left for priority work, else right). The stored attempt
# never goes down, so attempts of an earlier life of the job stay fenced.
#   KEYS     job:<id>, queue
#   ARGV     id, front (1|0), attempt, field, json, ... (state "queued" among them)
#   returns  1 queued; an error reply if the job is already queued or running (nothing written)
_ENQUEUE = """
local st = redis.call('HGET', KEYS[1], 'state')
if st == '"queued"' or st == '"running"' then
  return redis.error_reply('job ' .. ARGV[1] .. ' is already ' .. string.sub(st, 2, -2)) end
local att = math.max(tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0'), tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], 'attempt', att, unpack(ARGV, 4))
if ARGV[2] == '1' then redis.call('LPUSH', KEYS[2], ARGV[1]) else redis.call('RPUSH', KEYS[2], ARGV[1]) end
return 1"""

# Lease the next queued job: pop ids from the left, skipping those no longer queued (removed, or
# pushed twice); bump its attempt, mark it running on the worker and add it to ``running``.
#   KEYS     queue, running
#   ARGV     job key prefix (P job:), worker (JSON), lease deadline (JSON, unix seconds)
#   returns  the leased job's HGETALL (flat list); nil (false) when the queue is empty
_DISPATCH = """
while true do
  local id = redis.call('LPOP', KEYS[1])
  if not id then return false end
  local jk = ARGV[1] .. id
  if redis.call('HGET', jk, 'state') == '"queued"' then
    redis.call('HINCRBY', jk, 'attempt', 1)
    redis.call('HSET', jk, 'state', '"running"', 'worker', ARGV[2], 'lease_deadline', ARGV[3])
    redis.call('ZADD', KEYS[2], ARGV[3], id)
    return redis.call('HGETALL', jk)
  end
end"""

# Push a running attempt's lease deadline out.
#   KEYS     running, job:<id>
#   ARGV     id, attempt, new deadline (JSON)
#   returns  1 renewed; 0 fenced (not running, or another attempt is current)
_RENEW = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
if redis.call('HGET', KEYS[2], 'attempt') ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], 'lease_deadline', ARGV[3]) return 1"""

# Accept the result of a running attempt: append it to ``results`` (and its index to the candidate's
# list), take the job off ``running`` and mark it done. A result that is not for the current running
# attempt is appended to ``refused`` instead, as JSON {reason, job, attempt, current_attempt,
# job_state, at, result}.
#   KEYS     running, job:<id>, results, results:cand:<cand>, refused
#   ARGV     id, attempt, result JSON, now (JSON), id as JSON
#   returns  'ok' stored; else the reason it was refused: 'unknown job' | 'stale attempt' |
#            'duplicate' | 'not running'
_RECORD = """
local cur, st = unpack(redis.call('HMGET', KEYS[2], 'attempt', 'state'))
local reason = nil
if not cur then reason = 'unknown job'
elseif cur ~= ARGV[2] then reason = 'stale attempt'
elseif st == '"done"' then reason = 'duplicate'
elseif not redis.call('ZSCORE', KEYS[1], ARGV[1]) then reason = 'not running' end
if reason then
  redis.call('RPUSH', KEYS[5], '{"reason": "' .. reason .. '", "job": ' .. ARGV[5] .. ', "attempt": ' ..
    ARGV[2] .. ', "current_attempt": ' .. (cur or 'null') .. ', "job_state": ' .. (st or 'null') ..
    ', "at": ' .. ARGV[4] .. ', "result": ' .. ARGV[3] .. '}')
  return reason
end
redis.call('ZREM', KEYS[1], ARGV[1])
local n = redis.call('RPUSH', KEYS[3], ARGV[3])
redis.call('RPUSH', KEYS[4], n - 1)
redis.call('HSET', KEYS[2], 'state', '"done"', 'lease_deadline', 'null') return 'ok'"""

# Take a lost running attempt back: off ``running``, its reason recorded, its ``lost`` count bumped
# when count_lost is 1; then either failed (lost >= max_lost) or back at the front of the queue.
#   KEYS     running, job:<id>, queue
#   ARGV     id, attempt, max_lost, reason (JSON), count_lost (1|0), back (1: to the back of the queue)
#   returns  'requeued' (front of the queue, or back) | 'failed' (lost >= max_lost) |
#            'fenced' (not running, or another attempt is current: nothing changed)
_REQUEUE = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 'fenced' end
if redis.call('HGET', KEYS[2], 'attempt') ~= ARGV[2] then return 'fenced' end
redis.call('ZREM', KEYS[1], ARGV[1])
local lost = tonumber(redis.call('HGET', KEYS[2], 'lost') or '0')
if ARGV[5] == '1' then lost = redis.call('HINCRBY', KEYS[2], 'lost', 1) end
redis.call('HSET', KEYS[2], 'lease_deadline', 'null', 'last_lost_reason', ARGV[4])
if ARGV[5] == '1' and lost >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[2], 'state', '"failed"') return 'failed' end
redis.call('HSET', KEYS[2], 'state', '"queued"', 'worker', 'null')
if ARGV[6] == '1' then redis.call('RPUSH', KEYS[3], ARGV[1]) else redis.call('LPUSH', KEYS[3], ARGV[1]) end
return 'requeued'"""

# Take a queued job out of the queue (state removed).
#   KEYS     job:<id>, queue
#   ARGV     id
#   returns  1 removed; 0 the job is not queued (nothing changed)
_REMOVE = """
if redis.call('HGET', KEYS[1], 'state') ~= '"queued"' then return 0 end
redis.call('LREM', KEYS[2], 0, ARGV[1])
redis.call('HSET', KEYS[1], 'state', '"removed"') return 1"""

# Set fields of a running attempt (its commit, when its candidate was rebased as it was taken).
#   KEYS     running, job:<id>
#   ARGV     id, attempt, field, json, ...
#   returns  1 set; 0 fenced (not running, or another attempt is current)
_RETARGET = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
if redis.call('HGET', KEYS[2], 'attempt') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 3)) return 1"""

# Take a running attempt off ``running`` without a result (state removed).
#   KEYS     running, job:<id>
#   ARGV     id, attempt
#   returns  1 dropped; 0 fenced (not running, or another attempt is current)
_DROP = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
if redis.call('HGET', KEYS[2], 'attempt') ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'state', '"removed"', 'lease_deadline', 'null') return 1"""

_SCRIPTS = {"hset_if": _HSET_IF, "add_cand": _ADD_CAND, "transition": _TRANSITION, "enqueue": _ENQUEUE,
            "dispatch": _DISPATCH, "renew": _RENEW, "record": _RECORD, "requeue": _REQUEUE, "remove": _REMOVE,
            "retarget": _RETARGET, "drop": _DROP}
