"""The discrete-event farm behind bench/search.py: a synthetic landscape, a model of measurement noise
and the farm's policies on a simulated clock. What is and is not modelled is in bench/search.py's docstring."""

from __future__ import annotations

import bisect
import builtins
import collections
import contextlib
import functools
import hashlib
import heapq
import logging
import math
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.config import JudgeSettings, SearchSettings
from cluster.loop import judge, plan
from cluster.records import Candidate, Purpose, Result, RunStatus, State
from cluster.repo.merge import merge_lines
from proposer import mutate
from proposer.base import History, Outcome, fingerprint
from proposer.mutate import MutateProposer, _Surface

log = logging.getLogger("bench.simfarm")

TRAIN_PY = Path(__file__).resolve().parent.parent / "train.py"
PENDING = (State.QUEUED.value, State.RUNNING.value, State.FINISHED.value)  # as Intake.history lists them
FINAL = (State.MERGED.value, State.DISCARDED.value, State.STALE.value)  # outcomes the proposer learns from
TERMINAL = FINAL  # states a candidate never leaves
CRASH_SECONDS = 60.0
OPTIMUM = 0.946  # the landscape's best TRUE val_bpb (the default train.py scores ~0.998)
SCALE = 2.0  # multiplies every term: single-constant steps from the default gain 0.001 to 0.014
NOISE_MODELS = ("gpu", "iid")
LINE_MODES = ("honest", "all-runs")
FLOORS = ("pooled", "line")


def std_gauss(*key: Any) -> float:
    """A standard Gaussian that is a fixed function of ``key``: Box-Muller on two uniforms from the sha256 of
    its parts."""
    digest = hashlib.sha256("|".join(map(str, key)).encode()).digest()
    u1 = (int.from_bytes(digest[:8], "big") + 0.5) / 2.0**64  # in (0, 1]
    u2 = int.from_bytes(digest[8:16], "big") / 2.0**64
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


@dataclass(frozen=True)
class Noise:
    """How a measurement's error is drawn.

    ``gpu`` (the default): a run of code ``code`` on seed ``seed`` is off by
    ``seed_sd * g(code, seed) + jitter_sd * N(0, 1)``, where ``g`` is a fixed standard Gaussian of
    (world, code hash, seed): the same code on the same seed repeats itself up to kernel jitter, a
    new seed or any change to the code is a new draw. ``world`` is the simulation's replicate seed,
    so replicates are independent draws of the function ``g`` (within one replicate the 1-worker
    and the N-worker farm share it). ``seed_corr`` (an assumption; 0 by default) correlates
    same-seed runs of different code: ``g = sqrt(rho) z(seed) + sqrt(1 - rho) z(code, seed)``.

    ``iid`` (the model before 2026-12-01): every measurement draws an independent ``N(0, seed_sd)``."""

    model: str = "gpu"
    seed_sd: float = 0.002  # the published seed-to-seed spread of val_bpb
    jitter_sd: float = 0.0003  # the published difference between same-code, same-seed re-runs
    seed_corr: float = 0.0  # correlation of same-seed runs of DIFFERENT code (gpu only)

    def __post_init__(self) -> None:
        if self.model not in NOISE_MODELS:
            raise ValueError(f"noise model must be one of {NOISE_MODELS}, not {self.model!r}")
        if not 0.0 <= self.seed_corr <= 1.0:
            raise ValueError(f"seed_corr must be in [0, 1], not {self.seed_corr}")

    def seed_effect(self, world: Any, code: str, seed: int) -> float:
        """``g``: the standard-Gaussian error of (code, seed) in replicate ``world``, jitter left out."""
        own = std_gauss(world, code, seed)
        if self.seed_corr <= 0.0:
            return own
        shared = std_gauss(world, "any code", seed)
        return math.sqrt(self.seed_corr) * shared + math.sqrt(1.0 - self.seed_corr) * own

    def error(self, world: Any, code: str, seed: int, rng: random.Random) -> float:
        """The error of one measurement (``rng`` draws what is fresh on every run)."""
        if self.model == "iid":
            return rng.gauss(0.0, self.seed_sd)
        return self.seed_sd * self.seed_effect(world, code, seed) + self.jitter_sd * rng.gauss(0.0, 1.0)

    def describe(self) -> str:
        if self.model == "iid":
            return f"iid N(0, {self.seed_sd:g}) per measurement"
        corr = f", same-seed correlation across code {self.seed_corr:g} (assumed)" if self.seed_corr else ""
        return f"gpu-like: seed sd {self.seed_sd:g} fixed per (code, seed) + jitter sd {self.jitter_sd:g}{corr}"


def pairing(noise: Noise, n: int = 20000, seed: int = 0, line_runs: int = 3) -> dict[str, float]:
    """Standard deviation of (candidate - line) for a neutral candidate (true effect 0) under ``noise``, by
    simulation: the candidate's seed-1 run against the line's seed-1 run (paired: common random numbers),
    against its seed-2 run (unpaired), against the mean of the line's seeds 1..``line_runs`` (the
    baseline, as the judge compares), and against the mean of seeds ``line_runs``..2 ``line_runs`` - 1
    (a merged line's: seeds 3, 4, 5, since its seeds 1 and 2 were its candidate runs, so no line run
    shares the candidate's seed); ``same_code_same_seed``: two runs of one (code, seed), jitter alone;
    ``between_candidates_corr``: the correlation of two different neutral candidates' deltas against one
    merged line."""
    rng = random.Random(f"pairing-{seed}")
    out: dict[str, list[float]] = collections.defaultdict(list)
    for i in range(n):
        world = f"pair-{seed}-{i}"

        def run(code: str, s: int, world: str = world) -> float:
            return noise.error(world, code, s, rng)

        c1, other = run("cand", 1), run("other cand", 1)
        ls = {s: run("line", s) for s in range(1, 2 * line_runs)}
        merged_line = statistics.fmean(ls[s] for s in range(line_runs, 2 * line_runs))
        out["paired"].append(c1 - ls[1])
        out["unpaired"].append(c1 - ls[2])
        out["vs_baseline_mean"].append(c1 - statistics.fmean(ls[s] for s in range(1, line_runs + 1)))
        out["vs_merged_line_mean"].append(c1 - merged_line)
        out["other_vs_merged_line_mean"].append(other - merged_line)
        out["same_code_same_seed"].append(run("line", 1) - ls[1])
    sd = {k: statistics.pstdev(v) for k, v in out.items()}
    # how much two different neutral candidates of one line share: the line's mean, and with seed_corr > 0
    # their common seed-1 draw (every candidate's first run is seed 1, every merged line's runs are seeds 3-5)
    sd["between_candidates_corr"] = statistics.correlation(out["vs_merged_line_mean"], out["other_vs_merged_line_mean"])
    del sd["other_vs_merged_line_mean"]
    return sd


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
    """10th and 90th percentiles of ``speedup`` over seeds resampled with replacement (each side on its own);
    resamples where neither side reached the target (nan) are left out (before sorting: nan does not sort)."""
    rng = random.Random(seed)
    xs = [speedup(rng.choices(t_one, k=len(t_one)), rng.choices(t_many, k=len(t_many))) for _ in range(n)]
    xs = sorted(x for x in xs if not math.isnan(x))
    return (xs[len(xs) // 10], xs[(len(xs) * 9) // 10]) if xs else (math.nan, math.nan)


def gpu_hours_per_merge(o: Outcomes, until: float, changes: bool = False) -> float:
    """GPU-hours (workers x wall time, idle or busy) up to ``until`` per merge made by then; with ``changes``,
    per merged change (a combination of k candidates merges k changes at once)."""
    merges = sum(m.get("changes", 1) if changes else 1 for m in o.merges if m["t"] <= until)
    return o.workers * until / 3600 / merges if merges else math.inf


def speedup(t_one: list[float], t_many: list[float]) -> float:
    """Ratio of the median times to target (1 worker / many); inf (never) is a time like any other: a median of
    inf for many workers gives 0, for one worker inf; nan when neither reached it."""
    a, b = statistics.median(t_one), statistics.median(t_many)
    return math.nan if (math.isinf(a) and math.isinf(b)) or b == 0 else a / b


@functools.lru_cache(maxsize=64)
def _surface(source: str) -> _Surface:
    """``proposer.mutate._Surface`` once per source: it is pure after parsing, and the sim asks about one
    main line many times."""
    return _Surface(source)


def _compile(source: Any, filename: str, mode: str, *args: Any, **kwargs: Any) -> Any:
    """``compile`` for the proposer, skipping its check that a whole proposed train.py compiles: the sim's
    proposals replace literals with literals in a source that compiles, so they always do (~45 % of the
    sim's time). Its constant-only asserts are compiled as before."""
    if mode == "exec" and filename == "train.py":
        return None
    return builtins.compile(source, filename, mode, *args, **kwargs)


class _Outcomes(list):  # type: ignore[type-arg]
    """The history's outcomes (a list like any) carrying their arm scores, summed as they arrived."""

    def __init__(self, outcomes: list[Outcome], scores: dict[tuple[str, str], float]) -> None:
        super().__init__(outcomes)
        self.scores = dict(scores)


_arm_scores = mutate.arm_scores


def _scores(outcomes: list[Outcome]) -> dict[tuple[str, str], float]:
    """``mutate.arm_scores``, read off the sim's history when it carries them: summing every outcome on every
    proposal round is quadratic in the run's length (a 48 h 16-worker run has ~8,000)."""
    return dict(outcomes.scores) if isinstance(outcomes, _Outcomes) else _arm_scores(outcomes)


@contextlib.contextmanager
def _fast_proposer(fn: Any) -> Any:
    """Let the proposer dedupe with ``fn`` (the same function the sim's history uses), parse each main line
    once, skip its compile check (``_compile``) and take its arm scores from the history (``_scores``): the
    same proposals, several times faster (checked against the plain proposer); everything is restored on exit."""
    old_fp, old_surface, old_scores = mutate.fingerprint, mutate._Surface, mutate.arm_scores
    mutate.fingerprint, mutate._Surface, mutate.compile = fn, _surface, _compile  # type: ignore[attr-defined]
    mutate.arm_scores = _scores
    try:
        yield
    finally:
        mutate.fingerprint, mutate._Surface, mutate.arm_scores = old_fp, old_surface, old_scores
        del mutate.compile  # type: ignore[attr-defined]


@dataclass
class Job:
    id: str
    cand: str
    commit: str
    purpose: str
    seed: int = 0  # the k-th job ever queued for a commit gets seed k + 1 (cluster/loop/ledger.py: OpenJobs)
    front: bool = False  # queued at the front: on the critical path of a merge (confirmations, line runs)


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
    combos: int = 0  # combinations queued
    combos_merged: int = 0
    speculative: int = 0  # measurements made on a frontier (a base not yet the main line)
    speculative_lost: int = 0  # of those, on a frontier that did not merge
    preempted: int = 0  # runs stopped just after they started, to make room for the critical path
    preempted_s: float = 0.0  # worker seconds those had run
    repeats: int = 0  # measurements of a (code, seed) measured before: the GPU-like model repeats their error
    end: float = 0.0


class Sim:
    """A discrete-event run of the farm's policies with ``workers`` workers (see bench/search.py's docstring).

    ``noise``: how measurements err (``Noise``; the GPU-like model by default). ``line``: "honest" (the
    farm since 2026-12-01: the main line is measured by its own baseline-purpose runs only, so a merged
    commit gets ``baseline_runs`` fresh line runs, and once more beside every confirmation) or
    "all-runs" (before: every run of the main-line commit, its candidate runs included, and no line
    run beside a confirmation). ``floor``: "pooled" (the judge's sigma pools the repeats of
    every earlier main-line commit of the run, ``Line.history``) or "line" (the line's own repeats and
    the prior only, as before)."""

    def __init__(self, workers: int, seed: int, *, run_seconds: float = 330.0, noise: Noise | None = None,
                 line: str = "honest", floor: str = "pooled",
                 queue_margin: int = 2, jcfg: JudgeSettings | None = None,
                 source: str | None = None, exact_fingerprint: bool = False, scale: float = SCALE,
                 confirm_runs: int = 1, learn_from_stale: bool = False,
                 search: SearchSettings | None = None, diversity: bool = True, seed_by_code: bool = True) -> None:
        if line not in LINE_MODES or floor not in FLOORS:
            raise ValueError(f"line must be one of {LINE_MODES} and floor one of {FLOORS}, not {line!r}, {floor!r}")
        self.scale, self.confirm_runs, self.line_mode, self.floor = scale, confirm_runs, line, floor
        self.final = FINAL if learn_from_stale else (State.MERGED.value, State.DISCARDED.value)
        self.fp = fingerprint if exact_fingerprint else text_fingerprint
        self.noise = noise or Noise()
        self.w, self.seed, self.run_s, self.margin = workers, seed, run_seconds, queue_margin
        self.jcfg = jcfg or JudgeSettings()
        self.scfg = search or SearchSettings()
        self.diversity = diversity  # the proposer sees the changes in flight (History.pending_changes)
        self.seed_by_code = seed_by_code  # seeds count per code (tree), not per commit
        self.parallel = plan.parallel(self.scfg, workers)
        self.confirming: dict[str, float] = {}  # candidate in confirmation on the main line -> expected delta
        self.combined: set[frozenset[str]] = set()  # member sets combined so far
        self.pinned: set[str] = set()  # measured on the main line: their change conflicts with the frontier
        self.near: dict[str, dict[str, float]] = collections.defaultdict(dict)  # line -> near misses' deltas
        self.rng = random.Random(f"search-{seed}-{workers}")
        self.proposer = MutateProposer(seed=seed, profile="gpu")
        src = source if source is not None else TRAIN_PY.read_text()
        self.t, self.n = 0.0, 0
        self.sources = {"k0": src}
        self.code = {"k0": text_fingerprint(src)}  # the code hash the noise model keys on
        self.seeds: collections.Counter[str] = collections.Counter()  # commit -> seeds handed out so far
        self.line_queued: collections.Counter[str] = collections.Counter()  # commit -> line runs queued so far
        self.drawn: set[tuple[str, int]] = set()  # (code hash, seed) pairs measured so far
        self.consts: dict[str, dict[str, Any]] = {"k0": {k: c.value for k, c in _Surface(src).consts.items()}}
        self.cands: dict[str, Candidate] = {}
        self.live: dict[str, Candidate] = {}  # the candidates not yet in a TERMINAL state, in creation order
        self.tried: dict[str, set[str]] = collections.defaultdict(set)  # base -> fingerprints proposed on it
        self._outcome_keys: list[int] = []  # the proposer's outcomes so far, in creation order (see _history)
        self._outcomes: list[Outcome] = []
        self.scores: dict[tuple[str, str], float] = collections.defaultdict(float)  # mutate.arm_scores(_outcomes)
        self.by_commit: dict[str, list[Result]] = collections.defaultdict(list)
        self.queue: collections.deque[Job] = collections.deque()
        self.running: dict[int, Job] = {}
        self.started: dict[int, float] = {}  # worker -> when its running job started
        self.events: list[tuple[float, int, int, Job, float]] = []
        self.main, self.dry, self.dirty = "k0", 0, True
        self.asked_on = "k0"  # the base the proposer was last asked on
        self.lineage = ["k0"]  # every commit the main line has been (the pooled floor of --line all-runs)
        self.line_commits: dict[str, None] = {}  # commits with line runs, in order (the pooled floor)
        base = self._cand("k0", "k0", "baseline", "baseline", {}, 0)
        self.line_cand = {"k0": base}  # main-line commit -> the candidate that holds it
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
        self.cands[c.id] = self.live[c.id] = c
        if meta.get("fingerprint"):
            self.tried[base].add(meta["fingerprint"])
        return c

    def _enqueue_front(self, items: list[tuple[Candidate, Purpose]]) -> None:  # OpenJobs.enqueue_front
        """Queue ``items`` at the front, in this order, their seeds handed out in this order too."""
        at = len(self.queue)
        for cand, purpose in items:
            self._enqueue(cand, purpose)
        jobs = [self.queue.pop() for _ in range(len(self.queue) - at)]  # (the new ones, last first)
        for job in jobs:
            job.front = True
            self.queue.appendleft(job)

    def _enqueue(self, cand: Candidate, purpose: Purpose, front: bool = False) -> None:
        # the k-th job ever queued for a commit's code runs on seed k + 1 (OpenJobs: keyed by the tree, so a
        # source measured before under another commit, a revert, goes on with new seeds)
        key = self.code[cand.commit] if self.seed_by_code else cand.commit
        self.seeds[key] += 1
        self.line_queued[cand.commit] += purpose == Purpose.BASELINE
        job = Job(self._id("j"), cand.id, cand.commit, purpose.value, self.seeds[key], front)
        self.queue.appendleft(job) if front else self.queue.append(job)

    def _open(self, commit: str | None = None, cand: str | None = None) -> bool:
        jobs = list(self.queue) + list(self.running.values())
        return any((commit is None or j.commit == commit) and (cand is None or j.cand == cand) for j in jobs)

    def _commit(self, base: str, source: str, changes: list[dict[str, Any]]) -> str:
        """A new commit: its source, and its constants (its base's plus the changes it carries)."""
        k = self._id("k")
        self.sources[k] = source
        self.code[k] = text_fingerprint(source)
        self.consts[k] = dict(self.consts[base]) | {
            ch["name"]: tuple(ch["new"]) if isinstance(ch["new"], list) else ch["new"] for ch in changes}
        return k

    # ---------------------------------------------------------------- the controller's rules (see docstring)
    def line_runs(self, commit: str) -> list[Result]:  # cluster/loop/ledger.py: Measurements.line_runs
        """``commit``'s runs as a main line: its baseline-purpose runs (honest), or every run (all-runs)."""
        runs = self.by_commit[commit]
        return [r for r in runs if r.purpose == Purpose.BASELINE.value] if self.line_mode == "honest" else list(runs)

    def line(self) -> judge.Line:  # cluster/loop/controller.py: Controller.line
        """The main line as the judge sees it; with the pooled floor, ``history`` carries the spread of the
        line runs of every earlier main-line commit (per accelerator: sum of squares, degrees of freedom)."""
        history: dict[str, tuple[float, float]] = {}
        if self.floor == "pooled":
            # (Controller.line: every commit with line runs, the winners' early ones included)
            commits = [c for c in (self.line_commits if self.line_mode == "honest" else self.lineage) if c != self.main]
            rep = judge.repeats(self.line_runs(c) for c in commits)
            history = {acc: (h["ss"], h["df"]) for acc, h in rep.items()}
        return judge.Line(commit=self.main, results=self.line_runs(self.main), history=history)

    def sigma(self) -> float:
        """The noise sigma the judge uses now (on the sim's one accelerator)."""
        return judge.line_sigma(self.line(), "sim", self.jcfg)

    def _history(self, base: str) -> History:  # cluster/loop/intake.py: Intake.history
        """What the proposer sees, kept incrementally like Intake.history (a candidate's outcome is fixed once
        it is in a terminal state): the final candidates' outcomes in creation order, the fingerprints tried
        on the main line, the pending descriptions."""
        for c in [c for c in self.live.values() if c.state in TERMINAL]:
            del self.live[c.id]
            if c.origin == "baseline" or not c.decision or c.state not in self.final:
                continue
            runs = [r for r in self.by_commit[c.commit] if r.cand == c.id]
            ok = any(r.status == RunStatus.OK.value for r in runs)
            status = RunStatus.OK.value if ok else (runs[-1].status if runs else c.state)
            o = Outcome(meta=dict(c.meta, description=c.description, candidate=c.id), status=status,
                        delta=(c.decision.get("numbers") or {}).get("delta"), merged=c.state == State.MERGED.value)
            key = int(c.id[1:])
            at = bisect.bisect(self._outcome_keys, key)
            self._outcome_keys.insert(at, key)
            self._outcomes.insert(at, o)
            for arm, score in _arm_scores([o]).items():  # sums of multiples of 1/4: exact in any order
                self.scores[arm] += score
        best = [r.val_bpb for r in self.line_runs(self.main) if r.val_bpb is not None]
        first = [r.val_bpb for r in self.line_runs("k0") if r.val_bpb is not None]
        return History(base_commit=base, base_source=self.sources[base], tried=set(self.tried[base]),
                       outcomes=_Outcomes(self._outcomes, self.scores),
                       pending_descriptions=[c.description for c in self.live.values() if c.state in PENDING],
                       pending_changes=[c.meta.get("changes") or [] for c in self.live.values()
                                        if c.state in PENDING and c.origin != "baseline"] if self.diversity else [],
                       best_bpb=statistics.fmean(best) if best else None,
                       baseline_bpb=statistics.fmean(first) if first else None)

    def front(self) -> str:
        """Where new work goes (cluster/loop/plan.py): the frontier (the candidate in confirmation expected to
        gain most) when speculating, else the main line."""
        if not (self.scfg.speculate and self.parallel):
            return self.main
        busy = {m for c in self.confirming for m in plan.members(self.cands[c])}
        live = [(self.cands[cid], delta) for cid, delta in self.confirming.items()
                if self.cands[cid].base == self.main and cid not in busy]
        best = plan.frontier(live)
        return best.commit if best is not None else self.main

    def _fill(self) -> None:
        want = self.w + self.margin - len(self.queue)
        base = self.front()
        if base != self.asked_on:  # a merge or a new frontier: new neighbours (Intake.main_moved)
            self.asked_on, self.dry = base, 0
        if want <= 0 or self.dry >= 3:
            return
        added = 0
        for p in self.proposer.propose(want, self._history(base)):
            changes = p.meta.get("changes", [])
            commit = self._commit(base, p.source, changes)
            changed = sum(a != b for a, b in zip(self.sources[base].splitlines(), p.source.splitlines()))
            cand = self._cand(commit, base, p.description, p.origin,
                              dict(p.meta, fingerprint=self.fp(p.source)), changed)
            self._enqueue(cand, Purpose.MEASURE)
            added += 1
        self.dry = 0 if added else self.dry + 1

    def _take(self) -> Job | None:  # cluster/loop/controller.py: Controller.take
        """The next job; a queued candidate on another base than the front is first moved onto it (stale on a
        conflict or when its change is already there: its job is dropped and the next one taken)."""
        front = self.front()
        while self.queue:
            job = self.queue.popleft()
            cand = self.cands[job.cand]
            if (job.purpose != Purpose.MEASURE.value or cand.state != State.QUEUED.value or cand.base == front
                    or cand.id in self.confirming):  # (a combination is measured where it was made)
                return job
            if front != self.main and cand.base == self.main and not self._fits(cand, front):
                self.pinned.add(cand.id)  # (it conflicts with the frontier: measured on the main line)
                return job
            self._rebase(cand, front if self._fits(cand, front) else self.main, None, retest=False)
            if cand.state == State.QUEUED.value:
                job.commit = cand.commit  # (it keeps its seed, which the new code's count moves past: OpenJobs.opened)
                key = self.code[cand.commit] if self.seed_by_code else cand.commit
                self.seeds[key] = max(self.seeds[key], job.seed)
                return job
        return None

    def _preempt(self) -> None:  # cluster/loop/controller.py: Controller.preempt
        """Stop runs that started less than ``preempt_seconds`` ago and have lost their point, to start them
        again: first looks at a base the work has moved on from (the front changed), and, while critical-path
        jobs wait for a worker, the most recently started first looks. They go back to the queue, behind the
        critical jobs (a first look preempts nothing)."""
        window = self.scfg.preempt_seconds
        if window <= 0 or not self.parallel:
            return
        need = sum(1 for j in self.queue if j.front) - (self.w - len(self.running))
        front = self.front()
        young = [(self.started[w], w, front if j.cand in self.pinned else self.cands[j.cand].base)
                 for w, j in self.running.items()
                 if j.purpose == Purpose.MEASURE.value and not j.front and j.cand not in self.confirming
                 and self.cands[j.cand].state == State.RUNNING.value and self.t - self.started[w] <= window]
        back = []
        for w in plan.preemptions(young, need, front):
            job, started = self.running[w], self.started[w]
            cand = self.cands[job.cand]
            del self.running[w]
            cand.state = State.QUEUED.value
            self.out.runs[job.purpose] -= 1
            self.out.starts.remove(started)
            self.out.preempted += 1
            self.out.preempted_s += self.t - started
            back.append(job)
        if back:
            at = sum(1 for j in self.queue if j.front)  # (the critical jobs are all at the front)
            for job in reversed(back):
                self.queue.insert(at, job)

    def _fits(self, cand: Candidate, base: str) -> bool:
        """Whether ``cand``'s change rebases cleanly onto ``base`` (and is not already there)."""
        ours, theirs = self.sources[base].encode(), self.sources[cand.commit].encode()
        merged = None if ours == theirs else merge_lines(self.sources[cand.base].encode(), ours, theirs)
        return merged is not None and merged != ours

    def _dispatch(self) -> None:
        for w in range(self.w):
            if w in self.running:
                continue
            job = self._take()
            if job is None:
                return
            cand = self.cands[job.cand]
            if cand.state == State.QUEUED.value:
                cand.state = State.RUNNING.value
            if job.purpose == Purpose.MEASURE.value and cand.base != self.main:
                self.out.speculative += 1
            crash = true_bpb(self.consts[job.commit], self.scale) is None
            seconds = CRASH_SECONDS if crash else self.run_s * (1 + self.rng.uniform(-0.02, 0.02))
            self.running[w], self.started[w] = job, self.t
            heapq.heappush(self.events, (self.t + seconds, self.n, w, job, self.t))
            self.out.runs[job.purpose] += 1
            self.out.starts.append(self.t)

    def _record(self, w: int, job: Job, started: float) -> None:
        del self.running[w]
        v = true_bpb(self.consts[job.commit], self.scale)
        ok = v is not None
        error = self.noise.error(self.seed, self.code[job.commit], job.seed, self.rng) if ok else 0.0
        if ok:
            draw = (self.code[job.commit], job.seed)
            self.out.repeats += draw in self.drawn
            self.drawn.add(draw)
        r = Result(job=job.id, cand=job.cand, commit=job.commit, attempt=1,
                   status=RunStatus.OK.value if ok else RunStatus.CRASH.value,
                   val_bpb=v + error if ok else None, accelerator="sim", seed=job.seed,
                   started_at=started, finished_at=self.t, wall_seconds=self.t - started, purpose=job.purpose,
                   reason="" if ok else "out of memory")
        self.by_commit[job.commit].append(r)
        if job.purpose == Purpose.BASELINE.value:
            self.line_commits[job.commit] = None
        self.dirty = True
        cand = self.cands[job.cand]
        if not self._open(cand=cand.id) and cand.state in (State.RUNNING.value, State.QUEUED.value):
            cand.state = State.FINISHED.value

    def _own_runs(self, cand: Candidate) -> list[Result]:
        """A candidate's own runs of its commit (its early line runs, purpose baseline, are the line's)."""
        return [r for r in self.by_commit[cand.commit] if r.cand == cand.id and r.purpose != Purpose.BASELINE.value]

    def _judge(self) -> None:  # cluster/loop/controller.py: Controller.judge
        if not self.dirty:
            return
        self.dirty = False
        line = self.line()
        # (no pass waits for the line as a whole: a confirmation waits for the line runs queued beside it)
        waiting_on = {self.cands[c].commit for c in self.confirming}  # a frontier's work waits for its verdict
        busy = {m for c in self.confirming for m in plan.members(self.cands[c])}  # members of a pending combination
        decisions = []
        for cand in [c for c in self.live.values() if c.state == State.FINISHED.value]:
            if cand.origin == "baseline" or cand.commit == line.commit:
                cand.state = State.MERGED.value
                continue
            if cand.base in waiting_on or cand.id in busy or self._line_behind(cand):
                continue
            d = judge.decide(cand, self._own_runs(cand), line, self.jcfg, base_results=self.line_runs(cand.base))
            decisions.append((cand, plan.verdict(cand, d)))
        won = plan.winners(decisions, line.commit)
        for c, d in decisions:
            if plan.near_miss(c, d, line.commit, self.scfg):
                self.near[line.commit][c.id] = d.numbers["delta"]
        pool = [(c, d.numbers["delta"]) for c, d in won] + [
            (self.cands[cid], delta) for cid, delta in self.near[line.commit].items() if cid not in busy] + [
            (self.cands[cid], delta) for cid, delta in self.confirming.items()
            if self.cands[cid].base == line.commit and cid not in busy and not plan.members(self.cands[cid])
            and cid not in {c.id for c, _ in won}]
        pending = any(plan.members(self.cands[cid]) and self.cands[cid].base == line.commit for cid in self.confirming)
        combo = plan.combination(pool, pending, self.combined, self.scfg)
        if combo:
            self._combine(combo, dict((c.id, delta) for c, delta in pool), line)
            busy |= {c.id for c in combo}
        judged_now = {c.id for c, _ in decisions}  # (those are compared by pick_merge itself)
        confirming = [(self.cands[cid], delta) for cid, delta in self.confirming.items()
                      if cid not in busy and cid not in judged_now]
        winner = judge.pick_merge([d for c, d in decisions if d.action == "merge" and c.id not in busy
                                   and not plan.hold_merge(c, d.numbers["delta"], confirming)])
        for cand, d in decisions:
            if cand.id in busy or (d.action == "merge" and cand.id != winner):
                continue
            if d.action == "measure_line":
                if not self._open(commit=line.commit):
                    self._enqueue_front([(self.line_cand[line.commit], Purpose.BASELINE)]
                                        * int(d.numbers.get("line_runs_needed", 1)))
                continue
            self._apply(cand, d, line)

    def _combine(self, parts: list[Candidate], deltas: dict[str, float], line: judge.Line) -> None:
        """One candidate carrying the changes of ``parts`` (3-way merged in order; a part that conflicts is
        left out), measured twice at once, with its own line runs when speculating."""
        self.combined.add(frozenset(c.id for c in parts))
        base = self.sources[line.commit].encode()
        merged, used = self.sources[parts[0].commit].encode(), [parts[0]]
        for c in parts[1:]:
            got = merge_lines(base, merged, self.sources[c.commit].encode())
            if got is not None and got != merged:
                merged, used = got, used + [c]
        if len(used) < 2:
            return
        changes = [ch for c in used for ch in c.meta.get("changes", [])]
        commit = self._commit(line.commit, merged.decode(), changes)
        ids = [c.id for c in used]
        cand = self._cand(commit, line.commit, " + ".join(c.description for c in used), plan.COMBINE,
                          {"combination": ids, "changes": changes, "member_deltas": {i: deltas[i] for i in ids}},
                          sum(c.lines_added for c in used))
        self.out.combos += 1
        self._enqueue_front([(cand, Purpose.MEASURE), (cand, Purpose.CONFIRM), *self._beside(cand, line)])
        self.confirming[cand.id] = plan.expected_delta(cand, None, deltas)

    def _beside(self, cand: Candidate, line: judge.Line) -> list[tuple[Candidate, Purpose]]:  # Window.beside
        """What runs beside a confirmation, right behind it: the line once more, and (early line runs) the
        candidate's own line runs, so that if it merges nothing waits for them."""
        items: list[tuple[Candidate, Purpose]] = []
        if self.line_mode == "honest" and cand.base == line.commit == self.main:
            items.append((self.line_cand[line.commit], Purpose.BASELINE))
            cand.meta = dict(cand.meta, line_wait=[line.commit, self.line_queued[line.commit] + 1])
        if self.scfg.early_line_runs and self.parallel and cand.base == self.main:
            items += [(cand, Purpose.BASELINE)] * self.jcfg.baseline_runs
        return items

    def _line_behind(self, cand: Candidate) -> bool:
        """Whether ``cand``'s confirmation is still waiting for the line run queued beside it."""
        wait = cand.meta.get("line_wait")
        return bool(wait) and wait[0] == self.main and len(self.line_runs(self.main)) < wait[1]

    def _settle(self, cand: Candidate) -> None:
        """``cand`` is judged: it no longer holds a frontier, and work measured on it is judged next pass."""
        if self.confirming.pop(cand.id, None) is not None:
            self.dirty = True
            if cand.state != State.MERGED.value:
                self.out.speculative_lost += sum(
                    1 for c in self.cands.values() if c.base == cand.commit and c.id != cand.id)

    def _apply(self, cand: Candidate, d: judge.Decision, line: judge.Line) -> None:
        decision = {"action": d.action, "reason": d.reason, "numbers": d.numbers}
        if d.action == "merge":
            self.dirty = True
            before, after = self.true(self.main), self.true(cand.commit)
            cand.state, cand.decision, self.main = State.MERGED.value, decision, cand.commit
            self.lineage.append(cand.commit)
            self.line_cand[cand.commit] = cand
            parts = plan.members(cand)
            for m in parts:  # its members are in the main line with it
                member = self.cands[m]
                self.near[line.commit].pop(m, None)
                member.state = State.MERGED.value
                member.decision = {"action": "combined", "numbers": {"delta": cand.meta["member_deltas"][m]}}
            self.out.combos_merged += bool(parts)
            self.out.merges.append({"t": self.t, "before": before, "after": after, "id": cand.id,
                                    "description": cand.description, "changes": max(1, len(parts))})
            self.out.trajectory.append((self.t, after))
            self._settle(cand)
            for other in [c for c in self.confirming if self.cands[c].base != self.main]:
                self.confirming.pop(other)  # on the old line now: judged as any old-base candidate
        elif d.action == "confirm":
            cand.state, cand.decision = State.QUEUED.value, decision
            # the farm queues 1 confirmation; more is a policy variant (--confirm-runs)
            self._enqueue_front([(cand, Purpose.CONFIRM)] * self.confirm_runs + self._beside(cand, line))
            if cand.base == self.main:
                self.confirming[cand.id] = plan.expected_delta(cand, d, {})
        elif d.action == "rebase":
            self._settle(cand)
            if cand.meta.get("rebased_after_win"):
                cand.state, cand.decision = State.DISCARDED.value, decision
            else:
                self._rebase(cand, self.main, decision, retest=True)
        elif d.action == "discard":
            self._settle(cand)
            cand.state, cand.decision = State.DISCARDED.value, decision
            for m in plan.members(cand):  # a near miss gets one combination
                self.near[cand.base].pop(m, None)

    def _rebase(self, cand: Candidate, new_base: str, decision: dict[str, Any] | None, retest: bool) -> None:
        ours, theirs = self.sources[new_base].encode(), self.sources[cand.commit].encode()
        merged = None if ours == theirs else merge_lines(self.sources[cand.base].encode(), ours, theirs)
        if merged is None or merged == ours:
            cand.state, cand.decision = State.STALE.value, {"action": "stale"}
            self.out.stale += 1
            return
        cand.commit = self._commit(new_base, merged.decode(), cand.meta.get("changes", []))
        cand.base, cand.state = new_base, State.QUEUED.value
        if cand.meta.get("fingerprint"):
            self.tried[new_base].add(cand.meta["fingerprint"])
        cand.meta = dict(cand.meta, rebased_after_win=True) if retest else cand.meta
        cand.decision = decision or cand.decision
        if retest:
            self.out.retests += 1
            self._enqueue(cand, Purpose.MEASURE)

    # ---------------------------------------------------------------- the event loop
    def run(self, horizon_s: float, target: float = -math.inf) -> Outcomes:
        """Step until ``horizon_s`` simulated seconds pass or the main line's true value reaches ``target``."""
        with _fast_proposer(self.fp):
            return self._run(horizon_s, target)

    def _run(self, horizon_s: float, target: float) -> Outcomes:
        while True:
            self._judge()
            if self.true(self.main) <= target:
                break
            self._fill()
            self._preempt()
            self._dispatch()
            if not self.events or self.events[0][0] > horizon_s:
                self.t = horizon_s
                break
            self.t, _, w, job, started = heapq.heappop(self.events)
            if self.running.get(w) is job:  # (else it was preempted)
                self._record(w, job, started)
        self.out.end = self.t
        return self.out
