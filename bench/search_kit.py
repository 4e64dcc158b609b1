"""The pure parts of bench/farm_search.py: the scripted landscape, its train.py, the TRUE value of a source
text and the arithmetic of the results (tested in tests/policy/test_bench.py without Ray).

The landscape. val_bpb = 1 + the sum of one bowl per constant, ``weight * d**2`` with ``d`` the distance
to the constant's optimum in octaves (log2 of the ratio; for ADAM_BETA2 of ``1 - beta``, as the mutate
proposer steps betas), so the gains are INDEPENDENT (no term reads two constants): a step that helps
helps on any main line. The baseline sits 1-3 octaves from each optimum, so each constant's best
single step gains 0.0066-0.0080 and its other helpful steps 0.0027-0.0066: several merges are needed and
some of the gains sit near the judge's margin (~0.005 for one run against the line's three at
seed noise 0.002). Three more constants (LOG_EVERY, EVAL_BATCHES, WARMUP_STEPS) change nothing, as
many of a real train.py's do. A crash region stands in for running out of memory: a batch too large
for the depth (``TOTAL_BATCH / 2**16 * DEPTH / 4 > 8``), which the optimum (2**18, 8) just avoids.

The noise is a GPU's (tests/fixtures/scripted_train.py does the same): a run's error is
``NOISE * g(sha256 of the file's own text, the farm's seed) + JITTER * fresh``, so a re-run of one file
on one seed repeats itself up to the jitter, another seed or any change of the text (even a neutral
one) draws anew. ``REPLICATE`` only salts the text, so replicates see different noise; the farm is
told never to mutate it (nor SLEEP, NOISE, JITTER, MEMORY_LIMIT: ``EXCLUDE``).
"""

from __future__ import annotations

import ast
import inspect
import math
import random
import statistics
from typing import Any

# name: (baseline literal as written in train.py, optimum, weight per octave squared, what it stands for)
BOWLS: dict[str, tuple[str, float, float, str]] = {
    "LEARNING_RATE": ("0.08", 0.02, 0.0025, "peak learning rate (optimum two halvings down)"),
    "WEIGHT_DECAY": ("0.025", 0.2, 0.0015, "weight decay (optimum three doublings up)"),
    "WARMDOWN_RATIO": ("0.2", 0.5, 0.004, "share of the budget spent decaying the lr"),
    "ADAM_BETA2": ("0.9", 0.98, 0.002, "Adam's beta2 (distance on 1 - beta)"),
    "DEPTH": ("4", 8, 0.008, "layers"),
    "TOTAL_BATCH": ("2**16", 2**18, 0.0025, "tokens per step"),
}
NEUTRAL: dict[str, str] = {"LOG_EVERY": "100", "EVAL_BATCHES": "20", "WARMUP_STEPS": "10"}
EXCLUDE = ("SEED", "SLEEP", "NOISE", "JITTER", "REPLICATE", "MEMORY_LIMIT")  # proposer.exclude: never mutated
NOISE = 0.002  # std of the seed-to-seed error (the published seed noise of val_bpb)
JITTER = 0.0002  # std of the fresh error of every run (kernel nondeterminism)
MEMORY_LIMIT = 8.0  # TOTAL_BATCH / 2**16 * DEPTH / 4 above this "runs out of memory"
CRASH_FRACTION = 0.2  # a crash happens this far into the run's sleep (at start-up, as an OOM does)


def landscape(c: dict[str, Any]) -> float:
    """The TRUE val_bpb of the constants ``c`` (the scripted train.py calls this very function)."""
    total = 1.0
    for name, (_, best, weight, _) in BOWLS.items():
        x = c[name]
        d = math.log2((1 - x) / (1 - best)) if name == "ADAM_BETA2" else math.log2(x / best)
        total += weight * d * d
    return total


def crash_reason(c: dict[str, Any]) -> str:
    """Why a run with the constants ``c`` crashes ("" if it does not)."""
    memory = c["TOTAL_BATCH"] / 2**16 * c["DEPTH"] / 4
    if memory > MEMORY_LIMIT:
        return f"CUDA out of memory (scripted: {memory:g} units of activations, the card holds {MEMORY_LIMIT:g})"
    if not 0 < c["ADAM_BETA2"] < 1 or min(c[n] for n in BOWLS if n != "ADAM_BETA2") <= 0:
        return "a constant out of its domain"
    return ""


TRAIN_PY = '''"""Scripted stand-in for train.py (bench/farm_search.py): a known val_bpb landscape, GPU-like noise, a sleep."""
from __future__ import annotations

import hashlib
import math
import os
import random
import time

# the search surface: six bowls (bench/search_kit.py BOWLS) and three neutral constants
{constants}

REPLICATE = 0  # salts the text: each replicate draws its own noise (never mutated)
SLEEP = 3.0  # seconds of pretend training (never mutated)
NOISE = {noise!r}  # std of the seed-to-seed error (never mutated)
JITTER = {jitter!r}  # std of the fresh error of every run (never mutated)
MEMORY_LIMIT = {memory!r}  # the scripted card (never mutated)
BOWLS = {bowls!r}


{landscape}

{crash_reason}

consts = dict({call})
reason = crash_reason(consts)
time.sleep(SLEEP * ({crash!r} if reason else 1.0))
if reason:
    raise RuntimeError(reason)
seed = int(os.environ.get("AUTORESEARCH_SEED", "42"))  # the farm's seed, as prepare.seed() reads it
with open(__file__, "rb") as f:
    code = f.read()
# g(code, seed): a standard Gaussian fixed by this file's text and the farm's seed
seed_error = random.Random(hashlib.sha256(code + b"\\0seed=%d" % seed).digest()).gauss(0.0, 1.0)
val_bpb = landscape(consts) + NOISE * seed_error + random.Random(os.urandom(8)).gauss(0.0, JITTER)
print("---")
print(f"val_bpb:          {{val_bpb:.6f}}")
print(f"training_seconds: {{SLEEP:.1f}}")
print(f"total_seconds:    {{SLEEP + 0.1:.1f}}")
print("peak_vram_mb:     1024.0")
print("mfu_percent:      0.00")
print("total_tokens_M:   0.0")
print("num_steps:        1")
print("num_params_M:     0.0")
print(f"depth:            {{DEPTH}}")
print(f"seed_seen:        {{seed}}")
'''


def train_source(run_seconds: float = 3.0, replicate: int = 0) -> str:
    """The scripted train.py: the baseline constants, ``SLEEP = run_seconds``, the landscape."""
    names = [*BOWLS, *NEUTRAL]
    lines = [f"{n} = {BOWLS[n][0]}  # {BOWLS[n][3]}" for n in BOWLS]
    lines += [f"{n} = {v}  # neutral: read by nothing that scores" for n, v in NEUTRAL.items()]
    src = TRAIN_PY.format(
        constants="\n".join(lines), noise=NOISE, jitter=JITTER, memory=MEMORY_LIMIT,
        bowls={n: b for n, b in BOWLS.items()}, crash=CRASH_FRACTION,
        landscape=inspect.getsource(landscape).strip(), crash_reason=inspect.getsource(crash_reason).strip(),
        call=", ".join(f"{n}={n}" for n in names))
    src = src.replace("REPLICATE = 0 ", f"REPLICATE = {int(replicate)} ", 1)
    return src.replace("SLEEP = 3.0 ", f"SLEEP = {float(run_seconds)!r} ", 1)


# ---------------------------------------------------------------------------------- reading a source

def _value(node: ast.expr) -> Any:
    """A number written as a literal, a signed literal or arithmetic of literals (2**18, 3 * 2**16)."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float, bool, str):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _value(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Pow, ast.Add, ast.Sub, ast.Div)):
        a, b = _value(node.left), _value(node.right)
        ops = {ast.Mult: lambda: a * b, ast.Pow: lambda: a**b, ast.Add: lambda: a + b, ast.Sub: lambda: a - b,
               ast.Div: lambda: a / b}
        return ops[type(node.op)]()
    raise ValueError(f"not a literal: {ast.unparse(node)}")


def constants(source: str) -> dict[str, Any]:
    """The UPPER_CASE module-level constants written as literals in ``source`` (what the mutate proposer edits)."""
    out: dict[str, Any] = {}
    for stmt in ast.parse(source).body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            name = stmt.targets[0].id
            if name.isupper():
                try:
                    out[name] = _value(stmt.value)
                except (ValueError, KeyError, TypeError):
                    continue
    return out


def true_value(source: str) -> float:
    """The TRUE val_bpb of a train.py source (no noise); inf where it crashes."""
    c = constants(source)
    return math.inf if crash_reason(c) else landscape(c)


def baseline_true() -> float:
    return true_value(train_source())


def optimum_true() -> float:
    return landscape({n: b[1] for n, b in BOWLS.items()})


# ---------------------------------------------------------------------------------- results

def time_to(trajectory: list[tuple[float, float]], target: float) -> float:
    """First time the (seconds, TRUE value) trajectory of the main line is at or below ``target``; inf if never."""
    return next((t for t, v in trajectory if v <= target + 1e-12), math.inf)


def merges_of(trajectory: list[tuple[float, float]], until: float) -> tuple[int, int]:
    """(merges, false merges) by ``until``: each step of the trajectory after its first point is a merge; a
    false one did not lower the TRUE value."""
    merges = false = 0
    for (_, before), (t, after) in zip(trajectory, trajectory[1:]):
        if t <= until:
            merges += 1
            false += after >= before - 1e-12
    return merges, false


def median(xs: list[float]) -> float:
    """The median, inf counted as a value (a replicate that never reached the target), nan for none."""
    return statistics.median(xs) if xs else math.nan


def speedup(t_one: list[float], t_many: list[float]) -> float:
    """Ratio of the median times to target (1 worker / many); nan when neither median is finite."""
    a, b = median(t_one), median(t_many)
    if math.isnan(a) or math.isnan(b) or (math.isinf(a) and math.isinf(b)) or b == 0:
        return math.nan
    return a / b


def bootstrap(t_one: list[float], t_many: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """10th and 90th percentiles of ``speedup`` over replicates resampled with replacement (each side on its
    own); resamples where it is undefined (nan) are left out."""
    rng = random.Random(seed)
    xs = sorted(x for x in (speedup(rng.choices(t_one, k=len(t_one)), rng.choices(t_many, k=len(t_many)))
                            for _ in range(n)) if not math.isnan(x)) if t_one and t_many else []
    return (xs[len(xs) // 10], xs[(len(xs) * 9) // 10]) if xs else (math.nan, math.nan)


def row(workers: int, reps: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over replicates of one worker count. Each replicate: ``time`` (s to target, inf if never),
    ``wall`` (s it ran), ``runs`` (started by the target, or in all), ``merges``, ``false``, and ``purposes``."""
    times = [r["time"] for r in reps]
    reached = [r for r in reps if math.isfinite(r["time"])]
    per_merge = [workers * r["time"] / r["merges"] for r in reached if r["merges"]]
    return {
        "workers": workers, "times": times, "median_s": median(times), "reached": len(reached), "reps": len(reps),
        "runs": median([r["runs"] for r in reps]), "merges": median([r["merges"] for r in reps]),
        "false": sum(r["false"] for r in reps), "merged": sum(r["merges"] for r in reps),
        "gpu_s": median([workers * (r["time"] if math.isfinite(r["time"]) else r["wall"]) for r in reps]),
        "gpu_s_per_merge": median(per_merge) if per_merge else math.inf,
        "stale": median([r.get("stale", 0) for r in reps]), "crashes": median([r.get("crashes", 0) for r in reps]),
    }


COLUMNS = ("workers", "reached", "median s to target", "s to target per replicate", "GPU-s to target",
           "runs to target", "merges to target", "false merges", "GPU-s per merge", "stale", "crashes")
HEADER = "| " + " | ".join(COLUMNS) + " |\n" + "|---" * len(COLUMNS) + "|"


def _s(x: float) -> str:
    return "never" if math.isinf(x) else "-" if math.isnan(x) else f"{x:.0f}"


def table_row(x: dict[str, Any]) -> str:
    return (f"| {x['workers']} | {x['reached']} of {x['reps']} | {_s(x['median_s'])} | "
            f"{', '.join(_s(t) for t in x['times'])} | {_s(x['gpu_s'])} | {x['runs']:.0f} | {x['merges']:g} | "
            f"{x['false']} of {x['merged']} | {_s(x['gpu_s_per_merge'])} | {x['stale']:g} | {x['crashes']:g} |")
