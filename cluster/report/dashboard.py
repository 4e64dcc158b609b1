"""What `autoresearch-farm dashboard` shows, as plain dictionaries (JSON-able: the same data travels
from a cluster's head through `dashboard --snapshot`).

It is read from the run's records only, as `status` and `results` read them: :func:`run_view` builds
on :func:`cluster.report.status.status_dict` and :func:`cluster.report.results.finished`, so the
dashboard can never tell a different story from the command line. Two views:

- :func:`run_view`: the run's and the workers' pages: the run (status, every finished experiment in order, the main line as a lineage,
  rates), the workers (what each runs, since when, its last results) and the queue;
- :func:`candidate_view`: one candidate (its record, its diff against its base, every measurement with
  its loss curve and log tail, the judge's decisions from the run's event stream).
"""

from __future__ import annotations

import time
from typing import Any

from cluster.errors import FarmError, RepoError
from cluster.records import Purpose, State
from cluster.report.results import finished
from cluster.report.status import status_dict
from cluster.store import NotFound, Store
from cluster.store.keys import EVENTS_MAXLEN

QUEUE_SHOWN = 50  # the queue's head on the workers page (its length is shown in full)
LAST_RESULTS = 3  # each worker's last results


def budget(meta: dict[str, Any]) -> float | None:
    """The training seconds per experiment the run was started with (the pre-flight's, else the config's)."""
    b = (meta.get("harness") or {}).get("budget") or ((meta.get("config") or {}).get("train") or {}).get("budget")
    return float(b) if b else None


def lineage(rows: list[dict[str, Any]], status: dict[str, Any], store: Store) -> list[dict[str, Any]]:
    """The main line, merge by merge: each merged candidate in the order it merged, its main-line value
    (its own line runs, as `status` reports it; until it has them, its runs as a candidate, with
    ``line`` False), the gain over the line before it and over the baseline,
    how many runs it took, and the judge's reason."""
    values = {m["cand"]: m["val_bpb"] for m in status["merged"]}
    by_id = {r["cand"]: r for r in rows}
    merged = [c for c in store.candidates({State.MERGED.value}) if c.id in values and c.origin != "baseline"]
    merged.sort(key=lambda c: (c.decision or {}).get("at", 0.0))
    out, before, base = [], status["baseline_bpb"], status["baseline_bpb"]
    for c in merged:
        value, line = values[c.id], values[c.id] is not None
        if not line:  # its own line runs are still to come (or the run ended first): its runs as a candidate
            value = (by_id.get(c.id) or {}).get("val_bpb")
        gain = before - value if before is not None and value is not None else None
        out.append({"cand": c.id, "commit": c.commit, "description": c.description, "origin": c.origin,
                    "val_bpb": value, "line": line, "gain": gain,
                    "cumulative": base - value if base is not None and value is not None else None,
                    "runs": (by_id.get(c.id) or {}).get("runs", 0), "reason": (c.decision or {}).get("reason", ""),
                    "members": c.meta.get("combination") or []})
        before = value if value is not None else before
    return out


def run_view(store: Store, now: float | None = None) -> dict[str, Any]:
    """The run's page and the workers' page, in one read of the store."""
    now = time.time() if now is None else now
    meta = store.run_meta() or {}
    status = status_dict(store)
    rows = finished(store)
    results = store.results()
    cands = {c.id: c for c in store.candidates()}
    running = {j.worker: j for j in store.running_jobs()}
    per_hour = None
    created = meta.get("created")
    if created:
        end = now if meta.get("status") == "running" or not results else max(r.finished_at for r in results)
        hours = max(end - float(created), 1.0) / 3600
        per_hour = status["cost"]["experiments"] / hours
    workers = []
    for name, info in sorted(status["workers"].items()):
        job = running.get(name)
        curve = info.get("curve") or {}
        here = curve if job and curve.get("job") == job.id else {}
        points = here.get("points") or []
        cand = cands.get(job.cand) if job else None
        workers.append({
            "name": name, "node": info.get("node"), "accelerator": info.get("accelerator"),
            "gpu_ids": info.get("gpu_ids") or [], "seen_s": now - float(info.get("at", now)),
            "job": job.id if job else None, "cand": job.cand if job else None,
            "purpose": job.purpose if job else None, "description": cand.description if cand else "",
            "elapsed_s": now - here["since"] if here.get("since") else None,
            "progress": points[-1][0] if points else None, "loss": points[-1][1] if points else None,
            "last": [{"cand": r.cand, "val_bpb": r.val_bpb, "status": r.status, "purpose": r.purpose}
                     for r in [r for r in results if r.worker == name][-LAST_RESULTS:]][::-1],
        })
    queued = store.queued_jobs()
    queue = [{"job": j.id, "cand": j.cand, "purpose": j.purpose,
              "description": cands[j.cand].description if j.cand in cands else ""} for j in queued[:QUEUE_SHOWN]]
    busy = sum(1 for w in workers if w["job"])
    return {
        "tag": store.tag, "at": now, "status": status, "budget": budget(meta),
        "experiments": [r for r in rows if r["origin"] != "baseline"], "lineage": lineage(rows, status, store),
        "rates": {"experiments_per_hour": per_hour, "workers_busy": busy, "workers": len(workers)},
        "workers": workers, "queue": queue, "queue_length": len(queued),
    }


DECISION_EVENTS = ("decision", "stale", "combination", "lost", "preempted", "prepare_failed")


def candidate_view(store: Store, repo: Any, cand_id: str) -> dict[str, Any]:
    """One candidate: its record, its diff against its base (`repo` a :class:`cluster.repo.FarmRepo`, or
    None where the repository is not at hand), every measurement (with its loss curve and log tail), the
    judge's decisions about it, and the curve so far of a run of it in progress."""
    try:
        c = store.get_candidate(cand_id)
    except NotFound:
        raise FarmError(f"no candidate {cand_id!r} in run {store.tag}") from None
    diff, why = None, ""
    if repo is not None and c.base and c.commit and c.base != c.commit:
        try:
            diff = repo.diff(c.base, c.commit)
        except RepoError as e:
            why = f"the diff could not be read: {e}"
    events = [e for e in store.events(EVENTS_MAXLEN) if e["kind"] in DECISION_EVENTS
              and (e["data"].get("cand") == cand_id or cand_id in (e["data"].get("members") or []))]
    live, running = [], {j.worker: j for j in store.running_jobs() if j.cand == cand_id}
    for name, info in store.live_workers().items():
        curve, job = info.get("curve") or {}, running.get(name)
        if job and curve.get("job") == job.id:
            live.append({"worker": name, "job": job.id, "since": curve.get("since"), "points": curve.get("points")})
    results = [r.to_dict() for r in store.results(cand_id)]
    return {"tag": store.tag, "candidate": c.to_dict(), "diff": diff, "diff_missing": why, "results": results,
            "events": events, "live": live, "line": any(r["purpose"] == Purpose.BASELINE.value for r in results)}
