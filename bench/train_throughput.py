"""Training throughput and the worker-side overhead of one experiment, through the farm's own worker.

What runs: ``train.py`` of this repository, ``--runs`` times in a row, through the same
:class:`worker.actor.Worker` the farm's Ray actors wrap (scrubbed environment, containment,
network namespace, frozen-file check, the compile caches kept under the worker's root). No Ray,
Redis or git: this measures one worker, so it also runs where those are not installed. The
compile caches start empty, so run 1 is a cold start and the later runs are warm ones (with
``--view alternate``, runs with and without the view take turns, each kind in a worker of its own
whose first run is cold). ``--second-worker`` ends with one run in another worker of the same node,
whose first experiment should start warm from the node's shared compile cache.

Per run it reports, from the summary block and from the time each log line appeared:
  val_bpb, training_seconds, tokens/s (median of the second half of the step lines), MFU,
  peak VRAM;
  startup    process start -> first step line (imports, data, model, the first compiled step);
  eval       last step line -> the worker's result (hand-over, exit, and the trusted evaluator's
             process: start-up, rebuilding the model, scoring; ``evaluator_seconds`` is its share);
  overhead   the worker's whole call minus training_seconds: everything an experiment costs
             around its budget, as a fraction of the budget too.

Prepare the data first (``python prepare.py``). Examples:
  python bench/train_throughput.py --quick              # CPU: two 10 s runs
  python bench/train_throughput.py --quick --runs 9 --view alternate   # CPU: tok/s with the view / without
  python bench/train_throughput.py --runs 2 --budget 300 --warm-budget 60 --second-worker --json out.json  # GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
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

from worker.actor import Worker
from worker.settings import WorkerSettings

REPO = Path(__file__).resolve().parent.parent
STEP_LINE = re.compile(r"^step (\d+) \|.*?\| ([\d,]+) tok/s")


class LineClock:
    """Follows a growing log file on a thread and notes when step lines first appear."""

    def __init__(self, path: Path, poll_s: float = 0.1):
        self.path, self.poll_s = path, poll_s
        self.first_step: float | None = None
        self.last_step: float | None = None
        self.tok_per_s: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self) -> "LineClock":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _follow(self) -> None:
        offset, partial = 0, b""
        while True:
            stopping = self._stop.is_set()
            try:
                with open(self.path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
            offset += len(chunk)
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()
            now = time.time()
            for raw in lines:
                self.feed(raw.decode("utf-8", "replace").rstrip("\r"), now)
            if stopping:
                return
            self._stop.wait(self.poll_s)

    def feed(self, line: str, now: float) -> None:
        m = STEP_LINE.match(line)
        if m:
            self.first_step = self.first_step if self.first_step is not None else now
            self.last_step = now
            self.tok_per_s.append(float(m.group(2).replace(",", "")))


def steady_rate(rates: list[float]) -> float | None:
    """Median tokens/s over the second half of the steps (past compilation and warm-up)."""
    half = rates[len(rates) // 2:]
    return statistics.median(half) if half else None


def measure(worker: Worker, files: dict[str, bytes], index: int, budget: float, cold: bool) -> dict[str, Any]:
    worker.settings = dataclasses.replace(worker.settings, budget=budget)
    job = {"id": f"run{index}", "cand": "bench", "commit": "HEAD", "attempt": 1, "purpose": "measure"}
    log_path = worker.root / "logs" / f"bench-run{index}-a1.log"
    t0 = time.time()
    with LineClock(log_path) as clock:
        out = worker.run(job, files, harness_digest="bench")
    call_s = time.time() - t0
    r = out["result"]
    s = r.get("summary") or {}
    trained = r.get("training_seconds")
    row = {
        "run": index, "cache": "cold" if cold else "warm", "budget": budget, "status": r["status"],
        "reason": r.get("reason"), "val_bpb": r.get("val_bpb"), "training_seconds": trained,
        "wall_seconds": round(r["wall_seconds"], 2), "call_seconds": round(call_s, 2),
        "startup_seconds": round(clock.first_step - t0, 2) if clock.first_step else None,
        "eval_seconds": round(r["finished_at"] - clock.last_step, 2) if clock.last_step else None,
        "evaluator_seconds": s.get("eval_seconds"), "eval_checks": s.get("eval_checks"),
        "overhead_seconds": round(call_s - trained, 2) if trained is not None else None,
        "tok_per_s": steady_rate(clock.tok_per_s), "steps": s.get("num_steps"), "mfu_percent": s.get("mfu_percent"),
        "peak_vram_mb": s.get("peak_vram_mb"), "total_tokens_M": s.get("total_tokens_M"),
        "num_params_M": s.get("num_params_M"), "containment": r.get("containment"), "log": r.get("log_path"),
    }
    row["overhead_fraction"] = round(row["overhead_seconds"] / budget, 4) if row["overhead_seconds"] is not None else None
    if r["status"] != "ok":
        row["log_tail"] = r.get("log_tail")
    return row


def machine() -> dict[str, Any]:
    info = {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()}
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True)
        info["gpu"] = q.stdout.strip() or q.stderr.strip()
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=None,
                    help="runs in a row (default 2); run 1 starts with empty compile caches")
    ap.add_argument("--budget", type=float, default=300.0, help="training seconds of run 1")
    ap.add_argument("--warm-budget", type=float, default=None, help="training seconds of runs 2+ (default: --budget)")
    ap.add_argument("--grace", type=float, default=180.0, help="seconds past the budget before a run is killed")
    ap.add_argument("--work-root", default=None, help="the worker's directory (default: a fresh temporary one)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--no-netns", action="store_true", help="do not isolate the network (as train.isolate_network=false)")
    ap.add_argument("--no-trusted-eval", action="store_true",
                    help="score in the training process (as train.trusted_eval=false); default: the farm's evaluator")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for train.py (as train.env; repeatable)")
    ap.add_argument("--view", choices=("on", "off", "alternate"), default="on",
                    help="the sandbox's private filesystem view (train: always on); alternate: warm runs take turns "
                         "without and with it, and the tok/s ratio with/without is printed")
    ap.add_argument("--second-worker", action="store_true",
                    help="end with one run in a second worker of this node (the shared compile cache: it should "
                         "start warm)")
    ap.add_argument("--json", default=None, help="write the rows and the machine here")
    ap.add_argument("--quick", action="store_true", help="10 s runs (CPU-sized), two unless --runs says")
    args = ap.parse_args(argv)
    if args.quick:
        args.budget, args.warm_budget, args.grace = 10.0, 10.0, 120.0
    args.runs = args.runs or 2
    warm_budget = args.warm_budget if args.warm_budget is not None else args.budget

    root = Path(args.work_root or tempfile.mkdtemp(prefix="arf-train-bench-"))
    for where in (root, root / "plain"):  # the first run must be a cold start (the node's compile cache)
        shutil.rmtree(where / "compile-cache", ignore_errors=True)
    settings = WorkerSettings(
        name="bench", work_root=str(root), command=["python", "train.py"], prepare_command=[],
        budget=args.budget, grace=args.grace, cache_dir="", isolate_network=not args.no_netns,
        env=dict(kv.split("=", 1) for kv in args.env), cpu_threads=args.threads, device="", frozen=["prepare.py"],
        trusted_eval=not args.no_trusted_eval, view=args.view != "off",
    )
    worker = Worker(settings)
    # without the view, a node of its own: a view's runs own the node's compile cache and their worker's
    # directories (uid 65534), which a run without the view (root only inside its user namespace) cannot write
    plain = (Worker(dataclasses.replace(settings, name="bench-plain", work_root=str(root / "plain"), view=False))
             if args.view == "alternate" else worker)
    started: set[str] = set()
    files = {name: (REPO / name).read_bytes() for name in ("train.py", "prepare.py")}
    report: dict[str, Any] = {"machine": machine(), "accelerator": worker.accelerator, "rows": []}
    print(f"machine: {report['machine']}", flush=True)
    second = Worker(dataclasses.replace(settings, name="bench-2")) if args.second_worker else None
    total = args.runs + bool(second)
    for i in range(1, total + 1):
        viewed = args.view == "on" or (args.view == "alternate" and i % 2 == 1)
        who = second if second is not None and i > args.runs else worker if viewed else plain
        cold = who.name not in started and who is not second  # the second worker: the node's cache is warm
        started.add(who.name)
        budget = args.budget if cold else warm_budget
        print(f"run {i}/{total}: budget {budget:g} s{' (cold)' if cold else ''}, view "
              f"{'on' if viewed else 'off'}{', a second worker' if who is second else ''} ...", flush=True)
        row = measure(who, files, i, budget, cold)
        row["view"] = viewed
        row["worker"] = who.name
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
        if row["status"] != "ok":
            print(f"run {i} ended {row['status']} ({row['reason']}); stopping", flush=True)
            return 1
    print(format_rows(report["rows"]))
    print(headline(report["rows"]))
    ratio = view_ratio(report["rows"])
    if ratio:
        print(ratio)
    if second is not None:
        first, last = report["rows"][0], report["rows"][-1]
        print(f"second worker: its first run's start-up {last['startup_seconds']} s; the node's first run's "
              f"{first['startup_seconds']} s (cold)")
    return 0


def format_rows(rows: list[dict[str, Any]]) -> str:
    cols = ["run", "worker", "view", "cache", "budget", "val_bpb", "training_seconds", "startup_seconds",
            "eval_seconds", "overhead_seconds", "overhead_fraction", "tok_per_s", "mfu_percent", "peak_vram_mb"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join("" if r.get(c) is None else f"{r[c]:,.4g}" if isinstance(r[c], float)
                                       else str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def view_ratio(rows: list[dict[str, Any]]) -> str | None:
    """The warm runs' median tok/s with the view over without it (the cold starts left out)."""
    warm = [r for r in rows if r.get("cache") == "warm" and r.get("tok_per_s")]
    on, off = [r["tok_per_s"] for r in warm if r["view"]], [r["tok_per_s"] for r in warm if not r["view"]]
    if not (on and off):
        return None
    return (f"view: warm tok/s with / without = {statistics.median(on) / statistics.median(off):.3f} "
            f"({len(on)} and {len(off)} runs)")


def headline(rows: list[dict[str, Any]]) -> str:
    parts = [f"{r['cache']} run: overhead {r['overhead_seconds']:.1f} s around a {r['budget']:g} s budget "
             f"({100 * r['overhead_fraction']:.1f} %), val_bpb {r['val_bpb']:.4f}" for r in rows]
    return "headline: " + "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
