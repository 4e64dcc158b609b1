"""The loop's progress: the numbers behind the progress line and the metric gauges."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from cluster.loop.fleet import Fleet
from cluster.loop.ledger import Measurements
from cluster.loop.metrics import FarmMetrics
from cluster.records import FINAL_STATES, State, values
from cluster.store import Store

JUDGED = values(FINAL_STATES - {State.INVALID})  # experiments that ended (a refused patch never ran)


def experiments(counts: dict[str, int], baseline_state: str) -> tuple[int, int]:
    """(merged, done): the experiments merged and ended, from the candidates' state counts. The
    baseline is a candidate but no experiment: it is taken off the count of the state it ended in, and
    only that one (a failed baseline is no merge: taking it off the merges would count below zero)."""
    merged = counts.get(State.MERGED.value, 0) - (baseline_state == State.MERGED.value)
    done = sum(counts.get(s, 0) for s in JUDGED) - (baseline_state in JUDGED)
    return max(merged, 0), max(done, 0)


@dataclass
class Stats:
    started: float = field(default_factory=time.time)
    busy_seconds: float = 0.0
    dispatch_gaps: list[float] = field(default_factory=list)


class Progress:
    def __init__(self, store: Store, measured: Measurements, fleet: Fleet, metrics: FarmMetrics,
                 noise: Callable[[], str] = lambda: ""):
        self.store, self.measured, self.fleet, self.metrics = store, measured, fleet, metrics
        self.noise = noise  # the noise floor and the margin a win must clear now, in words
        self.stats = Stats()
        self.idle_since: dict[str, float] = {name: time.time() for name in fleet.names}
        self._baseline_state = ""  # the baseline candidate's state once final (it never changes after)

    def idle(self, worker: str, busy_since: float) -> None:
        """``worker`` came back from a run it started at ``busy_since``."""
        now = time.time()
        self.idle_since[worker] = now
        self.stats.busy_seconds += now - busy_since

    def back(self, worker: str) -> None:
        """``worker`` is in service again after a restart."""
        self.idle_since[worker] = time.time()

    def dispatched(self, worker: str) -> None:
        now = time.time()
        gap = now - self.idle_since.get(worker, now)
        self.stats.dispatch_gaps.append(gap)
        self.metrics.dispatch_gap(gap)

    def gauges(self) -> dict[str, Any]:
        """The loop's state in numbers, from memory and two cheap reads; refreshes the metric gauges."""
        meta = self.store.run_meta() or {}
        line = self.measured.line_values(meta.get("main", ""))
        base = self.measured.line_values(meta.get("baseline", ""))
        now = time.time()
        elapsed = max(now - self.stats.started, 1e-9)
        busy = self.stats.busy_seconds + sum(now - f.started for f in self.fleet.inflight.values())
        g = {"best": sum(line) / len(line) if line else None, "baseline": sum(base) / len(base) if base else None,
             "queued": self.store.queue_depth(), "running": len(self.fleet.inflight), "elapsed": elapsed,
             "busy": busy / (elapsed * max(len(self.fleet), 1))}
        self.metrics.snapshot(g["best"], g["baseline"], g["queued"], g["running"], g["busy"],
                              workers=len(self.fleet))
        return g

    def _baseline(self) -> str:
        """The baseline candidate's state once it is final, else "" (read until then, then kept)."""
        if not self._baseline_state:
            cid = (self.store.run_meta() or {}).get("baseline_cand")
            state = self.store.get_candidate(cid).state if cid else ""
            self._baseline_state = state if state in values(FINAL_STATES) else ""
        return self._baseline_state

    def line(self) -> str:
        g = self.gauges()
        # from the state counts (one round trip), not by loading every judged candidate: the baseline
        # candidate is the one merged candidate of origin "baseline", once its runs are judged
        counts = self.store.count_by_state()
        merged, done = experiments(counts, self._baseline())
        best, base = g["best"], g["baseline"]
        best_s = f"best {best:.6f}" if best else "best -"
        if best and base:
            best_s += f" ({best - base:+.6f} vs baseline {base:.6f})"
        noise = self.noise()
        return (f"[{time.strftime('%H:%M:%S')}] {best_s} | done {done} (merged {merged}) "
                f"| running {g['running']} | queued {g['queued']} "
                f"| {done / g['elapsed'] * 3600:.1f} exp/h | workers busy {100 * g['busy']:.0f}%"
                + (f" | {noise}" if noise else ""))
