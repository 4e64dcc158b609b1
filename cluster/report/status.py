"""`autoresearch-farm status`: a run's state as a dictionary (`--json` prints it) and as text.

The dictionary: the run's status and how it ended, the baseline's and the main line's mean val_bpb,
candidates by state, the queue, the running jobs, the live workers and the controller, the merged
candidates, and the run's cost.
"""

from __future__ import annotations

import time
from typing import Any

from cluster.records import State
from cluster.report.results import costs
from cluster.store import Store


def status_dict(store: Store) -> dict[str, Any]:
    """The run's state, read from its store."""
    meta = store.run_meta() or {}
    counts = store.count_by_state()
    main = meta.get("main")
    results = store.results()
    line = [r.val_bpb for r in results if r.commit == main and r.val_bpb is not None]
    base = [r.val_bpb for r in results if r.commit == meta.get("baseline") and r.val_bpb is not None]
    board = []
    for c in store.candidates({State.MERGED.value}):
        vals = [r.val_bpb for r in results if r.commit == c.commit and r.val_bpb is not None]
        if vals:
            board.append({"cand": c.id, "commit": c.commit[:8], "val_bpb": sum(vals) / len(vals),
                          "description": c.description})
    return {
        "tag": store.tag, "status": meta.get("status"), "main": main, "created": meta.get("created"),
        "baseline_bpb": sum(base) / len(base) if base else None, "best_bpb": sum(line) / len(line) if line else None,
        "candidates": counts, "queued": store.queue_depth(),
        "running": [{"cand": j.cand, "job": j.id, "worker": j.worker, "attempt": j.attempt}
                    for j in store.running_jobs()],
        "experiments_measured": len({r.cand for r in results}), "measurements": len(results),
        "refused_late_results": len(store.refused()), "merged": board, "why_ended": meta.get("why"),
        "cost": costs(store), "workers": store.live_workers(), "controller": meta.get("controller"),
    }


def format_status(s: dict[str, Any], now: float | None = None) -> str:
    """`status_dict`'s dictionary as the lines `autoresearch-farm status` prints (each ending in a newline);
    `now` (default: the time) dates the workers' last signs of life."""
    best, base = s["best_bpb"], s["baseline_bpb"]
    out = [f"run {s['tag']}: {s['status']}" + (f" ({s['why_ended']})" if s.get("why_ended") else "")]
    if best is not None:
        delta = f" ({best - base:+.6f} vs baseline {base:.6f})" if base is not None else ""
        out.append(f"best val_bpb {best:.6f}{delta} at {s['main'][:8]}")
    out.append("candidates: " + ", ".join(f"{k} {v}" for k, v in sorted(s["candidates"].items()))
               + f"; queued jobs {s['queued']}")
    if s.get("controller"):
        c = s["controller"]
        out.append(f"controller: actor {c['actor']} on {c.get('node_ip', '?')} (pid {c.get('pid', '?')})")
    for r in s["running"]:
        out.append(f"  running {r['cand']} on {r['worker']} (attempt {r['attempt']})")
    if s["workers"]:
        now = time.time() if now is None else now
        out.append("workers: " + ", ".join(f"{n} ({w.get('accelerator', '?')}, seen {now - w['at']:.0f}s ago)"
                                           for n, w in sorted(s["workers"].items())))
    for m in s["merged"]:
        out.append(f"  {m['commit']} {m['val_bpb']:.6f} {m['cand']} {m['description']}")
    c = s["cost"]
    line = (f"cost: {c['gpu_hours']:.2f} GPU-h, {c['worker_hours']:.2f} worker-h, "
            f"{c['prompt_tokens'] + c['completion_tokens']:,} LLM tokens, ${c['usd']:.2f}")
    for what, label in (("per_experiment", "experiment"), ("per_merged", "merged improvement")):
        if c[what]:
            line += f"; per {label}: {c[what]['gpu_hours']:.2f} GPU-h, ${c[what]['usd']:.2f}"
    out.append(line)
    return "".join(f"{ln}\n" for ln in out)
