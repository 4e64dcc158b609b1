"""The discrete-event farm behind bench/search.py: a synthetic landscape and the farm's policies on a
simulated clock. What is and is not modelled is in bench/search.py's docstring."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import heapq
import logging
import math
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.config import JudgeSettings
from cluster.loop import judge
from cluster.records import Candidate, Purpose, Result, RunStatus, State
from cluster.repo.merge import merge_lines
from proposer import mutate
from proposer.base import History, Outcome, fingerprint
from proposer.mutate import MutateProposer, _Surface

log = logging.getLogger("bench.simfarm")

TRAIN_PY = Path(__file__).resolve().parent.parent / "train.py"
PENDING = (State.QUEUED.value, State.RUNNING.value, State.FINISHED.value)  # as Intake.history lists them
FINAL = (State.MERGED.value, State.DISCARDED.value, State.STALE.value)  # outcomes the proposer learns from
CRASH_SECONDS = 60.0
OPTIMUM = 0.946  # the landscape's best TRUE val_bpb (the default train.py scores ~0.998)
SCALE = 2.0  # multiplies every term: single-constant steps from the default gain 0.001 to 0.014


def text_fingerprint(source: str) -> str:
    """sha256 of the raw text: a stand-in for ``proposer.base.fingerprint`` (which tokenizes all of train.py,
    ~15 ms) that gives the same equality on the sim's sources, since they differ only in literal tokens."""
    return hashlib.sha256(source.encode()).hexdigest()


def true_bpb(v: dict[str, Any], scale: float = SCALE) -> float | None:
    """The landscape: TRUE val_bpb of a train.py with constants ``v`` (gpu profile), None = it crashes."""
    width = v["DEPTH"] * v["ASPECT_RATIO"]
    if v["DEVICE_BATCH_SIZE"] >= 256 or width * v["DEVICE_BATCH_SIZE"] > 2048 * 128:
        return None  # out of memory
    ln, l2 = math.log, math.log2
    batch = v["TOTAL_BATCH_SIZE"]
    matrix_lr_best = 0.06 * math.sqrt(batch / 2**19)  # interaction: the best lr grows with the batch
    beta2 = v["ADAM_BETAS"][1]
    terms = (
        0.020 * ln(v["MATRIX_LR"] / matrix_lr_best) ** 2,
        0.008 * ln(v["EMBEDDING_LR"] / 0.9) ** 2,
        0.010 * ln(v["UNEMBEDDING_LR"] / 0.008) ** 2,
        0.060 * (v["WARMDOWN_RATIO"] - 0.75) ** 2,
        0.010 * l2(v["DEPTH"] / 12) ** 2,  # interaction: depth and width (depth x aspect) share the shape
        0.006 * l2(width / 768) ** 2,
        0.003 * ln(v["WEIGHT_DECAY"] / 0.1) ** 2,
        0.002 * ln((1 - beta2) / 0.02) ** 2 if 0 < beta2 < 1 else 1.0,
        0.004 * l2(batch / 2**18) ** 2,  # a fixed time budget: smaller batches take more steps
        0.0015 * max(0.0, l2(128 / v["DEVICE_BATCH_SIZE"])),  # small device batches waste the GPU
    )
    return OPTIMUM + scale * sum(terms)


def time_to(trajectory: list[tuple[float, float]], target: float) -> float:
    """First time the (time, true value) trajectory of the main line is at or below ``target``; inf if never."""
    return next((t for t, v in trajectory if v <= target), math.inf)


def bootstrap(t_one: list[float], t_many: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """10th and 90th percentiles of ``speedup`` over seeds resampled with replacement (each side on its own)."""
    rng = random.Random(seed)
    xs = sorted(speedup(rng.choices(t_one, k=len(t_one)), rng.choices(t_many, k=len(t_many))) for _ in range(n))
    xs = [x for x in xs if not math.isnan(x)]
    return (xs[len(xs) // 10], xs[(len(xs) * 9) // 10]) if xs else (math.nan, math.nan)


def gpu_hours_per_merge(o: Outcomes, until: float) -> float:
    """GPU-hours (workers x wall time, idle or busy) up to ``until`` per merge made by then."""
    merges = sum(m["t"] <= until for m in o.merges)
    return o.workers * until / 3600 / merges if merges else math.inf


def speedup(t_one: list[float], t_many: list[float]) -> float:
    """Ratio of the median times to target (1 worker / many); inf (never) is a time like any other: a median of
    inf for many workers gives 0, for one worker inf; nan when neither reached it."""
    a, b = statistics.median(t_one), statistics.median(t_many)
    return math.nan if (math.isinf(a) and math.isinf(b)) or b == 0 else a / b


@contextlib.contextmanager
def _fingerprint(fn: Any) -> Any:
    """Let the proposer dedupe with ``fn`` (the same function the sim's history uses)."""
    old, mutate.fingerprint = mutate.fingerprint, fn
    try:
        yield
    finally:
        mutate.fingerprint = old


@dataclass
class Job:
    id: str
    cand: str
    commit: str
    purpose: str


@dataclass
class Outcomes:
    workers: int
    seed: int
    trajectory: list[tuple[float, float]]  # (seconds, true val_bpb of the main line), from t=0
    merges: list[dict[str, Any]] = field(default_factory=list)  # t, before, after, id, description
    runs: collections.Counter = field(default_factory=collections.Counter)  # by purpose
    starts: list[float] = field(default_factory=list)  # when each run started
    stale: int = 0
    retests: int = 0
    end: float = 0.0


class Sim:
    """A discrete-event run of the farm's policies with ``workers`` workers (see the module docstring)."""

    def __init__(self, workers: int, seed: int, *, run_seconds: float = 330.0, noise: float = 0.002,
                 queue_margin: int = 2, jcfg: JudgeSettings | None = None,
                 source: str | None = None, exact_fingerprint: bool = False, scale: float = SCALE,
                 confirm_runs: int = 1, learn_from_stale: bool = False) -> None:
        self.scale, self.confirm_runs = scale, confirm_runs
        self.final = FINAL if learn_from_stale else (State.MERGED.value, State.DISCARDED.value)
        self.fp = fingerprint if exact_fingerprint else text_fingerprint
        self.w, self.seed, self.run_s, self.noise, self.margin = workers, seed, run_seconds, noise, queue_margin
        self.jcfg = jcfg or JudgeSettings()
        self.rng = random.Random(f"search-{seed}-{workers}")
        self.proposer = MutateProposer(seed=seed, profile="gpu")
        src = source if source is not None else TRAIN_PY.read_text()
        self.t, self.n = 0.0, 0
        self.sources = {"k0": src}
        self.consts: dict[str, dict[str, Any]] = {"k0": {k: c.value for k, c in _Surface(src).consts.items()}}
        self.cands: dict[str, Candidate] = {}
        self.by_commit: dict[str, list[Result]] = collections.defaultdict(list)
        self.queue: collections.deque[Job] = collections.deque()
        self.running: dict[int, Job] = {}
        self.events: list[tuple[float, int, int, Job, float]] = []
        self.main, self.dry, self.dirty = "k0", 0, True
        base = self._cand("k0", "k0", "baseline", "baseline", {}, 0)
        for _ in range(self.jcfg.baseline_runs):
            self._enqueue(base, Purpose.BASELINE)
        self.out = Outcomes(workers, seed, [(0.0, self.true(self.main))])

    # ---------------------------------------------------------------- helpers
    def _id(self, kind: str) -> str:
        self.n += 1
        return f"{kind}{self.n}"

    def true(self, commit: str) -> float:
        v = true_bpb(self.consts[commit], self.scale)
        return math.inf if v is None else v

    def _cand(self, commit: str, base: str, desc: str, origin: str, meta: dict[str, Any], changed: int) -> Candidate:
        c = Candidate(id=self._id("c"), commit=commit, base=base, branch="", description=desc, origin=origin,
                      state=State.QUEUED.value, lines_added=changed, lines_removed=changed, created_at=self.t, meta=meta)
        self.cands[c.id] = c
        return c

    def _enqueue(self, cand: Candidate, purpose: Purpose, front: bool = False) -> None:
        job = Job(self._id("j"), cand.id, cand.commit, purpose.value)
        self.queue.appendleft(job) if front else self.queue.append(job)

    def _open(self, commit: str | None = None, cand: str | None = None) -> bool:
        jobs = list(self.queue) + list(self.running.values())
        return any((commit is None or j.commit == commit) and (cand is None or j.cand == cand) for j in jobs)

    def _commit(self, base: str, source: str, changes: list[dict[str, Any]]) -> str:
        """A new commit: its source, and its constants (its base's plus the changes it carries)."""
        k = self._id("k")
        self.sources[k] = source
        self.consts[k] = dict(self.consts[base]) | {
            ch["name"]: tuple(ch["new"]) if isinstance(ch["new"], list) else ch["new"] for ch in changes}
        return k

    # ---------------------------------------------------------------- the controller's rules (see docstring)
    def _history(self) -> History:  # cluster/loop/intake.py: Intake.history
        cands = list(self.cands.values())
        outcomes = []
        for c in cands:
            if c.origin == "baseline" or not c.decision or c.state not in self.final:
                continue
            runs = [r for r in self.by_commit[c.commit] if r.cand == c.id]
            ok = any(r.status == RunStatus.OK.value for r in runs)
            status = RunStatus.OK.value if ok else (runs[-1].status if runs else c.state)
            outcomes.append(Outcome(meta=dict(c.meta, description=c.description, candidate=c.id), status=status,
                                    delta=(c.decision.get("numbers") or {}).get("delta"),
                                    merged=c.state == State.MERGED.value))
        tried = {c.meta["fingerprint"] for c in cands if c.base == self.main and c.meta.get("fingerprint")}
        best = [r.val_bpb for r in self.by_commit[self.main] if r.val_bpb is not None]
        base = [r.val_bpb for r in self.by_commit["k0"] if r.val_bpb is not None]
        return History(base_commit=self.main, base_source=self.sources[self.main], tried=tried, outcomes=outcomes,
                       pending_descriptions=[c.description for c in cands if c.state in PENDING],
                       best_bpb=statistics.fmean(best) if best else None,
                       baseline_bpb=statistics.fmean(base) if base else None)

    def _fill(self) -> None:
        want = self.w + self.margin - len(self.queue)
        if want <= 0 or self.dry >= 3:
            return
        added = 0
        for p in self.proposer.propose(want, self._history()):
            changes = p.meta.get("changes", [])
            commit = self._commit(self.main, p.source, changes)
            changed = sum(a != b for a, b in zip(self.sources[self.main].splitlines(), p.source.splitlines()))
            cand = self._cand(commit, self.main, p.description, p.origin,
                              dict(p.meta, fingerprint=self.fp(p.source)), changed)
            self._enqueue(cand, Purpose.MEASURE)
            added += 1
        self.dry = 0 if added else self.dry + 1

    def _dispatch(self) -> None:
        for w in range(self.w):
            if w in self.running or not self.queue:
                continue
            job = self.queue.popleft()
            cand = self.cands[job.cand]
            if cand.state == State.QUEUED.value:
                cand.state = State.RUNNING.value
            crash = true_bpb(self.consts[job.commit], self.scale) is None
            seconds = CRASH_SECONDS if crash else self.run_s * (1 + self.rng.uniform(-0.02, 0.02))
            self.running[w] = job
            heapq.heappush(self.events, (self.t + seconds, self.n, w, job, self.t))
            self.out.runs[job.purpose] += 1
            self.out.starts.append(self.t)

    def _record(self, w: int, job: Job, started: float) -> None:
        del self.running[w]
        v = true_bpb(self.consts[job.commit], self.scale)
        ok = v is not None
        r = Result(job=job.id, cand=job.cand, commit=job.commit, attempt=1,
                   status=RunStatus.OK.value if ok else RunStatus.CRASH.value,
                   val_bpb=v + self.rng.gauss(0.0, self.noise) if ok else None, accelerator="sim",
                   started_at=started, finished_at=self.t, wall_seconds=self.t - started, purpose=job.purpose,
                   reason="" if ok else "out of memory")
        self.by_commit[job.commit].append(r)
        self.dirty = True
        cand = self.cands[job.cand]
        if not self._open(cand=cand.id) and cand.state in (State.RUNNING.value, State.QUEUED.value):
            cand.state = State.FINISHED.value

    def _judge(self) -> None:
        if not self.dirty:
            return
        self.dirty = False
        line = judge.Line(commit=self.main, results=list(self.by_commit[self.main]))
        if self._open(commit=self.main):
            return  # wait for the main line's own numbers
        decisions = []
        for cand in [c for c in self.cands.values() if c.state == State.FINISHED.value]:
            if cand.origin == "baseline" or cand.commit == line.commit:
                cand.state = State.MERGED.value
                continue
            results = [r for r in self.by_commit[cand.commit] if r.cand == cand.id]
            d = judge.decide(cand, results, line, self.jcfg, base_results=self.by_commit[cand.base])
            decisions.append((cand, d))
        winner = judge.pick_merge([d for _, d in decisions if d.action == "merge"])
        for cand, d in decisions:
            if d.action == "merge" and cand.id != winner:
                continue
            if d.action == "measure_line":
                if not self._open(commit=line.commit):
                    main_cand = next(c for c in self.cands.values()
                                     if c.commit == line.commit and c.state == State.MERGED.value)
                    for _ in range(int(d.numbers.get("line_runs_needed", 1))):
                        self._enqueue(main_cand, Purpose.BASELINE, front=True)
                continue
            self._apply(cand, d)

    def _apply(self, cand: Candidate, d: judge.Decision) -> None:
        decision = {"action": d.action, "reason": d.reason, "numbers": d.numbers}
        if d.action == "merge":
            self.dirty = True
            before, after = self.true(self.main), self.true(cand.commit)
            cand.state, cand.decision, self.main = State.MERGED.value, decision, cand.commit
            self.out.merges.append({"t": self.t, "before": before, "after": after, "id": cand.id,
                                    "description": cand.description})
            self.out.trajectory.append((self.t, after))
            self._rebase_pending(cand.commit)
        elif d.action == "confirm":
            cand.state, cand.decision = State.QUEUED.value, decision
            for _ in range(self.confirm_runs):  # the farm queues 1; more is a policy variant (--confirm-runs)
                self._enqueue(cand, Purpose.CONFIRM, front=True)
        elif d.action == "rebase":
            if cand.meta.get("rebased_after_win"):
                cand.state, cand.decision = State.DISCARDED.value, decision
            else:
                self._rebase(cand, self.main, decision, retest=True)
        elif d.action == "discard":
            cand.state, cand.decision = State.DISCARDED.value, decision

    def _rebase(self, cand: Candidate, new_base: str, decision: dict[str, Any] | None, retest: bool) -> None:
        ours, theirs = self.sources[new_base].encode(), self.sources[cand.commit].encode()
        merged = None if ours == theirs else merge_lines(self.sources[cand.base].encode(), ours, theirs)
        if merged is None or merged == ours:
            cand.state, cand.decision = State.STALE.value, {"action": "stale"}
            self.out.stale += 1
            return
        cand.commit = self._commit(new_base, merged.decode(), cand.meta.get("changes", []))
        cand.base, cand.state = new_base, State.QUEUED.value
        cand.meta = dict(cand.meta, rebased_after_win=True) if retest else cand.meta
        cand.decision = decision or cand.decision
        if retest:
            self.out.retests += 1
            self._enqueue(cand, Purpose.MEASURE)

    def _rebase_pending(self, new_main: str) -> None:
        for job in list(self.queue):
            cand = self.cands[job.cand]
            if cand.state != State.QUEUED.value or cand.base == new_main or job.purpose != Purpose.MEASURE.value:
                continue
            self.queue.remove(job)
            self._rebase(cand, new_main, None, retest=False)
            if cand.state == State.QUEUED.value:
                self._enqueue(cand, Purpose.MEASURE)

    # ---------------------------------------------------------------- the event loop
    def run(self, horizon_s: float, target: float = -math.inf) -> Outcomes:
        """Step until ``horizon_s`` simulated seconds pass or the main line's true value reaches ``target``."""
        with _fingerprint(self.fp):
            return self._run(horizon_s, target)

    def _run(self, horizon_s: float, target: float) -> Outcomes:
        while True:
            self._judge()
            if self.true(self.main) <= target:
                break
            self._fill()
            self._dispatch()
            if not self.events or self.events[0][0] > horizon_s:
                self.t = horizon_s
                break
            self.t, _, w, job, started = heapq.heappop(self.events)
            self._record(w, job, started)
        self.out.end = self.t
        return self.out
