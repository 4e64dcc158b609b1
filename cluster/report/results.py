"""A run's results as tables: autoresearch's results.tsv, and the full records through pandas.

results.tsv keeps the format every autoresearch tool reads: tab-separated
`commit val_bpb memory_gb status description`, status keep / discard / crash, crashes logged as
0.000000 and 0.0. One row per candidate in the order they finished, the baseline first;
repeated measurements of one commit (noise floor, confirmations) fold into its row as their mean.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from cluster.records import Candidate, Result, RunStatus, State
from cluster.store import Store

TSV_COLUMNS = ["commit", "val_bpb", "memory_gb", "status", "description"]


def _row_status(cand: Candidate, ok: list[Result]) -> str:
    if cand.state == State.MERGED.value:
        return "keep"
    if not ok:
        return "crash"
    return "discard"


def finished(store: Store) -> list[dict[str, Any]]:
    """Every candidate with a final state and a result, in the order they finished, the baseline first:
    cand, origin, commit (full), base, val_bpb (the mean of its ok runs; None for a crash), memory_gb, runs,
    status (keep / discard / crash), state, description, finished_at. results.tsv and the dashboard's
    progress chart are this list."""
    results = store.results()
    finished_at: dict[str, float] = {}
    for r in results:
        finished_at.setdefault(r.cand, r.finished_at)
    rows = []
    cands = [c for c in store.candidates() if c.id in finished_at and c.state != State.INVALID.value]
    cands.sort(key=lambda c: (c.origin != "baseline", finished_at[c.id]))
    for c in cands:
        mine = [r for r in results if r.cand == c.id and r.commit == c.commit]
        if not mine:  # rebased and not yet measured again: report what was measured
            mine = [r for r in results if r.cand == c.id]
        ok = [r for r in mine if r.status == RunStatus.OK.value and r.val_bpb is not None]
        if c.state not in (State.MERGED.value, State.DISCARDED.value, State.STALE.value, State.FAILED.value):
            continue  # still being judged or measured: not a row yet
        rows.append({"cand": c.id, "origin": c.origin, "commit": c.commit, "base": c.base,
                     "val_bpb": sum(r.val_bpb for r in ok) / len(ok) if ok else None,
                     "memory_gb": max((r.peak_vram_mb or 0.0) for r in ok) / 1024 if ok else 0.0, "runs": len(mine),
                     "status": _row_status(c, ok), "state": c.state, "description": c.description,
                     "finished_at": finished_at[c.id]})
    return rows


def tsv_rows(store: Store) -> list[dict[str, Any]]:
    """results.tsv's rows (strings): crashes as 0.000000 and 0.0, descriptions on one line."""
    return [{"commit": f["commit"][:7], "val_bpb": f"{f['val_bpb'] or 0.0:.6f}", "memory_gb": f"{f['memory_gb']:.1f}",
             "status": f["status"], "description": f["description"].replace("\t", " ").replace("\n", " ")}
            for f in finished(store)]


def to_tsv(store: Store) -> str:
    lines = ["\t".join(TSV_COLUMNS)]
    lines += ["\t".join(row[c] for c in TSV_COLUMNS) for row in tsv_rows(store)]
    return "\n".join(lines) + "\n"


def _gpus_per_worker(store: Store) -> float:
    return float(((store.run_meta() or {}).get("config") or {}).get("workers", {}).get("gpus_per_worker", 1.0))


def gpu_seconds(r: Result, gpus_per_worker: float) -> float:
    """GPU time a measurement held (0 for a run on a CPU worker)."""
    return 0.0 if r.accelerator == "cpu" else r.wall_seconds * gpus_per_worker


def tokens(c: Candidate) -> tuple[int, int]:
    t = c.meta.get("tokens") or {}
    return int(t.get("prompt", 0)), int(t.get("completion", 0))


def costs(store: Store) -> dict[str, Any]:
    """GPU-hours and LLM tokens of the whole run (baseline, confirmations, refused proposals
    included), in USD where the run's config has prices, per experiment and per merged improvement."""
    cfg = (store.run_meta() or {}).get("config") or {}
    gpus = _gpus_per_worker(store)
    results = store.results()
    cands = store.candidates()
    gpu_hours = sum(gpu_seconds(r, gpus) for r in results) / 3600
    worker_hours = sum(r.wall_seconds for r in results) / 3600
    prompt = sum(tokens(c)[0] for c in cands)
    completion = sum(tokens(c)[1] for c in cands)
    experiments = sum(1 for c in cands if c.origin != "baseline" and State(c.state).final
                      and c.state != State.INVALID.value)
    merged = sum(1 for c in cands if c.origin != "baseline" and c.state == State.MERGED.value)
    p = cfg.get("proposer", {})
    usd = (gpu_hours * float(cfg.get("workers", {}).get("price_per_gpu_hour", 0.0))
           + prompt / 1e6 * float(p.get("price_per_mtok_in", 0.0))
           + completion / 1e6 * float(p.get("price_per_mtok_out", 0.0)))
    out = {"gpu_hours": gpu_hours, "worker_hours": worker_hours, "prompt_tokens": prompt,
           "completion_tokens": completion, "usd": usd, "experiments": experiments, "merged": merged}
    for what, n in (("per_experiment", experiments), ("per_merged", merged)):
        out[what] = {"gpu_hours": gpu_hours / n, "tokens": (prompt + completion) / n, "usd": usd / n} if n else None
    return out


def records(store: Store) -> pd.DataFrame:
    """Every single measurement, joined with its candidate and the judge's decision. The
    candidate's LLM tokens repeat on each of its rows; its GPU time is per row."""
    cands = {c.id: c for c in store.candidates()}
    gpus = _gpus_per_worker(store)
    rows = []
    for r in store.results():
        c = cands.get(r.cand)
        d = (c.decision or {}) if c else {}
        rows.append({
            "cand": r.cand, "job": r.job, "attempt": r.attempt, "purpose": r.purpose, "commit": r.commit,
            "base": c.base if c else "", "origin": c.origin if c else "", "state": c.state if c else "",
            "description": c.description if c else "", "status": r.status, "val_bpb": r.val_bpb,
            "peak_vram_mb": r.peak_vram_mb, "training_seconds": r.training_seconds,
            "wall_seconds": r.wall_seconds, "worker": r.worker, "node": r.node, "accelerator": r.accelerator,
            "started_at": r.started_at, "finished_at": r.finished_at, "decision": d.get("action", ""),
            "reason": d.get("reason", "") or r.reason, "lines_added": c.lines_added if c else 0,
            "lines_removed": c.lines_removed if c else 0, "containment": r.containment, "log_path": r.log_path,
            "seed": r.seed,
            "gpu_seconds": gpu_seconds(r, gpus), "llm_prompt_tokens": tokens(c)[0] if c else 0,
            "llm_completion_tokens": tokens(c)[1] if c else 0,
        })
    return pd.DataFrame(rows)


def render(store: Store, fmt: str) -> str:
    if fmt == "tsv":
        return to_tsv(store)
    df = records(store)
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        return json.dumps(json.loads(df.to_json(orient="records")), indent=2) + "\n"
    raise ValueError(f"unknown format {fmt!r}")
