"""Early cut on CPU: which loss-curve cut rule would have stopped which runs, measured on the real train.py.

A cut rule (``cluster.loop.cut``) compares a candidate's training loss at progress p (the fraction
of the budget spent) with the main line's mean loss at the same p and stops a run that is clearly
losing. Whether any rule is worth it is a question of data: how much run time it saves and how
often it would have stopped a run that ended as a win. This collects the data and answers it.

What runs (``collect``): this repository's ``train.py`` (the baseline) on seeds 1..B, and N
candidates written by the farm's own offline search (``proposer.mutate.MutateProposer(seed=S,
profile="cpu")`` on train.py's source: the farm's first round of proposals, single and paired
constant changes), each on seed 1 (the seed the farm gives a candidate's first measurement), every
run to its end, one at a time, the baseline runs spread evenly among the candidates so a drift in
the machine's load touches both. Data and environment are bench/seed_pairing.py's (the small
offline corpus of tests/worker/test_train.py, vocab 512, rows of 128 tokens, one torch thread).
Each run's output is read as it is printed: its loss curve is parsed by the worker's own parser
(``worker.curve``), every step line stamped with the wall time since the run started, and the
curve as the farm records it, the final val_bpb and the wall time go to the JSON file (rewritten
after every run, so a stopped collection keeps what it has; ``--from-json`` evaluates a file again
without running anything).

What is computed (``evaluate``), for a grid of rules (checkpoint p x threshold, relative and
spread kinds):
  * saved: the run time the rule would have saved, as a share of all the candidates' run time (a
    cut run saves what it ran after the step line at which its curve reached p; a run that ended
    before p, such as a crash, cannot be cut);
  * wrongful: the share of the cut runs that ended as wins. A win is what the judge would take to
    confirmation: an ok run whose val_bpb beats the baseline's mean by the judge's margin
    (``cluster.loop.judge.margin_now`` with the default judge settings and the baseline runs as the
    main line: noise_k standard errors of the seed noise measured from them, pooled with the prior);
  * also: the share of cut runs that ended below the baseline's mean at all (a stricter view of
    "wrongful"), the wins lost (cut wins of all wins), and how many baseline runs the rule would
    have cut against the other baseline runs (leave one out).
The verdict of a rule: "meets" when saved >= 20 % and wrongful <= 2 % (the issue's bar).

Time and machine: the defaults (B=6, N=42, an 18 s budget: 30-50 optimizer steps per baseline run on one
core) take ~17-20 minutes on a 2-core CPU box (no GPU); ``--quick`` (B=2, N=3, 2 s) about 30 s.

Examples:
  python bench/early_cut.py --quick --json /tmp/early_cut/quick.json    # smoke run
  nice -n 10 python bench/early_cut.py --json /tmp/early_cut/runs.json   # the docs/BENCHMARKS.md measurement
  python bench/early_cut.py --from-json /tmp/early_cut/runs.json         # the table again, from the data
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.seed_pairing import harness_env, prepare, workdir
from cluster.config import JudgeSettings
from cluster.loop import cut, judge
from cluster.records import Result
from proposer.base import History
from proposer.mutate import MutateProposer
from worker.curve import parse_curve, parse_line
from worker.summary import is_valid, parse_summary

REPO = Path(__file__).resolve().parent.parent
PROGRESS = (0.2, 0.3, 0.5)
RELATIVE = (0.0, 0.01, 0.02, 0.05, 0.10)  # 0: cut anything above the line's mean (added after the first look)
SPREAD = (2.0, 3.0, 5.0)
SAVED_BAR, WRONGFUL_BAR = 0.20, 0.02


def candidates(base: str, n: int, seed: int) -> list[tuple[str, str]]:
    """(description, source) of the offline search's first n proposals on ``base``."""
    props = MutateProposer(seed=seed, profile="cpu").propose(n, History(base_commit="main", base_source=base))
    if len(props) < n:
        raise RuntimeError(f"the offline search proposed {len(props)} candidates, not {n}")
    return [(p.description, p.source) for p in props]


def schedule(n_base: int, n_cand: int) -> list[tuple[str, int]]:
    """("baseline", seed) and ("candidate", index) in run order: baselines spread evenly, first and last included."""
    at = {round(i * (n_base + n_cand - 1) / max(n_base - 1, 1)) for i in range(n_base)} if n_base > 1 else {0}
    out, b, c = [], 0, 0
    for slot in range(n_base + n_cand):
        if (slot in at and b < n_base) or c >= n_cand:
            b += 1
            out.append(("baseline", b))
        else:
            out.append(("candidate", c))
            c += 1
    return out


def run_streamed(d: Path, env: dict[str, str], seed: int, budget: float, timeout: float) -> dict[str, Any]:
    """Run train.py in ``d`` to its end; its step lines stamped with the wall time since the start."""
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "train.py"], cwd=d, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(env, AUTORESEARCH_SEED=str(seed), AUTORESEARCH_TIME_BUDGET=f"{budget:g}"))
    watchdog = threading.Timer(timeout, proc.kill)  # a hung run still ends (as a crash)
    watchdog.start()
    lines, points = [], []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if (p := parse_line(line, budget)) is not None:
            points.append([p[1], p[2], round(time.monotonic() - t0, 3)])
    rc = proc.wait()
    watchdog.cancel()
    wall = time.monotonic() - t0
    text = "".join(lines)
    s = parse_summary(text) if rc == 0 else None
    ok = rc == 0 and is_valid(s) is None
    return {"seed": seed, "rc": rc, "status": "ok" if ok else "crash", "val_bpb": s["val_bpb"] if ok else None,
            "steps": (s or {}).get("num_steps"), "wall_seconds": round(wall, 3),
            "curve": parse_curve(text, budget), "points": points, "tail": "" if ok else text[-1500:]}


def collect(args: argparse.Namespace, root: Path, out: Path | None) -> dict[str, Any]:
    env = harness_env(root / "cache", args.threads)
    base = (REPO / "train.py").read_text()
    cands = candidates(base, args.candidates, args.proposer_seed)
    machine = {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
               "load_avg_start": os.getloadavg()}
    print(f"machine: {machine}; budget {args.budget:g} s; {args.baselines} baseline seeds, "
          f"{len(cands)} candidates; OMP_NUM_THREADS={args.threads}", flush=True)
    print(f"prepared the small corpus in {prepare(root, env):.1f} s", flush=True)
    data: dict[str, Any] = {"machine": machine, "budget": args.budget, "threads": args.threads,
                            "proposer_seed": args.proposer_seed, "runs": []}
    t_start = time.time()
    base_dir = workdir(root, "baseline", base)
    for i, (kind, which) in enumerate(schedule(args.baselines, len(cands))):
        if kind == "baseline":
            d, seed, what = base_dir, which, "baseline"
        else:
            what, source = cands[which]
            d, seed = workdir(root, f"c{which:03d}", source), 1
        r = run_streamed(d, env, seed, args.budget, args.budget + 300)
        r.update(kind=kind, description=what)
        data["runs"].append(r)
        bpb = f"{r['val_bpb']:.6f}" if r["val_bpb"] is not None else "-"
        print(f"[{i + 1:2d}] {kind:9s} seed {seed}: {r['status']:5s} val_bpb {bpb}  steps {r['steps']}  "
              f"wall {r['wall_seconds']:.1f} s  {what}", flush=True)
        data["wall_seconds"] = round(time.time() - t_start, 1)
        data["machine"]["load_avg_end"] = os.getloadavg()
        if out is not None:
            out.write_text(json.dumps(data))
    return data


def line_of(runs: list[dict[str, Any]]) -> judge.Line:
    results = [Result(job=f"b{i}", cand="base", commit="base", attempt=1, status="ok", val_bpb=r["val_bpb"],
                      accelerator="cpu", seed=r["seed"], purpose="baseline") for i, r in enumerate(runs)]
    return judge.Line(commit="base", results=results)


def cut_point(run: dict[str, Any], line_curves: list[Any], rule: cut.Rule) -> float | None:
    """The wall time (since its start) at which ``rule`` would have cut ``run``, or None if it would not.
    The check runs once, at the first step line at or past the checkpoint, on the curve up to it."""
    pts = run["points"]
    at = next((i for i, p in enumerate(pts) if p[0] >= rule.progress), None)
    if at is None:
        return None
    return pts[at][2] if cut.decide([p[:2] for p in pts[: at + 1]], line_curves, rule).cut else None


def rules() -> list[cut.Rule]:
    return ([cut.Rule(p, t, "relative") for p in PROGRESS for t in RELATIVE]
            + [cut.Rule(p, k, "spread") for p in PROGRESS for k in SPREAD])


def evaluate(data: dict[str, Any]) -> dict[str, Any]:
    base = [r for r in data["runs"] if r["kind"] == "baseline" and r["status"] == "ok"]
    cands = [r for r in data["runs"] if r["kind"] == "candidate"]
    if len(base) < 2 or not cands:
        raise SystemExit("need at least two ok baseline runs and one candidate")
    mean = statistics.fmean(r["val_bpb"] for r in base)
    margin = judge.margin_now(line_of(base), "cpu", JudgeSettings())
    for r in cands:
        r["delta"] = None if r["val_bpb"] is None else r["val_bpb"] - mean
        r["win"] = r["delta"] is not None and -r["delta"] > margin
    total = sum(r["wall_seconds"] for r in cands)
    wins = sum(r["win"] for r in cands)
    rows = []
    for rule in rules():
        curves = [r["curve"] for r in base]
        at = {i: t for i, r in enumerate(cands) if (t := cut_point(r, curves, rule)) is not None}
        saved = sum(cands[i]["wall_seconds"] - t for i, t in at.items())
        cut_runs = [cands[i] for i in at]
        wrong = sum(r["win"] for r in cut_runs)
        better = sum(r["delta"] is not None and r["delta"] < 0 for r in cut_runs)
        loo = sum(cut_point(r, [o["curve"] for o in base if o is not r], rule) is not None for r in base)
        share = wrong / len(cut_runs) if cut_runs else 0.0
        meets = saved / total >= SAVED_BAR and share <= WRONGFUL_BAR
        rows.append({"rule": rule.label(), "kind": rule.kind, "progress": rule.progress, "threshold": rule.threshold,
                     "cut": len(cut_runs), "saved": saved / total, "wrongful": share, "wrongful_n": wrong,
                     "cut_better": better, "baseline_cut": loo, "meets": meets})
    ok = [r for r in cands if r["status"] == "ok"]
    by_progress = []
    for p in PROGRESS:  # how well the loss at p foretells the end, and what a perfect rule at p would save
        pairs = [(v, r["val_bpb"]) for r in ok if (v := cut.loss_at(r["curve"], p)) is not None]
        ref = cut.reference([r["curve"] for r in base], p)
        oracle = sum(r["wall_seconds"] - pts[at][2] for r in cands if not r["win"] and (pts := r["points"])
                     and (at := next((i for i, q in enumerate(pts) if q[0] >= p), None)) is not None)
        by_progress.append({"progress": p, "corr": statistics.correlation(*zip(*pairs)) if len(pairs) > 2 else None,
                            "line_mean": ref[0] if ref else None, "line_sd": ref[1] if ref else None,
                            "oracle_saved": oracle / total})
    return {"baseline_mean": mean, "baseline_sd": statistics.stdev(r["val_bpb"] for r in base),
            "margin": margin, "n_base": len(base), "n_cand": len(cands), "n_ok": len(ok), "wins": wins,
            "better": sum(r["delta"] < 0 for r in ok), "candidate_seconds": total, "rows": rows,
            "by_progress": by_progress}


def report(data: dict[str, Any], ev: dict[str, Any]) -> str:
    base = [r for r in data["runs"] if r["kind"] == "baseline" and r["status"] == "ok"]
    steps = [r["steps"] for r in data["runs"] if r["steps"]]
    head = (f"budget {data['budget']:g} s, {ev['n_base']} baseline runs (val_bpb mean {ev['baseline_mean']:.4f}, "
            f"sd {ev['baseline_sd']:.4f}), {ev['n_cand']} candidates ({ev['n_ok']} ok, {ev['better']} below the "
            f"baseline mean, {ev['wins']} wins: beat it by the judge's margin {ev['margin']:.4f}); steps per run "
            f"{min(steps)}-{max(steps)}; candidates' run time {ev['candidate_seconds']:.0f} s; "
            f"collection wall time {data.get('wall_seconds', 0):.0f} s; baseline walls "
            f"{min(r['wall_seconds'] for r in base):.1f}-{max(r['wall_seconds'] for r in base):.1f} s")
    lines = [head, "", "| rule | cut | time saved | wrongful (cut wins / cut) | cut runs below baseline mean "
             "| baseline runs cut (leave one out) | verdict |", "|---|---|---|---|---|---|---|"]
    for r in ev["rows"]:
        verdict = "meets" if r["meets"] else "does not meet"
        lines.append(f"| {r['rule']} | {r['cut']} | {r['saved']:.1%} | {r['wrongful']:.1%} ({r['wrongful_n']}/{r['cut']}) "
                     f"| {r['cut_better']} | {r['baseline_cut']}/{ev['n_base']} | {verdict} |")
    lines += ["", "| progress p | corr(candidate loss at p, final val_bpb) | main line's loss at p: mean (sd) "
              "| time saved by a perfect rule at p (every non-win cut) |", "|---|---|---|---|"]
    for b in ev["by_progress"]:
        corr = "n/a" if b["corr"] is None else f"{b['corr']:.2f}"
        line = "n/a" if b["line_mean"] is None else f"{b['line_mean']:.3f} ({b['line_sd']:.3f})"
        lines.append(f"| {b['progress']:g} | {corr} | {line} | {b['oracle_saved']:.1%} |")
    lines.append("")
    for r in ev["rows"]:
        why = [] if r["saved"] >= SAVED_BAR else [f"saves {r['saved']:.1%} < {SAVED_BAR:.0%}"]
        why += [] if r["wrongful"] <= WRONGFUL_BAR else [f"wrongful {r['wrongful']:.1%} > {WRONGFUL_BAR:.0%}"]
        lines.append(f"verdict {r['rule']}: " + ("meets (saves {:.1%}, wrongful {:.1%})".format(r["saved"], r["wrongful"])
                                                 if r["meets"] else "does not meet: " + "; ".join(why)))
    met = [r["rule"] for r in ev["rows"] if r["meets"]]
    best = max(ev["rows"], key=lambda r: (r["meets"], r["saved"], -r["wrongful"]))
    lines.append(f"headline: {len(met)} of {len(ev['rows'])} rules meet the bar (>= {SAVED_BAR:.0%} saved, <= "
                 f"{WRONGFUL_BAR:.0%} wrongful)" + (f": {', '.join(met)}" if met else "")
                 + f"; most saved: {best['rule']} {best['saved']:.1%} with {best['wrongful']:.1%} wrongful "
                 f"({ev['n_cand']} candidates, {ev['wins']} wins)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--baselines", type=int, default=6, help="B: baseline runs, on seeds 1..B (>= 2)")
    ap.add_argument("--candidates", type=int, default=42, help="N: candidates of the offline search, each run once")
    ap.add_argument("--budget", type=float, default=18.0, help="AUTORESEARCH_TIME_BUDGET of every run, seconds")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every run")
    ap.add_argument("--proposer-seed", type=int, default=0, help="seed of the offline search")
    ap.add_argument("--work-root", default=None, help="scratch directory (default: a fresh temporary one, removed)")
    ap.add_argument("--json", default=None, help="write every run (curves, timings, val_bpb) and the table here")
    ap.add_argument("--from-json", default=None, help="evaluate the runs of this file; run nothing")
    ap.add_argument("--quick", action="store_true", help="B=2, N=3, a 2 s budget: a smoke run")
    args = ap.parse_args(argv)
    if args.quick:
        args.baselines, args.candidates, args.budget = 2, 3, 2.0
    if args.baselines < 2:
        ap.error("--baselines must be at least 2")
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
    else:
        own_root = args.work_root is None
        root = Path(args.work_root or tempfile.mkdtemp(prefix="arf-early-cut-"))
        out = Path(args.json) if args.json else None
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = collect(args, root, out)
        finally:
            if own_root:
                shutil.rmtree(root, ignore_errors=True)
    ev = evaluate(data)
    print(report(data, ev))
    if args.json:
        Path(args.json).write_text(json.dumps({**data, "evaluation": ev}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
