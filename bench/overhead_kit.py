"""The pure parts of bench/farm_overhead.py: the scripted train.py, the bench proposer, and the arithmetic of
the measurements (tested in tests/policy/test_bench.py without Ray)."""

from __future__ import annotations

import itertools
import math
import random
import re
import statistics
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

from proposer.base import Proposal

TRAIN_PY = '''"""Scripted stand-in for train.py (bench/farm_overhead.py): sleeps, then prints a summary."""
import os, random, time

SLEEP = 10.0  # seconds of pretend training: the budget D
GAIN = 0.0  # planted improvements add up here
WIN_ID = 0  # which planted improvement this is (keeps two wins on one base distinct)
NOISE = 0.002  # seed noise of val_bpb


# neutral constant: what most candidates change (far from GAIN, so rebases merge cleanly)
KNOB = 0

time.sleep(SLEEP)
val_bpb = 1.0 - GAIN + random.Random(os.urandom(8)).gauss(0.0, NOISE)
print("---")
print(f"val_bpb:          {val_bpb:.6f}")
print(f"training_seconds: {SLEEP:.1f}")
print(f"total_seconds:    {SLEEP + 0.1:.1f}")
print("peak_vram_mb:     1024.0")
print("mfu_percent:      0.00")
print("total_tokens_M:   0.0")
print("num_steps:        1")
print("num_params_M:     0.0")
print("depth:            1")
'''

# ---------------------------------------------------------------------------------- pure helpers

def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "median": percentile(values, 50), "p99": percentile(values, 99),
            "mean": statistics.fmean(values) if values else math.nan, "max": max(values, default=math.nan)}


def worker_cycles(runs: list[dict[str, Any]], after: float) -> tuple[list[float], list[float]]:
    """(cycles, idle gaps) of consecutive runs on each worker whose earlier run finished at/after ``after``.

    ``runs``: dicts with worker, started_at, finished_at. A cycle is finish-to-finish of two
    consecutive runs on one worker; the gap is the later run's start minus the earlier one's finish.
    """
    by_worker: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        by_worker[r["worker"]].append(r)
    cycles, gaps = [], []
    for rs in by_worker.values():
        rs.sort(key=lambda r: r["started_at"])
        for a, b in itertools.pairwise(rs):
            if a["finished_at"] >= after:
                cycles.append(b["finished_at"] - a["finished_at"])
                gaps.append(b["started_at"] - a["finished_at"])
    return cycles, gaps


def throughput_fraction(cycles: list[float], duration: float) -> float:
    """Runs per second as a fraction of the ideal (one run every ``duration`` s on every worker)."""
    return duration * len(cycles) / sum(cycles) if cycles else math.nan


def per_run(delta: float, runs: int) -> float:
    return delta / runs if runs else math.nan


def memory_fit(available_bytes: float, per_actor_bytes: float, reserve_bytes: float = 2 * 2**30) -> int:
    """How many worker actors fit in ``available_bytes`` keeping ``reserve_bytes`` free."""
    return max(0, int((available_bytes - reserve_bytes) // per_actor_bytes)) if per_actor_bytes > 0 else 0


def set_constant(source: str, name: str, value: str) -> str:
    """Replace the literal of the top-level line ``NAME = literal  # comment``."""
    new, n = re.subn(rf"^({name} = )([^#\n]*?)(\s*#.*)?$", lambda m: m.group(1) + value + (m.group(3) or ""),
                     source, count=1, flags=re.MULTILINE)
    if n != 1:
        raise ValueError(f"no constant {name}")
    return new


def get_constant(source: str, name: str) -> str:
    m = re.search(rf"^{name} = ([^#\n]*?)\s*(#.*)?$", source, flags=re.MULTILINE)
    if not m:
        raise ValueError(f"no constant {name}")
    return m.group(1)


class BenchProposer:
    """Endless neutral edits (KNOB = a fresh number) and, with probability win_prob, a planted win."""

    def __init__(self, seed: int = 0, win_prob: float = 0.03, gain: float = 0.01):
        self.rng, self.win_prob, self.gain, self.count = random.Random(seed), win_prob, gain, 0

    def propose(self, n: int, history: Any) -> list[Proposal]:
        out = []
        for _ in range(n):
            self.count += 1
            src = history.base_source
            if self.rng.random() < self.win_prob:
                gain = round(float(get_constant(src, "GAIN")) + self.gain, 6)
                src = set_constant(set_constant(src, "GAIN", repr(gain)), "WIN_ID", str(self.count))
                out.append(Proposal(f"GAIN -> {gain} (win {self.count})", src, "bench", {"win": True}))
            else:
                src = set_constant(src, "KNOB", str(self.count))
                out.append(Proposal(f"KNOB -> {self.count}", src, "bench", {"win": False}))
        return out


def make_repo(path: Path, duration: float) -> Path:
    path.mkdir(parents=True)
    (path / "train.py").write_text(set_constant(TRAIN_PY, "SLEEP", repr(float(duration))))
    (path / "prepare.py").write_text('"""frozen harness stand-in"""\n')
    for args in (["init", "-q", "-b", "main"], ["add", "train.py", "prepare.py"],
                 ["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", "baseline"]):
        subprocess.run(["git", *args], cwd=path, check=True, capture_output=True)
    return path
