"""The merge gate: a pure policy that says what to do with a measured candidate.

val_bpb moves by about 0.002 between seeds, so "lower than the best so far" merges noise and
then every later candidate is compared with a lucky main line. The judge instead asks whether a
candidate beats the main line *measured on the same accelerator* by more than the noise can
explain, charges extra code for its complexity ("simpler is better"), and makes an apparent
winner replicate before it enters the main line.

Noise estimate. The main line is measured only a few times (``baseline_runs``, 3 by default),
and the standard deviation of 3 numbers is itself very noisy: about one time in five it comes out
below half the true sigma, which alone would let ~5 % of pure-noise candidates through. So the
line's own sample variance is pooled with the measured spread of the run's other commits measured
as a line on the same accelerator (earlier main lines, and winners whose own line runs started
beside their confirmation, merged or not; ``Line.history``: their sums of squares and degrees of freedom)
and with a prior sigma (``default_noise``) that counts as ``noise_prior_df`` degrees of freedom::

    sigma^2 = (SS_line + SS_history + noise_prior_df * prior^2) / (n - 1 + df_history + noise_prior_df)

so the measured floor replaces the prior as repeats accumulate. With no repeats at all sigma is
the prior itself; it is never below ``min_noise``. ``noise_prior_df = 0`` gives the plain pooled
sample standard deviation. Every repeat is a new seed (the farm hands the k-th measurement of a
commit seed k + 1), so the spread is the seed-to-seed noise that decides a result, not kernel
jitter; the line is measured by its own runs only (the runs of the candidate that became the line
were selected for looking good, and never anchor it).

A target that seeds itself (``Line.same_seed``) repeats one draw: its repeats measure jitter, not
seed noise. The judge then claims no measured floor (the prior alone) and counts every commit's
runs as one independent measurement, the candidate's and the line's alike.

Seeds. A candidate whose ok runs on different seeds gave the very same val_bpb does not use the
farm's seed (seed engineering): it is discarded as a cheat.

Confirmation. The first run of a winner was *selected* for looking good (winner's curse), so
pooling it with its confirmation still carries its luck. A confirmed candidate merges only if
all its runs together clear the bar and the confirmation runs alone (``purpose == "confirm"``,
else every run but the first) clear it too. With the defaults this keeps the false-merge rate of
zero-effect candidates near 0.3 % while a real 0.01 bpb gain still merges ~97 % of the time
(tests/policy/test_judge.py simulates both). The first look's luck is shared by the line runs it
was compared with (a line measured high lets neutral candidates through, and then looks high to
their confirmations too), so where ``baseline_runs`` line runs were queued after the confirmation
(``fresh_line_runs``: a farm with workers to spare queues them beside it) the confirmation alone is
judged against those.

Actions: "merge"; "discard" (failed, cheated, over the VRAM cap, not better, or did not
replicate); "confirm" (queue one more run on the same accelerator, purpose confirm); "rebase"
(measured on an old main line and looked like a win there, or cannot be compared there); "measure_line"
(the main line has fewer than ``baseline_runs`` ok runs on the candidate's accelerator:
``numbers["line_runs_needed"]`` more); "wait" (no results yet).

Everything here is a function of the records passed in: no store, git or clock.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cluster.config import JudgeSettings
from cluster.records import Candidate, Purpose, Result, RunStatus

ACTIONS = ("merge", "discard", "confirm", "rebase", "measure_line", "wait")


@dataclass(frozen=True)
class Line:
    """The main line as the judge sees it."""

    commit: str
    results: list[Result]  # the main-line commit's own measurements (purpose baseline), any accelerator
    # per accelerator: (sum of squared deviations, degrees of freedom) of the seed-varied repeats of the
    # run's other commits measured as a line, pooled
    history: dict[str, tuple[float, float]] = field(default_factory=dict)
    same_seed: bool = False  # the target seeds itself: repeats of a commit are one draw


@dataclass(frozen=True)
class Decision:
    action: str  # one of ACTIONS
    reason: str  # one human line, with the numbers
    numbers: dict[str, Any] = field(default_factory=dict)

    @property
    def cand(self) -> str | None:
        return self.numbers.get("cand")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class _Eval:
    """One comparison of a set of candidate runs with a set of reference runs."""

    delta: float
    margin: float
    required: float
    sigma: float
    cand_mean: float
    ref_mean: float
    n_cand: int
    n_ref: int
    kind: str  # "win" | "simpler" | "none"


def spread(values: Sequence[float]) -> tuple[float, float]:
    """(sum of squared deviations from the mean, degrees of freedom) of one commit's repeats."""
    if len(values) < 2:
        return 0.0, 0.0
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values), float(len(values) - 1)


def pooled(spreads: Iterable[tuple[float, float]]) -> tuple[float, float]:
    """Several commits' spreads as one: their sums of squares and degrees of freedom added."""
    ss = df = 0.0
    for s, d in spreads:
        ss, df = ss + s, df + d
    return ss, df


def noise_sigma(values: Sequence[float], cfg: JudgeSettings = JudgeSettings(), prior: float | None = None,
                history: tuple[float, float] = (0.0, 0.0)) -> float:
    """Seed-noise sigma of repeated measurements of one commit, pooled with the history of other
    commits' repeats and with a prior (see module doc)."""
    prior_sigma = cfg.default_noise if prior is None else prior
    ss, df = pooled([spread(values), history])
    if df <= 0:
        return max(cfg.min_noise, prior_sigma)
    var = (ss + cfg.noise_prior_df * prior_sigma**2) / (df + cfg.noise_prior_df)
    return max(cfg.min_noise, math.sqrt(var))


def _draws(runs: Iterable[Result], acc: str | None = None) -> dict[str, list[float]]:
    """Per accelerator (or ``acc`` alone), the val_bpb of a commit's ok runs that are independent
    draws: one per seed, and none whose seed is unknown (a run recorded before the farm assigned
    seeds repeated its commit's one seed)."""
    by_acc: dict[str, dict[int, float]] = {}
    for r in runs:
        if _usable(r) and r.seed is not None and acc in (None, r.accelerator):
            by_acc.setdefault(r.accelerator, {}).setdefault(r.seed, float(r.val_bpb))  # type: ignore[arg-type]
    return {a: list(v.values()) for a, v in by_acc.items()}


def repeats(runs_by_commit: Iterable[Sequence[Result]]) -> dict[str, dict[str, float]]:
    """Per accelerator, the pooled spread of several commits' seed-varied repeats: ``ss`` and ``df``
    (for ``Line.history``), and how many ``runs`` of how many ``commits`` it rests on."""
    out: dict[str, dict[str, float]] = {}
    for runs in runs_by_commit:
        for acc, vals in _draws(runs).items():
            ss, df = spread(vals)
            if df:
                h = out.setdefault(acc, {"ss": 0.0, "df": 0.0, "runs": 0, "commits": 0})
                h["ss"] += ss
                h["df"] += df
                h["runs"] += len(vals)
                h["commits"] += 1
    return out


def measured_df(line: Line, acc: str) -> float:
    """Degrees of freedom of the measured part of ``line_sigma`` (0: the prior alone)."""
    if line.same_seed:
        return 0.0
    return pooled([spread(_draws(line.results, acc).get(acc, [])), line.history.get(acc, (0.0, 0.0))])[1]


def line_sigma(line: Line, acc: str, cfg: JudgeSettings = JudgeSettings()) -> float:
    """The noise the line's comparisons on ``acc`` use: measured where the repeats are new draws."""
    if line.same_seed:
        return noise_sigma([], cfg)  # its repeats are one draw: no measured floor, the prior
    return noise_sigma(_draws(line.results, acc).get(acc, []), cfg, history=line.history.get(acc, (0.0, 0.0)))


def margin_now(line: Line, acc: str, cfg: JudgeSettings = JudgeSettings()) -> float:
    """The gain a one-run candidate must show against ``line`` on ``acc`` to be worth confirming."""
    n_line = 1 if line.same_seed else max(1, sum(1 for r in line.results if _usable(r) and r.accelerator == acc))
    return cfg.noise_k * line_sigma(line, acc, cfg) * math.sqrt(1 + 1 / n_line)


def _usable(r: Result) -> bool:
    return r.status == RunStatus.OK.value and r.val_bpb is not None and math.isfinite(r.val_bpb)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _accelerator(ok: Sequence[Result], line: Line) -> str:
    """The candidate's most common accelerator; ties go to the one the line has most runs on, then by name."""
    counts = Counter(r.accelerator for r in ok)
    line_counts = Counter(r.accelerator for r in line.results if _usable(r))
    return min(counts, key=lambda a: (-counts[a], -line_counts[a], a))


def _evaluate(
    cand: Sequence[float], ref: Sequence[float], sigma: float, net_lines: int, cfg: JudgeSettings,
    independent: bool = True,
) -> _Eval:
    """Compare the means; with ``independent`` False each side's runs are one draw (n = 1)."""
    cm, rm = _mean(cand), _mean(ref)
    delta = cm - rm
    n_cand, n_ref = (len(cand), len(ref)) if independent else (1, 1)
    margin = cfg.noise_k * sigma * math.sqrt(1 / n_cand + 1 / n_ref)
    required = margin + max(0, net_lines) * cfg.bpb_per_line
    if -delta > required:
        kind = "win"
    elif cfg.simplify_merges and net_lines < 0 and delta < margin:
        kind = "simpler"
    else:
        kind = "none"
    return _Eval(delta, margin, required, sigma, cm, rm, len(cand), len(ref), kind)


def _passes(ev: _Eval, kind: str) -> bool:
    """Whether ``ev`` clears the bar of ``kind`` (a replication must clear the same bar as the original)."""
    if kind == "win":
        return ev.kind == "win"
    return ev.kind in ("win", "simpler")


def _describe(ev: _Eval, net_lines: int, against: str) -> str:
    runs = f"{ev.n_cand} run{'s' if ev.n_cand != 1 else ''} vs {ev.n_ref}"
    extra = ""
    if net_lines > 0 and ev.required > ev.margin:
        extra = f" + {net_lines} lines = {ev.required:.4f}"
    text = f"{ev.delta:+.4f} bpb vs {against} (margin {ev.margin:.4f}{extra}, {runs})"
    if ev.kind == "simpler":
        text = f"simpler: deletes {-net_lines} lines within noise, {text}"
    return text


def _replication_runs(ok: Sequence[Result]) -> list[Result]:
    """Runs not selected by the first look: the confirmations, else every run but the first."""
    confirms = [r for r in ok if r.purpose == Purpose.CONFIRM.value]
    if confirms:
        return confirms
    ordered = sorted(ok, key=lambda r: (r.finished_at, r.started_at, r.attempt, r.job))
    return ordered[1:]


def job_order(job_id: str) -> int:
    """The order in which jobs were queued: the farm numbers them in sequence (``j000123``)."""
    digits = "".join(ch for ch in job_id if ch.isdigit())
    return int(digits) if digits else -1


def fresh_line_runs(line_runs: Sequence[Result], replication: Sequence[Result]) -> list[Result]:
    """The line's runs queued after the replication runs were: measured after the candidate was
    selected. A first look passes more easily where the line was measured high by luck, so the
    runs the first look was compared with are, given that it passed, biased high; the confirmation
    is judged against the fresh ones alone when there are ``baseline_runs`` of them (a farm with
    workers to spare queues that many beside a confirmation), else against all of them."""
    if not replication:
        return []
    after = min(job_order(r.job) for r in replication)
    return [r for r in line_runs if job_order(r.job) > after]


def decide(
    cand: Candidate,
    results: Sequence[Result],
    line: Line,
    cfg: JudgeSettings = JudgeSettings(),
    base_results: Sequence[Result] | None = None,
) -> Decision:
    """Judge one candidate from its accepted results; ``base_results`` measure ``cand.base`` when it is old."""
    net = cand.lines_added - cand.lines_removed
    nums: dict[str, Any] = {"cand": cand.id, "base": cand.base, "line": line.commit, "net_lines": net}

    def out(action: str, reason: str, **more: Any) -> Decision:
        return Decision(action, reason, {**nums, **more})

    if not results:
        return out("wait", "no results yet")
    cheats = [r for r in results if r.status == RunStatus.CHEAT.value]
    if cheats:
        return out("discard", f"cheat: {cheats[0].reason or 'caught by the worker'}", n_cheat=len(cheats))
    ok = [r for r in results if _usable(r)]
    nums["n_failed"] = len(results) - len(ok)
    if not ok:
        first = results[0]
        status = first.status if first.status != RunStatus.OK.value else RunStatus.NO_METRIC.value
        why = first.reason or (f"exit code {first.exit_code}" if first.exit_code is not None else "no reason given")
        return out("discard", f"{status}: {why} ({len(results)} of {len(results)} runs failed)", status=status)

    acc = _accelerator(ok, line)
    ok = [r for r in ok if r.accelerator == acc]
    nums["accelerator"] = acc
    cand_vals = [float(r.val_bpb) for r in ok]  # type: ignore[arg-type]

    peaks = [r.peak_vram_mb for r in ok if r.peak_vram_mb is not None]
    if cfg.max_vram_mb and peaks and max(peaks) > cfg.max_vram_mb:  # 0: no cap
        return out("discard", f"vram: peak {max(peaks):.0f} MB > cap {cfg.max_vram_mb:.0f} MB", peak_vram_mb=max(peaks))

    seeds = {r.seed for r in ok if r.seed is not None}
    if not line.same_seed and len(seeds) >= 2 and max(cand_vals) - min(cand_vals) < 1e-9:
        return out("discard", f"cheat: its runs on seeds {sorted(seeds)} gave the same val_bpb {cand_vals[0]:.6f}: "
                   "it does not take its seed from the farm (prepare.seed())", status=RunStatus.CHEAT.value)

    independent = not line.same_seed
    sigma = line_sigma(line, acc, cfg)
    if cand.base != line.commit:
        return _judge_old_base(cand_vals, base_results or [], acc, net, sigma, independent, cfg, out)

    line_vals = [float(r.val_bpb) for r in line.results if _usable(r) and r.accelerator == acc]  # type: ignore[arg-type]
    if len(line_vals) < max(1, cfg.baseline_runs):
        need = max(1, cfg.baseline_runs) - len(line_vals)
        return out(
            "measure_line",
            f"main line has {len(line_vals)} of {cfg.baseline_runs} runs on {acc}: measure it {need} more time(s)",
            n_line=len(line_vals),
            line_runs_needed=need,
        )

    over = overtime(ok, [r for r in line.results if _usable(r) and r.accelerator == acc], cfg)
    if over:
        return out("discard", f"cheat: {over}", status=RunStatus.CHEAT.value)

    ev = _evaluate(cand_vals, line_vals, sigma, net, cfg, independent)
    nums.update(
        delta=ev.delta, margin=ev.margin, required=ev.required, sigma=sigma, n_cand=ev.n_cand,
        n_line=ev.n_ref, cand_mean=ev.cand_mean, line_mean=ev.ref_mean,
    )  # fmt: skip
    text = _describe(ev, net, "main")
    if ev.kind == "none":
        if net > 0 and -ev.delta > ev.margin:
            return out("discard", f"{text}: gain does not pay for {net} added lines -> discard")
        return out("discard", f"{text}: not better than main -> discard")
    if not cfg.confirm:
        return out("merge", f"{text} -> merge")
    if ev.n_cand < 2:
        return out("confirm", f"{text} -> confirm")
    rep = _replication_runs(ok)
    line_ok = [r for r in line.results if _usable(r) and r.accelerator == acc]
    fresh = fresh_line_runs(line_ok, rep)
    ref = [float(r.val_bpb) for r in fresh] if len(fresh) >= max(1, cfg.baseline_runs) else line_vals  # type: ignore[arg-type]
    rev = _evaluate([float(r.val_bpb) for r in rep], ref, sigma, net, cfg, independent)  # type: ignore[arg-type]
    nums.update(rep_delta=rev.delta, rep_margin=rev.margin, n_rep=rev.n_cand, n_rep_line=rev.n_ref)
    if not _passes(rev, ev.kind):
        bar = -rev.required if ev.kind == "win" else rev.margin
        return out(
            "discard",
            f"{text}, but the confirmation alone is {rev.delta:+.4f} (needs < {bar:+.4f}, "
            f"{rev.n_cand} run(s) vs {rev.n_ref}{' fresh' if ref is not line_vals else ''}): did not replicate -> discard",
        )
    against = f" vs {rev.n_ref} fresh line runs" if ref is not line_vals else ""
    return out("merge", f"{text}, confirmed ({rev.delta:+.4f} on its own{against}) -> merge")


def overtime(cand: Sequence[Result], line: Sequence[Result], cfg: JudgeSettings = JudgeSettings()) -> str | None:
    """Why the candidate's training ran past its budget, or None. Wall times are the worker's
    (``train_wall_seconds``: the training process alone, start-up and compilation included), so a
    candidate cannot talk them down; the allowance absorbs start-up differences such as a cold
    compile cache after an architecture change (~30 s of a 300 s budget on an H200)."""
    walls = [r.train_wall_seconds for r in cand if r.train_wall_seconds]
    ref = sorted(r.train_wall_seconds for r in line if r.train_wall_seconds)
    if cfg.max_overtime <= 0 or not walls or not ref:
        return None
    median = (ref[(len(ref) - 1) // 2] + ref[len(ref) // 2]) / 2
    allowed = max(5.0, cfg.max_overtime * median)
    if max(walls) - median <= allowed:
        return None
    return (f"trained past its budget: its training process ran {max(walls):.1f} s, the main line's "
            f"{median:.1f} s (allowed {allowed:.1f} s more)")


def _judge_old_base(
    cand_vals: list[float],
    base_results: Sequence[Result],
    acc: str,
    net: int,
    sigma: float,
    independent: bool,
    cfg: JudgeSettings,
    out: Callable[..., Decision],
) -> Decision:
    """A candidate measured on an older main line never merges as it is: rebase it if it beat its base."""
    base_vals = [float(r.val_bpb) for r in base_results if _usable(r) and r.accelerator == acc]
    if not base_vals:
        return out("rebase", f"base is old and has no runs on {acc} to compare with -> rebase and measure again")
    ev = _evaluate(cand_vals, base_vals, sigma, net, cfg, independent)
    text = _describe(ev, net, "its base")
    more = {
        "delta": ev.delta, "margin": ev.margin, "required": ev.required, "sigma": sigma,
        "n_cand": ev.n_cand, "n_base": ev.n_ref, "cand_mean": ev.cand_mean, "base_mean": ev.ref_mean,
    }  # fmt: skip
    if ev.kind == "none":
        return out("discard", f"{text}: not better than its base -> discard", **more)
    return out("rebase", f"{text} on an old main line -> rebase", **more)


def pick_merge(decisions: Iterable[Decision]) -> str | None:
    """Among simultaneous "merge" decisions on one base, the candidate id to merge first (None if none).

    The lowest delta wins, which on one accelerator is the lowest cand_mean (the line mean is
    shared) and across accelerators still compares like with like; ties go to the lower mean, then id.
    """
    merges = [d for d in decisions if d.action == "merge"]
    if not merges:
        return None
    best = min(
        merges,
        key=lambda d: (d.numbers.get("delta", math.inf), d.numbers.get("cand_mean", math.inf), str(d.cand)),
    )
    return best.cand
