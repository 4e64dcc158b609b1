"""The farm's state in Redis: the Store, the one class that reads and writes a run's keys.

The key schema and the field encoding are in :mod:`.keys`; every change that touches more than
one key is one of the Lua scripts in :mod:`.scripts`, atomic on the server.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import Any

import redis

from cluster.errors import StoreError
from cluster.records import Candidate, Job, JobState, Requeue, Result, State
from cluster.store.keys import EVENTS_MAXLEN, NAME, encode, flat, key, run_pattern, tag_of_run_key, unflat
from cluster.store.scripts import _SCRIPTS

log = logging.getLogger(__name__)

JOB_STATES = tuple(JobState)
_CAND_FIELDS = frozenset(Candidate.__dataclass_fields__)
_ALL_STATES = tuple(s.value for s in State)


class NotFound(StoreError, KeyError):
    """A record (run, candidate, job) does not exist."""
    __str__ = Exception.__str__  # KeyError would quote the message


class RunExists(StoreError):
    """create_run() found a run with that tag."""


def _state(s: str | State) -> str:
    try:
        return State(s).value
    except ValueError:
        raise StoreError(f"unknown candidate state {s!r}; use one of {', '.join(_ALL_STATES)}") from None


class Store:
    """The farm's records and queue for run ``tag`` in Redis ``r`` (a client with decode_responses=True)."""

    def __init__(self, r: redis.Redis, tag: str, prefix: str = "arf") -> None:
        for what, v in (("tag", tag), ("prefix", prefix)):
            if not NAME.match(v):
                raise StoreError(f"bad run {what} {v!r}: use 1-64 letters, digits, '.', '_' or '-'")
        if not r.connection_pool.connection_kwargs.get("decode_responses"):
            raise StoreError("Store needs a Redis client with decode_responses=True; use redis_server.connect(url)")
        self.r, self.tag, self.prefix = r, tag, prefix
        self.p = key(prefix, tag)  # P
        self._s = {name: r.register_script(src) for name, src in _SCRIPTS.items()}

    def key(self, *parts: str) -> str:
        """The full key of ``parts`` (see the schema in :mod:`.keys`), e.g. key("cand", "c0001")."""
        return key(self.prefix, self.tag, *parts)

    def pipeline(self) -> redis.client.Pipeline:
        """A non-transactional pipeline on this store's client: batch calls in one round trip
        (the ``pipeline=`` argument of add_candidate() and enqueue())."""
        return self.r.pipeline(transaction=False)

    # -- run -----------------------------------------------------------------------------------
    def create_run(self, meta: dict[str, Any]) -> None:
        d = {"tag": self.tag, "created_at": time.time(), **meta}
        if not self._s["hset_if"](keys=[self.key("run")], args=[0, *flat(d)]):
            raise RunExists(f"run {self.tag} already exists; use --resume or another --tag")

    def run_meta(self) -> dict[str, Any] | None:
        return unflat(self.r.hgetall(self.key("run"))) or None

    def update_run(self, **fields: Any) -> None:
        if fields and not self._s["hset_if"](keys=[self.key("run")], args=[1, *flat(fields)]):
            raise NotFound(f"run {self.tag} does not exist; start the farm without --resume to create it")

    @staticmethod
    def list_runs(r: redis.Redis, prefix: str = "arf") -> list[str]:
        """Tags of the runs (with a run record) under ``prefix``."""
        return sorted(tag_of_run_key(prefix, k) for k in r.scan_iter(match=run_pattern(prefix), count=1000))

    def next_id(self, kind: str, width: int = 4) -> str:
        return self.next_ids(kind, 1, width)[0]

    # -- candidates ----------------------------------------------------------------------------
    def add_candidate(self, c: Candidate, pipeline: redis.client.Pipeline | None = None) -> None:
        """Store a new candidate. With ``pipeline``, only queue the script call on it; it then
        answers 0 instead of raising when the id is taken."""
        d = c.to_dict()
        d["state"] = st = _state(c.state)
        keys = [self.key("cand", c.id), self.key("cands"), self.key("cands", "seq"), self.key("cands", "state", st)]
        if pipeline is not None:
            self._s["add_cand"](keys=keys, args=[c.id, *flat(d)], client=pipeline)
            return
        if not self._s["add_cand"](keys=keys, args=[c.id, *flat(d)]):
            raise StoreError(f"candidate {c.id} already exists; take a fresh id from next_id('c')")

    def get_candidate(self, cand_id: str) -> Candidate:
        h = self.r.hgetall(self.key("cand", cand_id))
        if not h:
            raise NotFound(f"candidate {cand_id} not found in run {self.tag}")
        return Candidate.from_dict(unflat(h))

    def candidates(self, states: Iterable[str | State] | None = None) -> list[Candidate]:
        """Candidates (all, or those in ``states``) in creation order."""
        if states is None:
            ids = self.r.zrange(self.key("cands"), 0, -1)
        else:
            pipe = self.pipeline()
            for s in {_state(s) for s in states}:
                pipe.zrange(self.key("cands", "state", s), 0, -1, withscores=True)
            ids = [i for i, _ in sorted((p for part in pipe.execute() for p in part), key=lambda p: p[1])]
        return [Candidate.from_dict(d) for d in self._load("cand", ids)]

    def candidates_after(self, seq: float) -> tuple[list[Candidate], float]:
        """Candidates created after creation sequence ``seq`` (0: all), in creation order, and the
        sequence of the last one (``seq`` if none): read a run's candidates incrementally."""
        pairs = self.r.zrangebyscore(self.key("cands"), f"({seq!r}", "+inf", withscores=True)
        return self.get_candidates([i for i, _ in pairs]), (pairs[-1][1] if pairs else seq)

    def get_candidates(self, ids: Iterable[str]) -> list[Candidate]:
        """The candidates ``ids`` (in that order; missing ones left out), in one round trip."""
        return [Candidate.from_dict(d) for d in self._load("cand", ids)]

    def ids_by_state(self, states: Iterable[str | State]) -> dict[str, list[str]]:
        """The ids of the candidates in each of ``states`` (creation order), in one round trip."""
        names = sorted({_state(s) for s in states})
        pipe = self.pipeline()
        for s in names:
            pipe.zrange(self.key("cands", "state", s), 0, -1)
        return dict(zip(names, pipe.execute()))

    def next_ids(self, kind: str, n: int, width: int = 4) -> list[str]:
        """``n`` fresh ids at once (one INCRBY), as next_id() would give them one by one."""
        if not NAME.match(kind):
            raise StoreError(f"bad id kind {kind!r}: use letters, digits, '.', '_' or '-'")
        if n <= 0:
            return []
        last = self.r.incrby(self.key("seq", kind), n)
        return [f"{kind}{i:0{width}d}" for i in range(last - n + 1, last + 1)]

    def count_by_state(self) -> dict[str, int]:
        pipe = self.pipeline()
        for s in _ALL_STATES:
            pipe.zcard(self.key("cands", "state", s))
        return dict(zip(_ALL_STATES, pipe.execute()))

    def update_candidate(self, cand_id: str, **fields: Any) -> None:
        """Set fields of a candidate (a ``state`` field goes through transition(), from any state)."""
        if "state" in fields:
            self.transition(cand_id, _ALL_STATES, fields.pop("state"), **fields)
            return
        self._check_fields(fields)
        if fields and not self._s["hset_if"](keys=[self.key("cand", cand_id)], args=[1, *flat(fields)]):
            raise NotFound(f"candidate {cand_id} not found in run {self.tag}")

    def transition(self, cand_id: str, from_states: Iterable[str | State] | str, to_state: str | State,
                   **fields: Any) -> bool:  # fmt: skip
        """Atomically move a candidate to ``to_state`` (setting ``fields``) if its state is in ``from_states``."""
        if isinstance(from_states, str):
            from_states = [from_states]
        froms = sorted({_state(s) for s in from_states})
        self._check_fields(fields)
        keys = [self.key("cand", cand_id), self.key("cands")]
        args = [cand_id, self.key("cands", "state", ""), _state(to_state), len(froms), *froms, *flat(fields)]
        res = self._s["transition"](keys=keys, args=args)
        if res == -1:
            raise NotFound(f"candidate {cand_id} not found in run {self.tag}")
        return res == 1

    @staticmethod
    def _check_fields(fields: dict[str, Any]) -> None:
        bad = set(fields) - (_CAND_FIELDS - {"id", "state"})
        if bad:
            raise StoreError(f"cannot set candidate field(s) {sorted(bad)}; settable: "
                             f"{sorted(_CAND_FIELDS - {'id', 'state'})}")  # fmt: skip

    def _load(self, kind: str, ids: Iterable[str]) -> list[dict[str, Any]]:
        pipe = self.pipeline()
        for i in ids:
            pipe.hgetall(self.key(kind, i))
        return [unflat(h) for h in pipe.execute() if h]

    # -- queue and leases ----------------------------------------------------------------------
    def enqueue(self, job: Job, front: bool = False, pipeline: redis.client.Pipeline | None = None) -> None:
        """Store ``job`` and queue it (at the front for priority work). With ``pipeline``, only queue
        the script call on it; a refusal then surfaces as a ResponseError from ``pipeline.execute()``."""
        d = job.to_dict()
        attempt = int(d.pop("attempt"))
        d["state"] = JobState.QUEUED.value
        args = [job.id, "1" if front else "0", attempt, *flat(d)]
        keys = [self.key("job", job.id), self.key("queue")]
        if pipeline is not None:
            self._s["enqueue"](keys=keys, args=args, client=pipeline)
            return
        try:
            self._s["enqueue"](keys=keys, args=args)
        except redis.ResponseError as e:
            raise StoreError(f"cannot enqueue {job.id}: {e}; use a new id from next_id('j') or wait until it is done") from e

    def dispatch(self, worker: str, lease_seconds: float, now: float | None = None) -> Job | None:
        """Lease the next queued job to ``worker`` (attempt + 1); None if the queue is empty."""
        deadline = (time.time() if now is None else now) + lease_seconds
        h = self._s["dispatch"](keys=[self.key("queue"), self.key("running")],
                                   args=[self.key("job", ""), encode(worker), encode(float(deadline))])  # fmt: skip
        return Job.from_dict(unflat(h)) if h else None

    def renew_lease(self, job_id: str, attempt: int, lease_seconds: float, now: float | None = None) -> bool:
        deadline = (time.time() if now is None else now) + lease_seconds
        keys = [self.key("running"), self.key("job", job_id)]
        return self._s["renew"](keys=keys, args=[job_id, int(attempt), encode(float(deadline))]) == 1

    def record_result(self, result: Result) -> bool:
        """Store ``result`` if its job is running with that attempt (then the job is done).

        Otherwise (a late result of a lost attempt, a duplicate, an unknown job) it goes to the
        ``refused`` list with the reason, and False is returned."""
        keys = [self.key("running"), self.key("job", result.job), self.key("results"),
                self.key("results", "cand", result.cand), self.key("refused")]  # fmt: skip
        args = [result.job, int(result.attempt), result.to_json(), encode(time.time()), encode(result.job)]
        outcome = self._s["record"](keys=keys, args=args)
        if outcome != "ok":
            log.warning("refused result of %s attempt %s: %s", result.job, result.attempt, outcome)
        return outcome == "ok"

    def expired(self, now: float | None = None) -> list[Job]:
        """Running jobs whose lease deadline is before ``now``."""
        now = time.time() if now is None else now
        ids = self.r.zrangebyscore(self.key("running"), "-inf", f"({float(now)!r}")
        return [Job.from_dict(d) for d in self._load("job", ids)]

    def requeue(self, job_id: str, attempt: int, reason: str, max_lost: int, *, count_lost: bool = True,
                back: bool = False) -> Requeue:
        """Take a lost running attempt back: REQUEUED (front; ``back``: behind everything queued),
        FAILED (lost >= max_lost) or FENCED (not running with that attempt). ``count_lost=False`` (a
        clean stop, a preemption) never fails it."""
        keys = [self.key("running"), self.key("job", job_id), self.key("queue")]
        args = [job_id, int(attempt), int(max_lost), encode(reason), "1" if count_lost else "0", "1" if back else "0"]
        outcome = self._s["requeue"](keys=keys, args=args)
        log.info("requeue %s attempt %s (%s): %s", job_id, attempt, reason, outcome)
        return Requeue(outcome)

    def requeue_all_running(self, reason: str, max_lost: int, *,
                            count_lost: bool = True) -> list[tuple[str, Requeue]]:  # fmt: skip
        """requeue() every running job; returns (job id, outcome) pairs. Earliest lease ends up first."""
        jobs = self.running_jobs()
        return [(j.id, self.requeue(j.id, j.attempt, reason, max_lost, count_lost=count_lost)) for j in reversed(jobs)]

    def retarget(self, job_id: str, attempt: int, commit: str) -> bool:
        """Point a running attempt at another commit (its candidate was rebased as it was taken);
        False if that attempt is not running (fenced)."""
        keys = [self.key("running"), self.key("job", job_id)]
        return self._s["retarget"](keys=keys, args=[job_id, int(attempt), *flat({"commit": commit})]) == 1

    def drop(self, job_id: str, attempt: int) -> bool:
        """Take a running attempt off the lease list without a result (state ``removed``: its
        candidate went stale as it was taken); False if that attempt is not running (fenced)."""
        return self._s["drop"](keys=[self.key("running"), self.key("job", job_id)], args=[job_id, int(attempt)]) == 1

    def remove_from_queue(self, job_id: str) -> bool:
        return self._s["remove"](keys=[self.key("job", job_id), self.key("queue")], args=[job_id]) == 1

    def queued_jobs(self) -> list[Job]:
        ids = list(dict.fromkeys(self.r.lrange(self.key("queue"), 0, -1)))
        return [Job.from_dict(d) for d in self._load("job", ids) if d.get("state") == JobState.QUEUED.value]

    def running_jobs(self) -> list[Job]:
        return [Job.from_dict(d) for d in self._load("job", self.r.zrange(self.key("running"), 0, -1))]

    def queue_depth(self) -> int:
        return self.r.llen(self.key("queue"))

    def get_job(self, job_id: str) -> Job:
        return Job.from_dict(self.job_record(job_id))

    def job_state(self, job_id: str) -> JobState:
        """QUEUED | RUNNING | DONE | FAILED | REMOVED."""
        return JobState(self.job_record(job_id)["state"])

    def job_record(self, job_id: str) -> dict[str, Any]:
        """The stored job hash, decoded: the Job fields plus ``state`` and ``last_lost_reason``."""
        h = self.r.hgetall(self.key("job", job_id))
        if not h:
            raise NotFound(f"job {job_id} not found in run {self.tag}")
        return unflat(h)

    # -- results -------------------------------------------------------------------------------
    def results(self, cand: str | None = None) -> list[Result]:
        """Accepted results (all, or one candidate's), in finish order."""
        if cand is None:
            raw = self.r.lrange(self.key("results"), 0, -1)
        else:
            pipe = self.pipeline()
            for i in self.r.lrange(self.key("results", "cand", cand), 0, -1):
                pipe.lindex(self.key("results"), int(i))
            raw = pipe.execute()
        return [Result.from_json(s) for s in raw if s is not None]

    def refused(self) -> list[dict[str, Any]]:
        return [json.loads(s) for s in self.r.lrange(self.key("refused"), 0, -1)]

    # -- workers -------------------------------------------------------------------------------
    def heartbeat(self, worker: str, ttl: float, info: dict[str, Any]) -> None:
        pipe = self.pipeline()
        pipe.set(self.key("worker", worker), encode({**info, "worker": worker, "at": time.time()}),
                 px=max(1, int(ttl * 1000)))  # fmt: skip
        pipe.sadd(self.key("workers"), worker)
        pipe.execute()

    def live_workers(self) -> dict[str, dict[str, Any]]:
        """Workers whose last heartbeat has not expired, by name."""
        names = sorted(self.r.smembers(self.key("workers")))
        infos = self.r.mget([self.key("worker", n) for n in names]) if names else []
        return {n: json.loads(i) for n, i in zip(names, infos) if i is not None}

    # -- inbox (submit --patch / --idea) and human ideas ------------------------------------------
    def send(self, kind: str, text: str, description: str = "") -> None:
        """Queue a human patch or idea for the controller of this run."""
        if kind not in ("patch", "idea"):
            raise StoreError(f"inbox entries are patches or ideas, not {kind!r}")
        self.r.rpush(self.key("inbox"), json.dumps({"kind": kind, "text": text, "description": description,
                                                     "at": time.time()}))

    def receive(self, limit: int = 100) -> list[dict[str, Any]]:
        """Pop up to `limit` inbox entries, oldest first."""
        pipe = self.r.pipeline(transaction=True)
        pipe.lrange(self.key("inbox"), 0, limit - 1)
        pipe.ltrim(self.key("inbox"), limit, -1)
        entries, _ = pipe.execute()
        return [json.loads(e) for e in entries]

    def ideas(self) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.r.lrange(self.key("ideas"), 0, -1)]

    def set_ideas(self, ideas: list[dict[str, Any]]) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(self.key("ideas"))
        if ideas:
            pipe.rpush(self.key("ideas"), *[json.dumps(i) for i in ideas])
        pipe.execute()

    # -- events --------------------------------------------------------------------------------
    def add_event(self, kind: str, **data: Any) -> str:
        fields = {"kind": kind, "at": repr(time.time()), "data": encode(data)}
        return self.r.xadd(self.key("events"), fields, maxlen=EVENTS_MAXLEN, approximate=True)

    def events(self, count: int = 100, after: str | None = None) -> list[dict[str, Any]]:
        """The last ``count`` events (or the first ``count`` after stream id ``after``), oldest first,
        as {"id", "kind", "at", "data"}."""
        if after is None:
            entries = self.r.xrevrange(self.key("events"), count=count)[::-1]
        else:
            entries = self.r.xrange(self.key("events"), min=f"({after}", count=count)
        return [{"id": i, "kind": f["kind"], "at": float(f["at"]), "data": json.loads(f["data"])} for i, f in entries]
