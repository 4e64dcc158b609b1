"""The key schema of the farm's state in Redis, and how record fields are encoded.

Every key of a run starts with ``P = "<prefix>:{<tag>}:"`` (prefix ``arf`` by default). The
braces are a Redis Cluster hash tag: all keys of one run share a slot, so the Lua scripts
(:mod:`.scripts`) stay legal on a cluster. Records are Redis hashes whose field values are each
JSON-encoded (a Candidate's ``state`` is stored as ``"queued"``, quotes included); nothing is
pickled. Records are not decoded and re-encoded in Lua, because Lua's cjson turns ``[]`` into
``{}`` and rounds floats to 14 digits.

Key schema (P = prefix:{tag}:)::

    P run                  hash    run metadata (config, main-line sha, ...); its presence = the run exists
    P seq:<kind>           string  INCR counter behind next_id(kind) ("c" -> c0001, "j" -> j000001)
    P cand:<id>            hash    one Candidate (cluster/records.py fields, JSON values)
    P cands                zset    every candidate id, scored by creation sequence
    P cands:seq            string  INCR counter giving that creation sequence
    P cands:state:<state>  zset    ids of the candidates in <state> (same scores); each candidate is in
                                   exactly one of these, kept so by the add/transition scripts
    P job:<id>             hash    one Job (worker/contract.py fields) plus ``state`` (queued | running | done |
                                   failed | removed) and ``last_lost_reason``
    P queue                list    job ids waiting for a worker; dispatch pops from the left,
                                   priority work and requeued jobs are pushed on the left
    P running              zset    leased job ids, scored by lease deadline (unix seconds)
    P results              list    Result JSON of every accepted result, in finish order (append-only)
    P results:cand:<cand>  list    indexes into ``results`` of that candidate's results
    P refused              list    JSON {reason, job, attempt, current_attempt, job_state, at, result}
                                   for every refused (late, duplicate, unknown) result
    P workers              set     names of every worker that ever sent a heartbeat
    P worker:<name>        string  JSON info of a live worker; expires after its heartbeat TTL
    P events               stream  audit trail {kind, at, data (JSON)}; capped at ~10000 entries
    P inbox                list    JSON {kind: patch | idea, text, description, at} sent by `submit` to a
                                   running farm; the controller pops them in order
    P ideas                list    JSON {text, at, attempts} of human ideas not yet implemented

A job's ``attempt`` is bumped on every dispatch; a result, a lease renewal or a requeue must
name the current attempt (fencing), so a worker that was presumed lost and comes back late
cannot overwrite newer work.
"""

from __future__ import annotations

import json
import re
from enum import Enum
from typing import Any

KEY_TEMPLATES = ("run", "seq:<kind>", "cand:<id>", "cands", "cands:seq", "cands:state:<state>", "job:<id>", "queue",
                 "running", "results", "results:cand:<cand>", "refused", "workers", "worker:<name>", "events",
                 "inbox", "ideas")  # fmt: skip
EVENTS_MAXLEN = 10000  # the cap of P events (approximate: XADD MAXLEN ~)
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # a run tag, a prefix, an id kind


def key(prefix: str, tag: str, *parts: str) -> str:
    """The key of ``parts`` in run ``tag`` under ``prefix``, e.g. key("arf", "t1", "cand", "c0001")
    == "arf:{t1}:cand:c0001"; with no parts, P itself."""
    return f"{prefix}:{{{tag}}}:" + ":".join(parts)


def run_pattern(prefix: str) -> str:
    """SCAN pattern matching the run record (P run) of every run under ``prefix``."""
    return f"{prefix}:{{*}}:run"


def tag_of_run_key(prefix: str, run_key: str) -> str:
    """The tag in a run record's key (one that run_pattern(prefix) matched)."""
    return run_key[len(f"{prefix}:{{") : -len("}:run")]


# -- codec: each field of a record hash is one JSON value ------------------------------------------
def encode(v: Any) -> str:
    """The stored form of one value: JSON, keys sorted, enums as their value."""
    return json.dumps(v, sort_keys=True, default=lambda o: o.value if isinstance(o, Enum) else str(o))


def flat(d: dict[str, Any]) -> list[str]:
    """``d`` as HSET arguments: field, encoded value, field, encoded value, ..."""
    return [x for k, v in d.items() for x in (k, encode(v.value if isinstance(v, Enum) else v))]


def unflat(h: dict[str, str] | list[str]) -> dict[str, Any]:
    """A stored hash (HGETALL, as a dict or a flat list) decoded."""
    if isinstance(h, list):
        h = dict(zip(h[::2], h[1::2]))
    return {k: json.loads(v) for k, v in h.items()}
