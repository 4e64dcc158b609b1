"""Seed pairing on CPU: what a candidate's first run sharing the baseline's seed buys, with the real train.py.

The farm gives the k-th job queued for a commit the seed k + 1 (AUTORESEARCH_SEED, read by
``prepare.seed()``; train.py seeds its initialisation and its train data order from it), so a
candidate's first measurement runs on seed 1, like the baseline's first run ("common random
numbers"). If the seed's effect on val_bpb is shared by the two codes, the paired difference
(candidate seed k - baseline seed k) varies less than an unpaired one (candidate seed k - baseline
seed k + 1). This measures by how much, on this machine.

What runs: ``train.py`` of this repository (the baseline) and a candidate that changes one constant
by text replacement in a scratch copy (default ``MATRIX_LR`` x1.25: 0.04 -> 0.05), each under seeds
1..K, one run at a time, interleaved (baseline seed 1, candidate seed 1, baseline seed 2, ...) so a
slow drift in the machine's load touches both alike; then the baseline on seed 1 once more (the
same-seed repeat: on CPU the budget is wall-clock, so the step count and with it val_bpb follow
the machine's load). Data: the small offline corpus of tests/worker/test_train.py (80 stdlib
sources, vocab 512, rows of 128 tokens), prepared once in the work directory. Each run gets one
torch thread (``--threads``), as the tests do: with two, a core busy elsewhere collapses throughput.

Reported: the std over seeds of val_bpb for each code, the std of the paired differences and of
the unpaired ones (cyclic: candidate seed k - baseline seed k mod K + 1), their ratio, the paired
differences of the seeds where both codes took the same number of steps (timing taken out), and the
repeat difference; stds are sample stds (n - 1).

A budget far below one step's time (e.g. 0.001 s) makes every run step-bounded (exactly two steps:
the first is excluded from the budget and the second spends it; tests/worker/test_train.py uses
this for determinism). ``--quick`` uses it for a smoke run; the measurement itself trains for real.

Examples:
  python bench/seed_pairing.py --quick                  # K=2, step-bounded runs: a smoke run
  python bench/seed_pairing.py --seeds 11 --budget 6    # the docs/BENCHMARKS.md measurement
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker.summary import parse_summary

REPO = Path(__file__).resolve().parent.parent
CORPUS_FILES = 80


def candidate_source(base: str, constant: str, factor: float) -> tuple[str, str]:
    """The base source with ``CONSTANT = value`` scaled by ``factor``, and a one-line description."""
    prefix = f"\n{constant} = "
    at = base.find(prefix)
    if at < 0:
        raise ValueError(f"train.py has no line `{constant} = ...`")
    start = at + len(prefix)
    end = start
    while end < len(base) and base[end] not in " #\n":
        end += 1
    old = base[start:end]
    new = f"{float(old) * factor:.6g}"
    if new == old:
        raise ValueError(f"{constant} = {old} x{factor} is unchanged")
    return base[:start] + new + base[end:], f"{constant} {old} -> {new}"


def sd(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else float("nan")


def pairing_stats(base: list[float], cand: list[float]) -> dict[str, float]:
    """Per-seed val_bpb of the two codes (index k = seed k + 1) -> the spreads and the pairing ratio."""
    if len(base) != len(cand) or len(base) < 2:
        raise ValueError("need the same K >= 2 seeds for both")
    k = len(base)
    paired = [c - b for b, c in zip(base, cand)]
    unpaired = [cand[i] - base[(i + 1) % k] for i in range(k)]
    out = {
        "K": k, "sd_base": sd(base), "sd_cand": sd(cand), "mean_base": statistics.fmean(base),
        "mean_cand": statistics.fmean(cand), "mean_diff": statistics.fmean(paired),
        "sd_paired": sd(paired), "sd_unpaired": sd(unpaired),
        "corr": statistics.correlation(base, cand) if sd(base) > 0 and sd(cand) > 0 else float("nan"),
    }
    out["ratio"] = out["sd_paired"] / out["sd_unpaired"] if out["sd_unpaired"] > 0 else float("nan")
    return out


def harness_env(cache: Path, threads: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
    env.update(AUTORESEARCH_CACHE=str(cache), AUTORESEARCH_DEVICE="cpu", AUTORESEARCH_PROFILE="cpu",
               AUTORESEARCH_VOCAB_SIZE="512", AUTORESEARCH_SEQ_LEN="128", PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS=str(threads), **extra)
    return env


def prepare(root: Path, env: dict[str, str]) -> float:
    """The small offline corpus (as tests/worker/test_train.py makes it), tokenized under root/cache."""
    src = root / "corpus"
    if not src.is_dir():
        src.mkdir(parents=True)
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        for path in sorted(stdlib.glob("*.py"))[:CORPUS_FILES]:
            shutil.copy(path, src / path.name)
    d = root / "prepare"
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "prepare.py", d)
    t0 = time.time()
    out = subprocess.run([sys.executable, "prepare.py", "--source", str(src)], check=False, cwd=d, env=env,
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError("prepare.py failed:\n" + out.stdout[-3000:] + out.stderr[-3000:])
    return time.time() - t0


def workdir(root: Path, name: str, source: str) -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "prepare.py", d)
    (d / "train.py").write_text(source)
    return d


def train(d: Path, env: dict[str, str], seed: int, budget: float, timeout: float) -> dict[str, Any]:
    t0 = time.time()
    out = subprocess.run([sys.executable, "train.py"], check=False, cwd=d, capture_output=True, text=True, timeout=timeout,
                         env=dict(env, AUTORESEARCH_SEED=str(seed), AUTORESEARCH_TIME_BUDGET=f"{budget:g}"))
    wall = time.time() - t0
    s = parse_summary(out.stdout) if out.returncode == 0 else None
    if s is None or f"| seed: {seed} |" not in out.stdout:
        raise RuntimeError(f"train.py in {d} (seed {seed}) failed, rc {out.returncode}:\n"
                           + out.stdout[-3000:] + out.stderr[-3000:])
    return {"seed": seed, "val_bpb": s["val_bpb"], "steps": s["num_steps"],
            "training_seconds": s["training_seconds"], "wall_seconds": round(wall, 2)}


def fmt(x: float, digits: int = 4) -> str:
    return "n/a" if math.isnan(x) else f"{x:.{digits}f}"


def table(st: dict[str, Any], runs: dict[str, list[dict[str, Any]]], repeat: dict[str, Any] | None) -> str:
    steps = {name: [r["steps"] for r in rows] for name, rows in runs.items()}
    rows = [
        ("std over seeds, baseline val_bpb", fmt(st["sd_base"]), (f"mean {fmt(st['mean_base'])}; steps "
         f"{min(steps['baseline'])}-{max(steps['baseline'])} (mean {statistics.fmean(steps['baseline']):.1f})")),
        ("std over seeds, candidate val_bpb", fmt(st["sd_cand"]), (f"mean {fmt(st['mean_cand'])}; steps "
         f"{min(steps['candidate'])}-{max(steps['candidate'])} (mean {statistics.fmean(steps['candidate']):.1f})")),
        ("std of paired diffs (cand k - base k)", fmt(st["sd_paired"]), f"mean diff {st['mean_diff']:+.4f}"),
        ("std of unpaired diffs (cand k - base k+1)", fmt(st["sd_unpaired"]), "cyclic"),
        ("ratio paired / unpaired", fmt(st["ratio"], 2), f"corr(base, cand) over seeds {fmt(st['corr'], 2)}"),
    ]
    same = [c["val_bpb"] - b["val_bpb"] for b, c in zip(runs["baseline"], runs["candidate"]) if b["steps"] == c["steps"]]
    rows.append(("std of paired diffs, same step count only", fmt(sd(same)),
                 f"{len(same)} of {st['K']} seeds took equal steps"))
    if repeat is not None:
        first = runs["baseline"][0]
        rows.append(("same-seed repeat diff (base seed 1, twice)", f"{repeat['val_bpb'] - first['val_bpb']:+.4f}",
                     f"steps {first['steps']} then {repeat['steps']}"))
    lines = ["| what | value | note |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=8, help="K: seeds 1..K for each code (K >= 2)")
    ap.add_argument("--budget", type=float, default=6.0, help="AUTORESEARCH_TIME_BUDGET of every run, seconds")
    ap.add_argument("--constant", default="MATRIX_LR", help="the train.py constant the candidate scales")
    ap.add_argument("--factor", type=float, default=1.25, help="the candidate's factor on --constant")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every run")
    ap.add_argument("--no-repeat", action="store_true", help="skip the same-seed repeat of baseline seed 1")
    ap.add_argument("--work-root", default=None, help="scratch directory (default: a fresh temporary one, removed)")
    ap.add_argument("--json", default=None, help="write every run and the statistics here")
    ap.add_argument("--quick", action="store_true", help="K=2 and a 0.001 s budget (step-bounded runs): a smoke run")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.budget = 2, 0.001
    if args.seeds < 2:
        ap.error("--seeds must be at least 2")

    t_start = time.time()
    own_root = args.work_root is None
    root = Path(args.work_root or tempfile.mkdtemp(prefix="arf-seed-pairing-"))
    try:
        env = harness_env(root / "cache", args.threads)
        base_src = (REPO / "train.py").read_text()
        cand_src, change = candidate_source(base_src, args.constant, args.factor)
        info = {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
                "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None}
        print(f"machine: {info}", flush=True)
        print(f"candidate: {change}; seeds 1..{args.seeds}; budget {args.budget:g} s; "
              f"OMP_NUM_THREADS={args.threads}", flush=True)
        print(f"prepared the small corpus in {prepare(root, env):.1f} s", flush=True)
        dirs = {"baseline": workdir(root, "baseline", base_src), "candidate": workdir(root, "candidate", cand_src)}
        timeout = args.budget + 300
        runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "candidate": []}
        for seed in range(1, args.seeds + 1):
            for name, d in dirs.items():
                r = train(d, env, seed, args.budget, timeout)
                runs[name].append(r)
                print(f"{name:9s} seed {seed:2d}: val_bpb {r['val_bpb']:.6f}  steps {r['steps']:3d}  "
                      f"wall {r['wall_seconds']:.1f} s", flush=True)
        repeat = None
        if not args.no_repeat:
            repeat = train(dirs["baseline"], env, 1, args.budget, timeout)
            print(f"baseline  seed  1 again: val_bpb {repeat['val_bpb']:.6f}  steps {repeat['steps']:3d}  "
                  f"wall {repeat['wall_seconds']:.1f} s", flush=True)
        st = pairing_stats([r["val_bpb"] for r in runs["baseline"]], [r["val_bpb"] for r in runs["candidate"]])
        wall = time.time() - t_start
        info["load_avg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": info, "change": change, "budget": args.budget,
                                                   "threads": args.threads, "runs": runs, "repeat": repeat,
                                                   "stats": st, "wall_seconds": wall}, indent=1))
        print(table(st, runs, repeat))
        print(f"wall time {wall:.0f} s; load average at the end {info['load_avg_end']}")
        rep = "" if repeat is None else f", same-seed repeat {repeat['val_bpb'] - runs['baseline'][0]['val_bpb']:+.4f}"
        print(f"headline: {change}, K={st['K']}, budget {args.budget:g} s: sd paired {fmt(st['sd_paired'])} vs "
              f"unpaired {fmt(st['sd_unpaired'])} (ratio {fmt(st['ratio'], 2)}); sd over seeds "
              f"{fmt(st['sd_base'])} / {fmt(st['sd_cand'])}{rep}")
        return 0
    finally:
        if own_root:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
