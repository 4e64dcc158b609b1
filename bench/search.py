"""Search efficiency: the farm's own policies on a simulated research landscape, 1 worker vs many.

The anchor: with 16 GPUs a coding agent reached the same best val_bpb 9x sooner than a simulated
sequential run; critics say it took ~2x more GPU-hours per improvement than sequential. This asks
the same of the farm: wall-clock speedup to a target val_bpb, GPU-hours per merged improvement,
and how often a merge does not improve the TRUE landscape (a false merge).

What is modelled
  * The landscape: a synthetic val_bpb over the real train.py's constants (parsed with the mutate
    proposer's own parser, ``proposer.mutate._Surface``), see ``true_bpb``: log-quadratic bowls in
    the learning rates, the warmdown ratio, weight decay, Adam's beta2, the batch size and the model
    shape, with interactions (Muon's best lr grows with sqrt(batch); depth and width share a term),
    an out-of-memory crash region, and every other constant neutral. The default train.py sits
    ~0.05 above the optimum; 20 of the 88 single-constant steps the proposer can take from it help,
    by 0.001 to 0.014 (against a judge margin of ~0.005 for one run vs the line's three).
  * Measurement noise (``--noise``, bench/simfarm.py ``Noise``). ``gpu`` (the default since
    2026-12-01): on a GPU a run's error is (nearly) a fixed function of the code and the seed, so a
    measurement of commit source ``src`` on seed ``s`` errs by
    ``seed_sd * g(sha256(src), s) + jitter_sd * N(0, 1)``, ``g`` a fixed standard Gaussian of (code
    hash, seed) in each replicate (``--seed-sd`` 0.002, the published seed spread; ``--jitter-sd``
    0.0003, the published same-code re-run difference). A same-seed re-run of the same code
    repeats itself up to jitter; a candidate that changes anything is a new draw, whatever its
    seed, unless ``--seed-corr`` (an assumption, default 0) correlates same-seed runs of different
    code. ``iid`` (the model before): every measurement an independent N(0, ``--seed-sd``).
  * Time: every run takes ``--run-seconds`` (default 330: 300 s of training + start-up and
    evaluation), +/-2 % jitter; a crash takes 60 s. A GPU-hour is a worker held for an hour.
  * The farm's own policies, called as they are: ``proposer.mutate.MutateProposer`` proposes (its
    history built as cluster/loop/intake.py's ``Intake.history`` builds it); ``cluster.loop.judge.decide`` and
    ``pick_merge`` decide; rebases are ``cluster.repo.merge_lines`` (3-way merge of the source text;
    a conflict or a change already in the main line makes a candidate stale).
  * Seeds, the main line and the noise floor as the farm has them since 2026-12-01: the k-th job
    ever queued for a commit runs on seed k + 1 (the baseline's three runs are seeds 1-3, a
    candidate's measurement seed 1 and its confirmation seed 2, a merged commit's line runs seeds
    3-5); the main line is measured by its own baseline-purpose runs only (``--line honest``), so a
    merge is followed by ``baseline_runs`` fresh line runs, and the line is measured once more beside
    every confirmation judged against it (``--line all-runs``: the old rules, every run of the
    main-line commit, the merged candidate's selected runs included, no extra run); the judge's sigma
    pools the repeats of every main-line commit of the run with the prior (``Line.history``,
    ``--floor pooled``; ``--floor line``: the current line's repeats and the prior only, as before).
  * The controller's rules, re-implemented in bench/simfarm.py (the duplication, ~140 lines:
    ``Sim._judge``, ``_apply``, ``_rebase``, ``_rebase_pending``, ``_dispatch`` and ``_record`` mirror
    cluster/loop/controller.py's ``judge``, ``apply``, ``_retest``, ``take``, ``dispatch`` and ``record``;
    ``_fill`` and ``_history`` cluster/loop/intake.py's ``ask``/``admit``/``history``): the baseline is queued ``baseline_runs`` times; the queue is kept
    at one pending candidate per worker plus ``queue_margin``; confirm and main-line re-measure jobs
    go to the front; one merge per judging pass (``pick_merge``), the main line moves to exactly the
    measured commit; queued candidates are rebased onto it; a candidate measured on an old base that
    still beats that base is rebased and measured again, once. The proposer dedupes with a hash of
    the raw text instead of ``proposer.base.fingerprint`` (same equality on these sources, 100x faster),
    parses each main line once, skips its compile check (a literal swapped for a literal always
    compiles) and sums its arm scores as outcomes arrive (exact: multiples of 1/4): the same
    proposals as the plain proposer, several times faster on long runs.

  * The parallel-native search (cluster/loop/plan.py's rules, ``[search]``), as the controller and
    its window (cluster/loop/window.py) apply them: winners and near misses of one window combined
    (3-way merged; measured twice at once; merged only when better than the best member, members
    held meanwhile, one combination per line at a time); the frontier (new proposals, and queued
    candidates as they are taken, go on top of the best candidate in confirmation; what is measured
    there waits for its verdict); a winner's own line runs queued beside its confirmation; young
    first looks (under ``preempt_seconds``) preempted for waiting critical-path jobs or when the
    front moved; seeds counted per code; a confirmation waits for the line run beside it only.
    Each has a switch (``--no-combine``, ``--no-speculate``, ``--no-early-line``, ``--no-preempt``,
    ``--no-diversity``; ``--classic``: all off); speculation, early line runs and preemption apply
    from ``--min-workers`` on, as in the farm. The early cut (judge.early_cut) ships off, measured
    on real CPU runs (bench/early_cut.py), and is not modelled here.

What is not modelled
  * Control-plane latency (dispatch gaps, proposer and git time): bench/farm_overhead.py measures
    those; here dispatch and proposing are instantaneous. Worker or controller failures, leases.
  * Accelerator differences (one accelerator everywhere), code-size penalties (mutations change
    lines in place, so net lines are 0), simplification merges, LLM proposers.
  * Seed engineering (the mutate proposer never touches seeding, so the admission check and the
    judge's same-val_bpb-on-different-seeds cheat rule never fire here) and targets that seed
    themselves (``Line.same_seed`` is always False: every repeat here is a new seed).
  * What g is made of: with ``--seed-corr 0`` the error of any new code is a new draw, so the farm's
    seed schedule (a (code, seed) is measured twice only when a proposal recreates a source already
    measured: ~1-2 % of runs, counted in the output) makes the GPU-like model nearly the iid one;
    only ``--seed-corr`` > 0 (same init and data order shared across code, not measured anywhere
    here) makes seeds matter.
  * A real loss surface: the landscape is smooth and separable but for the interactions above; real
    ones have more plateaus and more crashes. Ratios between 1 and N workers are the point, not
    absolute numbers.

Run: ``python bench/search.py --quick`` (no Ray; ~10 s). ``--workers 4,16 --noise gpu,iid`` compares
worker counts and noise models in one invocation (each noise model has its own 1-worker target).
The HEADLINE line is printed last (the first noise model, the largest worker count).
"""

from __future__ import annotations

import argparse
import collections
import logging
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cluster.config import SearchSettings
from bench.simfarm import (
    FLOORS,
    LINE_MODES,
    NOISE_MODELS,
    SCALE,
    Noise,
    Outcomes,
    Sim,
    bootstrap,
    gpu_hours_per_merge,
    pairing,
    speedup,
    time_to,
)

log = logging.getLogger("bench.search")


# ---------------------------------------------------------------------------------- the experiment

def experiment(workers: int | list[int], seeds: list[int], hours: float, run_seconds: float, *,
               scale: float = SCALE, confirm_runs: int = 1, learn_from_stale: bool = False,
               source: str | None = None, noise: Noise | None = None, line: str = "honest",
               floor: str = "pooled", search: SearchSettings | None = None, diversity: bool = True) -> dict[str, Any]:
    """1-worker runs for 2 x ``hours`` (target: their median best after ``hours``), then for each count in
    ``workers`` runs until they reach the target (at most 2 x ``hours``). ``rows``: the 1-worker row, then
    one per count, each with its speedup and GPU-hour ratios; the top-level ratios are the last count's."""
    counts = [workers] if isinstance(workers, int) else list(workers)
    horizon = 2 * hours * 3600
    common: dict[str, Any] = {"run_seconds": run_seconds, "source": source, "scale": scale,
                              "learn_from_stale": learn_from_stale, "noise": noise, "line": line, "floor": floor,
                              "search": search, "diversity": diversity}
    seq = [Sim(1, s, **common) for s in seeds]
    base_true = seq[0].true("k0")
    seq_out = []
    for s in seq:
        seq_out.append(s.run(horizon))
        log.info("1 worker, seed %d: %d merges, %d runs", s.seed, len(s.out.merges), sum(s.out.runs.values()))
    at_h = [min(v for t, v in o.trajectory if t <= hours * 3600) for o in seq_out]
    target = statistics.median(at_h)
    if target >= base_true:
        target = min(at_h)
        if target >= base_true:
            raise SystemExit(f"no 1-worker run improved within {hours:g} h: pass more --hours")
        log.warning("most 1-worker runs did not improve within %g h: the target is the best one's", hours)
    t1 = [time_to(o.trajectory, target) for o in seq_out]  # inf: never (within 2 x hours)

    def row(label: int, outs: list[Outcomes], times: list[float]) -> dict[str, Any]:
        """Medians over seeds, each run cut at its time to target (runs that never got there: their whole run)."""
        cut = [t if math.isfinite(t) else horizon for t in times]
        merges = [m for o, t in zip(outs, cut) for m in o.merges if m["t"] <= t]
        per_merge = [gpu_hours_per_merge(o, t) for o, t in zip(outs, times) if math.isfinite(t)]
        per_change = [gpu_hours_per_merge(o, t, changes=True) for o, t in zip(outs, times) if math.isfinite(t)]
        return {
            "workers": label, "hours": [t / 3600 for t in times], "median_h": statistics.median(times) / 3600,
            "gpu_h": label * statistics.median(times) / 3600,
            "runs": statistics.median(sum(s <= t for s in o.starts) for o, t in zip(outs, cut)),
            "merges": len(merges) / len(outs), "gpu_h_per_merge": statistics.median(per_merge) if per_merge else math.inf,
            "changes": sum(m.get("changes", 1) for m in merges) / len(outs),
            "gpu_h_per_change": statistics.median(per_change) if per_change else math.inf,
            "combos": sum(o.combos for o in outs) / len(outs), "combos_merged": sum(o.combos_merged for o in outs) / len(outs),
            "speculative": sum(o.speculative for o in outs) / len(outs),
            "preempted": sum(o.preempted for o in outs) / len(outs),
            "false": sum(m["after"] >= m["before"] for m in merges), "merged": len(merges),
            "stale": sum(o.stale for o in outs) / len(outs), "retests": sum(o.retests for o in outs) / len(outs),
            "repeats": sum(o.repeats for o in outs) / len(outs),
            "purposes": dict(sum((o.runs for o in outs), collections.Counter())),
        }

    one = row(1, seq_out, t1)
    rows = [one]
    for n in counts:
        par_out = []
        for s in seeds:
            sim = Sim(n, s, confirm_runs=confirm_runs, **common)
            par_out.append(sim.run(horizon, target))
            log.info("%d workers, seed %d: %d merges, %d runs", n, s, len(sim.out.merges), sum(sim.out.runs.values()))
        tn = [time_to(o.trajectory, target) for o in par_out]
        many = row(n, par_out, tn)
        many.update(speedup=speedup(t1, tn), speedup_80=bootstrap(t1, tn),
                    gpu_h_ratio=many["gpu_h_per_merge"] / one["gpu_h_per_merge"],
                    gpu_h_change_ratio=many["gpu_h_per_change"] / one["gpu_h_per_change"],
                    gpu_h_to_target_ratio=many["gpu_h"] / one["gpu_h"])
        rows.append(many)
    last = rows[-1]
    return {"seeds": seeds, "hours": hours, "run_seconds": run_seconds, "baseline_true": base_true, "target": target,
            "speedup": last["speedup"], "speedup_80": last["speedup_80"], "gpu_h_ratio": last["gpu_h_ratio"],
            "gpu_h_change_ratio": last["gpu_h_change_ratio"],
            "rows": rows}


def _fmt_h(xs: list[float]) -> str:
    return ", ".join("never" if math.isinf(x) else f"{x:.1f}" for x in xs)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _models(text: str) -> list[str]:
    models = [x.strip() for x in text.split(",") if x.strip()]
    bad = [m for m in models if m not in NOISE_MODELS]
    if bad or not models:
        raise argparse.ArgumentTypeError(f"noise models are {', '.join(NOISE_MODELS)} (comma-separated), not {text!r}")
    return models


def _pct(false: int, merged: int) -> str:
    return f"{100 * false / max(1, merged):.1f} % ({false} of {merged})"


def _print_pairing(noise: Noise, draws: int) -> None:
    """What pairing (a candidate's first run on seed 1 against the line's seed-1 run) buys in this model."""
    corrs = [noise.seed_corr] + ([0.5] if noise.seed_corr == 0 else [])
    for corr in corrs:
        p = pairing(Noise("gpu", noise.seed_sd, noise.jitter_sd, corr), n=draws)
        assumed = "" if corr == noise.seed_corr else " (assumed)"
        print(f"pairing, gpu-like noise, same-seed correlation across code {corr:g}{assumed}: sd of (candidate - line) "
              f"for a neutral candidate's seed-1 run: paired with the line's seed 1 {p['paired']:.5f}, unpaired "
              f"(seed 2) {p['unpaired']:.5f}; against the mean of the baseline's seeds 1-3 {p['vs_baseline_mean']:.5f}, "
              f"of a merged line's seeds 3-5 {p['vs_merged_line_mean']:.5f}; same code, same seed "
              f"{p['same_code_same_seed']:.5f}; two neutral candidates' deltas against one merged line correlate "
              f"{p['between_candidates_corr']:.2f}")


def _plot(results: list[tuple[Noise, dict[str, Any]]], path: str, features: str) -> None:
    """Speedup to the 1-worker target against workers (log-log, with the ideal line), one curve per noise model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    top = 1
    for noise, r in results:
        rows = r["rows"]
        xs = [x["workers"] for x in rows]
        ys = [1.0] + [x["speedup"] for x in rows[1:]]
        lo = [0.0] + [x["speedup"] - x["speedup_80"][0] for x in rows[1:]]
        hi = [0.0] + [x["speedup_80"][1] - x["speedup"] for x in rows[1:]]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=f"{noise.model} noise (80 % interval)")
        top = max(top, *xs)
    ax.plot([1, top], [1, top], ls="--", color="grey", label="ideal: N workers, N times sooner")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("workers")
    ax.set_ylabel("speedup to the 1-worker target")
    ax.set_title("bench/search.py: time to the 1-worker farm's 24 h best", fontsize=10)
    ax.legend(fontsize=8)
    ax.text(0.01, -0.16, f"search: {features}", transform=ax.transAxes, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="See the module docstring for what is and is not modelled.")
    ap.add_argument("--quick", action="store_true", help="5 seeds, 8 h (seconds)")
    ap.add_argument("--workers", type=_ints, default=[16],
                    help="worker counts of the parallel farm, comma-separated, e.g. 4,16 (default 16)")
    ap.add_argument("--seeds", type=int, default=12, help="seeds (measurement noise and proposer) per setting")
    ap.add_argument("--hours", type=float, default=24.0,
                    help="the target is the median best TRUE val_bpb of the 1-worker runs after this many hours")
    ap.add_argument("--run-seconds", type=float, default=330.0, help="seconds per training run (budget + overhead)")
    ap.add_argument("--scale", type=float, default=SCALE,
                    help="multiplies the landscape's terms: lower = gains closer to the noise (default %(default)s)")
    ap.add_argument("--noise", type=_models, default=["gpu"],
                    help="measurement noise model(s), comma-separated, each with its own 1-worker target: gpu (the "
                         "error is a fixed function of (code, seed) plus jitter) or iid (a fresh draw per measurement, "
                         "the model before 2026-12-01); e.g. gpu,iid (default gpu)")
    ap.add_argument("--seed-sd", type=float, default=0.002,
                    help="seed-to-seed spread of val_bpb (gpu), or the per-measurement sd (iid) (default %(default)s)")
    ap.add_argument("--jitter-sd", type=float, default=0.0003,
                    help="same code, same seed re-run difference (gpu only; default %(default)s)")
    ap.add_argument("--seed-corr", type=float, default=0.0,
                    help="correlation of same-seed runs of different code (gpu only; an assumption, default 0)")
    ap.add_argument("--line", choices=LINE_MODES, default="honest",
                    help="honest: the main line is its baseline-purpose runs only, measured afresh after a merge and "
                         "once more beside each confirmation (the farm since 2026-12-01); all-runs: every run of the "
                         "main-line commit, its candidate runs included, no extra line run (before)")
    ap.add_argument("--floor", choices=FLOORS, default="pooled",
                    help="pooled: the noise sigma pools the repeats of every main-line commit of the run (the farm "
                         "since 2026-12-01); line: the current line's repeats and the prior only (before)")
    ap.add_argument("--confirm-runs", type=int, default=1,
                    help="confirmation runs queued at once for an apparent winner by the N-worker farm (the farm: 1; "
                         "2 is a policy variant)")
    ap.add_argument("--learn-from-stale", action="store_true",
                    help="policy variant (the farm before 2026-11-26): stale candidates go into the proposer's history "
                         "as status 'stale', which the mutate bandit scores like a crash; the farm leaves them out")
    off = ap.add_argument_group("the parallel-native search (cluster/loop/plan.py, [search]); each is on by default")
    off.add_argument("--no-combine", action="store_true", help="no combinations of the winners of one window")
    off.add_argument("--no-speculate", action="store_true", help="no new candidates on top of a winner in confirmation")
    off.add_argument("--no-early-line", action="store_true",
                     help="a merged commit's line runs start after its merge, not beside its confirmation")
    off.add_argument("--no-preempt", action="store_true", help="no first look gives its worker to the critical path")
    off.add_argument("--no-diversity", action="store_true",
                     help="the proposer is not shown the changes in flight (History.pending_changes)")
    off.add_argument("--min-workers", type=int, default=SearchSettings().min_workers,
                     help="speculation, early line runs and preemption from this many workers on (default %(default)s)")
    off.add_argument("--classic", action="store_true",
                     help="all of the above off: the search before the parallel-native rules")
    ap.add_argument("--pairing-draws", type=int, default=20000,
                    help="simulated neutral candidates for the pairing figures (default %(default)s, ~3 s)")
    ap.add_argument("--plot", metavar="PNG", help="write the speedup curve (workers against speedup) to this file")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.hours = 5, 8.0
    counts = sorted({n for n in args.workers if n > 1})
    if not counts:
        ap.error("--workers needs at least one count above 1")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    search = SearchSettings(combine=not (args.no_combine or args.classic),
                            speculate=not (args.no_speculate or args.classic),
                            early_line_runs=not (args.no_early_line or args.classic),
                            preempt_seconds=0.0 if (args.no_preempt or args.classic) else SearchSettings().preempt_seconds,
                            min_workers=args.min_workers)
    features = ", ".join(f"{k} {getattr(search, k)}" for k in ("combine", "speculate", "early_line_runs",
                                                                "preempt_seconds", "min_workers"))
    features += f", diversity {not (args.no_diversity or args.classic)}"
    t0 = time.time()
    results = []
    for model in args.noise:
        noise = Noise(model, args.seed_sd, args.jitter_sd, args.seed_corr if model == "gpu" else 0.0)
        t_model = time.time()
        r = experiment(counts, list(range(args.seeds)), args.hours, args.run_seconds, scale=args.scale,
                       confirm_runs=args.confirm_runs, learn_from_stale=args.learn_from_stale, noise=noise,
                       line=args.line, floor=args.floor, search=search,
                       diversity=not (args.no_diversity or args.classic))
        results.append((noise, r))
        rows = r["rows"]
        print(f"noise {noise.describe()}; line {args.line}; floor {args.floor}; search: {features}")
        print(f"landscape: baseline TRUE val_bpb {r['baseline_true']:.4f}; target {r['target']:.4f} (median best of the "
              f"1-worker runs after {args.hours:g} h); {args.seeds} seeds; {args.run_seconds:g} s per run; "
              f"scale {args.scale:g}; confirm runs {args.confirm_runs}; stale outcomes "
              f"{'learned from' if args.learn_from_stale else 'skipped'}")
        for x in rows:
            print(f"{x['workers']} worker(s): hours to target per seed: {_fmt_h(x['hours'])}; runs by purpose "
                  f"{x['purposes']}; per seed {x['stale']:.1f} stale, {x['retests']:.1f} re-tested after a win on an "
                  f"old base, {x['repeats']:.1f} measurements of a (code, seed) measured before, {x['combos']:.1f} "
                  f"combinations ({x['combos_merged']:.1f} merged), {x['speculative']:.1f} first looks on a frontier, "
                  f"{x['preempted']:.1f} preempted")
        print()
        print("| workers | median h to target | GPU-h to target | runs to target | merges to target | changes merged "
              "| GPU-h per merge | GPU-h per merged change | false merges |\n|---|---|---|---|---|---|---|---|---|")
        for x in rows:
            print(f"| {x['workers']} | {x['median_h']:.2f} | {x['gpu_h']:.1f} | {x['runs']:.0f} | {x['merges']:.1f} | "
                  f"{x['changes']:.1f} | {x['gpu_h_per_merge']:.2f} | {x['gpu_h_per_change']:.2f} | "
                  f"{x['false']} of {x['merged']} |")
        print()
        for x in rows[1:]:
            lo, hi = x["speedup_80"]
            print(f"{x['workers']} workers: speedup {x['speedup']:.1f}x (80 % bootstrap interval over seeds {lo:.1f}x to "
                  f"{hi:.1f}x); GPU-h to target {x['gpu_h_to_target_ratio']:.2f}x sequential; GPU-h per merge "
                  f"{x['gpu_h_ratio']:.2f}x, per merged change {x['gpu_h_change_ratio']:.2f}x sequential")
        print(f"({time.time() - t_model:.0f} s)\n")
    print(f"summary ({args.seeds} seeds, {args.hours:g} h target, line {args.line}, floor {args.floor}; search: "
          f"{features}):\n")
    print("| noise | workers | speedup to the 1-worker target (80 % interval) | GPU-h to target vs 1 | GPU-h per merge "
          "vs 1 | GPU-h per merged change vs 1 | false merges |\n|---|---|---|---|---|---|---|")
    for noise, r in results:
        for x in r["rows"]:
            one_w = x["workers"] == 1
            sp = "1" if one_w else f"{x['speedup']:.1f}x ({x['speedup_80'][0]:.1f}-{x['speedup_80'][1]:.1f}x)"
            ratios = ["1"] * 3 if one_w else [f"{x[k]:.2f}x" for k in ("gpu_h_to_target_ratio", "gpu_h_ratio",
                                                                      "gpu_h_change_ratio")]
            print(f"| {noise.model} | {x['workers']} | {sp} | {' | '.join(ratios)} | {_pct(x['false'], x['merged'])} |")
    print()
    if args.plot:
        _plot(results, args.plot, features)
        print(f"plot: {args.plot}")
    for noise, _ in results:
        if noise.model == "gpu":
            _print_pairing(noise, args.pairing_draws)
            break
    noise, r = results[0]
    one, many = r["rows"][0], r["rows"][-1]
    print(f"({time.time() - t0:.0f} s in all)")
    by_n = {x["workers"]: x for x in r["rows"][1:]}
    at = " | ".join(f"{n} workers {by_n[n]['speedup']:.1f}x sooner" for n in sorted(by_n))
    false_max = max(x["false"] / max(1, x["merged"]) for x in r["rows"][1:])
    print(f"HEADLINE search: {at} than 1 (targets >= 14x at 16, >= 35x at 64) | GPU-h per merged change "
          f"{many['gpu_h_change_ratio']:.2f}x, per merge {many['gpu_h_ratio']:.2f}x, to target "
          f"{many['gpu_h_to_target_ratio']:.2f}x sequential at {many['workers']} (target <= 1.2x at 16) | false merges "
          f"at most {100 * false_max:.1f}% with many workers, {100 * one['false'] / max(1, one['merged']):.1f}% at 1 "
          f"(target <= 2%) | {noise.model} noise; search: {features}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
