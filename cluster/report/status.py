"""`autoresearch-farm status`: a run's state as a dictionary (`--json` prints it) and as text.

The dictionary: the run's status and how it ended, the baseline's and the main line's mean val_bpb
(each from its own line measurements), candidates by state, the queue, the running jobs, the live
workers and the controller, the merged candidates, the run's cost, the proposer's last error (an
endpoint down, an agent that failed, with its output's tail), and the noise floor the judge
works with (per accelerator: measured from the main line's seed-varied repeats, or the prior).
"""

from __future__ import annotations

import math
import time
from typing import Any

from cluster.config import JudgeSettings
from cluster.loop import judge
from cluster.records import Purpose, Result, State
from cluster.report.results import costs
from cluster.store import Store


DISAGREE = 1.5  # a measured floor this many times the prior (or below its inverse) says the prior is wrong
DISAGREE_DF = 6  # ... once it rests on this many degrees of freedom (a few repeats scatter more than that)


def _line_runs(results: list[Result], commit: str | None) -> list[Result]:
    """A main-line commit's own measurements (purpose baseline): its honest estimate."""
    return [r for r in results if r.commit == commit and r.purpose == Purpose.BASELINE.value]


def noise_floor(meta: dict[str, Any], lineage: list[list[Result]]) -> dict[str, Any]:
    """The noise the judge works with, per accelerator, from the seed-varied repeats of the run's
    commits measured as a line (``lineage``: each such commit's line runs), and where it comes from."""
    cfg = JudgeSettings(**{k: v for k, v in (meta.get("config") or {}).get("judge", {}).items()
                           if k in JudgeSettings.__dataclass_fields__})
    same_seed = meta.get("seeding") == "itself"
    out: dict[str, Any] = {"seeding": meta.get("seeding") or "unknown", "prior": cfg.default_noise, "by_accelerator": {}}
    for acc, h in ({} if same_seed else judge.repeats(lineage)).items():
        sigma = judge.noise_sigma([], cfg, history=(h["ss"], h["df"]))
        measured = math.sqrt(h["ss"] / h["df"])
        out["by_accelerator"][acc] = {
            "sigma": sigma, "measured": measured, "runs": int(h["runs"]), "commits": int(h["commits"]),
            # a prior off by more than half from what was measured (on enough repeats to tell): visible, not silent
            "prior_disagrees": bool(cfg.default_noise) and h["df"] >= DISAGREE_DF
            and not (1 / DISAGREE <= measured / cfg.default_noise <= DISAGREE),
        }
    return out


def status_dict(store: Store) -> dict[str, Any]:
    """The run's state, read from its store."""
    meta = store.run_meta() or {}
    counts = store.count_by_state()
    main = meta.get("main")
    results = store.results()
    line = [r.val_bpb for r in _line_runs(results, main) if r.val_bpb is not None]
    base = [r.val_bpb for r in _line_runs(results, meta.get("baseline")) if r.val_bpb is not None]
    board, lineage = [], {}
    for r in results:  # every commit measured as a line (main lines, winners' own line runs): the judge's floor
        if r.purpose == Purpose.BASELINE.value:
            lineage.setdefault(r.commit, []).append(r)
    for c in store.candidates({State.MERGED.value}):
        if (c.decision or {}).get("action") == "combined":
            continue  # merged as part of a combination: the main line holds the combination's commit
        runs = _line_runs(results, c.commit)
        vals = [r.val_bpb for r in runs if r.val_bpb is not None]
        board.append({"cand": c.id, "commit": c.commit[:8], "val_bpb": sum(vals) / len(vals) if vals else None,
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
        "noise": noise_floor(meta, list(lineage.values())), "harness": meta.get("harness"), "proposer": meta.get("proposer"),
    }


def format_status(s: dict[str, Any], now: float | None = None) -> str:
    """`status_dict`'s dictionary as the lines `autoresearch-farm status` prints (each ending in a newline);
    `now` (default: the time) dates the workers' last signs of life."""
    best, base = s["best_bpb"], s["baseline_bpb"]
    why = str(s.get("why_ended") or "")
    if "\n" in why:  # a run-level error (a failed prepare command): its message and its output's tail, in full
        out = [f"run {s['tag']}: {s['status']}"] + [f"  {ln}" for ln in why.splitlines()]
    else:
        out = [f"run {s['tag']}: {s['status']}" + (f" ({why})" if why else "")]
    if best is not None:
        delta = f" ({best - base:+.6f} vs baseline {base:.6f})" if base is not None else ""
        out.append(f"best val_bpb {best:.6f}{delta} at {s['main'][:8]}")
    if (s.get("harness") or {}).get("trust"):  # recorded by the pre-flight (runs started before it have none)
        h = s["harness"]
        out.append(f"trust: {h['trust']} ({h.get('kind', '?')} harness, budget {h.get('budget', 0):g} s from "
                   f"{h.get('budget_source', '?')})")
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
    out += _noise_lines(s.get("noise") or {})
    error = (s.get("proposer") or {}).get("last_error")
    if error:  # an endpoint down, an agent that failed: its first line, then its output's tail
        at = (s.get("proposer") or {}).get("last_error_at")
        when = f" at {time.strftime('%H:%M:%S', time.localtime(at))}" if isinstance(at, (int, float)) else ""
        first, *rest = str(error).splitlines() or [""]
        out.append(f"proposer: last error{when}: {first}")
        out += [f"  | {ln}" for ln in rest]
    for m in s["merged"]:
        bpb = f"{m['val_bpb']:.6f}" if m["val_bpb"] is not None else "(being measured)"
        out.append(f"  {m['commit']} {bpb} {m['cand']} {m['description']}")
    c = s["cost"]
    line = (f"cost: {c['gpu_hours']:.2f} GPU-h, {c['worker_hours']:.2f} worker-h, "
            f"{c['prompt_tokens'] + c['completion_tokens']:,} LLM tokens, ${c['usd']:.2f}")
    for what, label in (("per_experiment", "experiment"), ("per_merged", "merged improvement")):
        if c[what]:
            line += f"; per {label}: {c[what]['gpu_hours']:.2f} GPU-h, ${c[what]['usd']:.2f}"
    out.append(line)
    return "".join(f"{ln}\n" for ln in out)


def _noise_lines(n: dict[str, Any]) -> list[str]:
    """What the noise floor rests on, in words."""
    if not n:
        return []
    if n["seeding"] == "itself":
        return [f"noise: the target seeds itself, so its repeats are one draw: no measured floor, the prior "
                f"{n['prior']:.4f} bpb is used and repeats do not count as independent"]
    if not n["by_accelerator"]:
        return [f"noise: the prior {n['prior']:.4f} bpb until the main line has repeats"]
    out = []
    for acc, a in sorted(n["by_accelerator"].items()):
        line = (f"noise {a['sigma']:.4f} bpb from {a['runs']} runs of {a['commits']} main-line commit"
                f"{'s' if a['commits'] != 1 else ''} on {acc} (measured {a['measured']:.4f}, prior {n['prior']:.4f})")
        if a["prior_disagrees"]:
            line += f": the prior disagrees with what was measured; set judge.default_noise near {a['measured']:.4f}"
        out.append(line)
    return out
