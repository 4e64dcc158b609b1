"""The farm's metrics, exported through Ray's own metrics pipeline (`ray.util.metrics`).

Why Ray's pipeline: every Ray node already runs a metrics agent that serves Prometheus text on its
`--metrics-export-port`, and Ray writes a Prometheus service-discovery file listing every node, so
a Prometheus on the head finds the farm's series with no extra configuration, next to Ray's own.
The controller (in the `<tag>:controller` actor's process) is the only writer; it records through one `FarmMetrics`.

Every metric is named `autoresearch_farm_*` and carries the run's `tag` as a label. Ray adds its
`ray_` namespace on export and Prometheus adds `_total` to counters, so the scraped series are::

    ray_autoresearch_farm_experiments_total{tag, status}     measurements by result status
    ray_autoresearch_farm_decisions_total{tag, action}       judge decisions (merge, discard, ...)
    ray_autoresearch_farm_best_val_bpb{tag}                  the main line's mean val_bpb
    ray_autoresearch_farm_baseline_val_bpb{tag}              the baseline's mean val_bpb
    ray_autoresearch_farm_queue_depth{tag}                   jobs waiting for a worker
    ray_autoresearch_farm_running_candidates{tag}            jobs running on workers
    ray_autoresearch_farm_gpu_busy_fraction{tag}             share of worker time spent on jobs (0..1)
    ray_autoresearch_farm_workers{tag}                       workers in the run
    ray_autoresearch_farm_dispatch_gap_seconds_bucket{tag, le}   idle time of a worker before its next job
    ray_autoresearch_farm_llm_tokens_total{tag, kind}        LLM tokens, kind = prompt | completion
    ray_autoresearch_farm_llm_cost_usd_total{tag}            LLM spend in US dollars

Metrics must never stop the research: nothing here imports Ray at import time, every method is a
no-op while Ray is not initialised (the metric objects are created on the first call that finds
it initialised), and a failure to record is logged once and otherwise ignored.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

log = logging.getLogger(__name__)

PREFIX = "autoresearch_farm_"
# Seconds: a healthy farm hands a job to an idle worker within one controller step (~0.2 s);
# minutes mean the proposer or the queue starved the workers.
DISPATCH_GAP_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0]
TOKEN_KINDS = ("prompt", "completion")

# name -> (kind, description, extra tag keys); every metric also has the "tag" key
SPECS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "experiments": ("counter", "Measurements finished, by result status (ok, crash, timeout, no-metric).",
                    ("status",)),
    "decisions": ("counter", "Judge decisions by action (merge, discard, confirm, rebase, stale, ...).", ("action",)),
    "best_val_bpb": ("gauge", "Mean val_bpb of the current main line (lower is better).", ()),
    "baseline_val_bpb": ("gauge", "Mean val_bpb of the run's baseline.", ()),
    "queue_depth": ("gauge", "Jobs queued and waiting for a worker.", ()),
    "running_candidates": ("gauge", "Jobs running on workers.", ()),
    "gpu_busy_fraction": ("gauge", "Share of worker time spent running jobs since the run started (0..1).", ()),
    "workers": ("gauge", "Workers (one per GPU) in the run.", ()),
    "dispatch_gap_seconds": ("histogram", "Seconds a worker sat idle before it was handed its next job.", ()),
    "llm_tokens": ("counter", "LLM tokens used by the proposer, by kind (prompt, completion).", ("kind",)),
    "llm_cost_usd": ("counter", "LLM spend of the proposer in US dollars.", ()),
}


def _ray_ready() -> bool:
    """True when Ray is imported and initialised in this process (never imports Ray itself)."""
    ray = sys.modules.get("ray")
    try:
        return bool(ray is not None and ray.is_initialized())
    except Exception:  # a half-imported or shut-down Ray
        return False


class FarmMetrics:
    """The controller's handle on the farm's metrics for one run (`tag`).

    Usage from the controller loop::

        metrics = FarmMetrics(tag)
        metrics.result("ok")                                   # a measurement was recorded
        metrics.decision("merge")                              # the judge decided
        metrics.dispatch_gap(0.2)                              # a worker waited 0.2 s for work
        metrics.snapshot(best, baseline, queue_depth, running, busy_fraction, workers=8)
        metrics.llm_usage(prompt_tokens, completion_tokens, cost_usd)
    """

    def __init__(self, tag: str):
        self.tag = str(tag)
        self._metrics: dict[str, Any] | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        """Whether values are being exported (Ray is up and the metrics exist)."""
        return self._ensure()

    def _ensure(self) -> bool:
        if self._metrics is not None:
            return True
        if not _ray_ready():
            return False
        try:
            from ray.util.metrics import Counter, Gauge, Histogram

            made: dict[str, Any] = {}
            for name, (kind, description, keys) in SPECS.items():
                tag_keys = ("tag",) + keys
                if kind == "counter":
                    metric = Counter(PREFIX + name, description=description, tag_keys=tag_keys)
                elif kind == "gauge":
                    metric = Gauge(PREFIX + name, description=description, tag_keys=tag_keys)
                else:
                    metric = Histogram(PREFIX + name, description=description, boundaries=DISPATCH_GAP_BOUNDARIES,
                                       tag_keys=tag_keys)
                metric.set_default_tags({"tag": self.tag})
                made[name] = metric
        except Exception as e:
            self._failed("create", e)
            return False
        self._metrics = made
        return True

    def _failed(self, what: str, error: Exception) -> None:
        if not self._warned:
            log.warning("farm metrics: could not %s (%s: %s); the run goes on without them",
                        what, type(error).__name__, error)
            self._warned = True

    def _record(self, name: str, method: str, value: float, tags: dict[str, str] | None = None) -> None:
        if not self._ensure():
            return
        try:
            getattr(self._metrics[name], method)(value, tags=tags)  # type: ignore[index]
        except Exception as e:
            self._failed(f"record {PREFIX}{name}", e)

    # -- what the controller calls ------------------------------------------------------------
    def result(self, status: str, n: int = 1) -> None:
        """A measurement finished with `status` (RunStatus value: ok, crash, timeout, no-metric)."""
        if n > 0:
            self._record("experiments", "inc", float(n), {"status": str(status)})

    def decision(self, action: str) -> None:
        """The judge applied `action` to a candidate (merge, discard, confirm, rebase, stale, fail)."""
        self._record("decisions", "inc", 1.0, {"action": str(action)})

    def snapshot(self, best: float | None, baseline: float | None, queue_depth: int, running: int,
                 busy_fraction: float, workers: int | None = None) -> None:
        """The loop's state now; None for a val_bpb that is not measured yet (the gauge keeps its last value)."""
        for name, value in (("best_val_bpb", best), ("baseline_val_bpb", baseline), ("queue_depth", queue_depth),
                            ("running_candidates", running), ("workers", workers),
                            ("gpu_busy_fraction", None if busy_fraction is None else min(max(busy_fraction, 0.0), 1.0))):
            if value is not None:
                self._record(name, "set", float(value))

    def dispatch_gap(self, seconds: float) -> None:
        """A worker was idle `seconds` before the controller handed it its next job."""
        self._record("dispatch_gap_seconds", "observe", max(0.0, float(seconds)))

    def llm_usage(self, prompt_tokens: int, completion_tokens: int, cost_usd: float = 0.0) -> None:
        """Tokens and spend of one LLM call of the proposer (zeros are skipped: counters only grow)."""
        for kind, n in zip(TOKEN_KINDS, (prompt_tokens, completion_tokens)):
            if n and n > 0:
                self._record("llm_tokens", "inc", float(n), {"kind": kind})
        if cost_usd and cost_usd > 0:
            self._record("llm_cost_usd", "inc", float(cost_usd))
