"""The early cut: a pure policy that says whether a run still going is clearly losing.

Every result carries its training-loss curve (``Result.loss_curve``: [progress, loss] pairs,
progress the fraction of the training budget spent; :mod:`worker.curve`). At a checkpoint
``progress`` p, the candidate's loss is compared with the main line's *reference*: the mean, over
the line's own runs, of their losses at the same p. A candidate far above it is unlikely to end
below the line, and the rest of its budget could go to another candidate.

A curve's loss at p is the mean of its points in ``[p - window, p]`` (single-batch losses are
noisy; the window averages a few steps), or, where no point falls there, the curve interpolated
linearly at p. A curve that has not reached p yet has no loss at p: the rule waits.

Two kinds of threshold (``Rule.kind``):

* ``relative``: cut when the candidate's loss > reference * (1 + threshold);
* ``spread``: cut when it is > reference + threshold * the sample std of the line's losses at p
  (needs at least two line curves; with fewer the rule never cuts).

Which rule, if any, is worth switching on is measured, not assumed: ``bench/early_cut.py`` and
docs/BENCHMARKS.md ("Early cut (loss curves)"). No rule met the bar there, so ``judge.early_cut`` is
off (:func:`configured` gives None) and the workers do not enforce a cut yet. Everything here is a function of the curves passed
in: no store, git or clock.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cluster.config import JudgeSettings

KINDS = ("relative", "spread")
ACTIONS = ("cut", "go", "wait")

Curve = Sequence[Sequence[float]]  # [[progress, loss], ...], progress ascending


@dataclass(frozen=True)
class Rule:
    progress: float = 0.3  # the checkpoint: fraction of the training budget spent
    threshold: float = 0.05  # relative: a fraction of the reference; spread: a number of stds
    kind: str = "relative"  # one of KINDS
    window: float = 0.1  # the losses averaged: those of progress in [progress - window, progress]

    def __post_init__(self) -> None:
        if not 0 < self.progress < 1:
            raise ValueError(f"progress must be in (0, 1), got {self.progress}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.threshold < 0 or self.window < 0:
            raise ValueError("threshold and window must be >= 0")

    def label(self) -> str:
        thr = f"+{self.threshold:.0%}" if self.kind == "relative" else f"+{self.threshold:g} sd"
        return f"p={self.progress:g} {thr}"


@dataclass(frozen=True)
class Verdict:
    action: str  # one of ACTIONS
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)

    @property
    def cut(self) -> bool:
        return self.action == "cut"


def configured(cfg: JudgeSettings) -> Rule | None:
    """The rule ``judge.early_cut*`` switch on, or None while it is off."""
    return Rule(cfg.early_cut_progress, cfg.early_cut_threshold, "relative") if cfg.early_cut else None


def loss_at(curve: Curve, p: float, window: float = 0.1) -> float | None:
    """The curve's loss at progress ``p`` (see module doc), or None when it has not reached ``p``."""
    pts = [(float(x), float(y)) for x, y, *_ in curve if math.isfinite(float(y))]
    if not pts or pts[-1][0] < p:
        return None
    inside = [y for x, y in pts if p - window <= x <= p]
    if inside:
        return sum(inside) / len(inside)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= p <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (p - x0) / (x1 - x0)
    return pts[0][1]  # the curve starts after p (its first point is already past it)


def reference(curves: Sequence[Curve], p: float, window: float = 0.1) -> tuple[float, float, int] | None:
    """(mean, sample std, count) of the losses at ``p`` of the curves that reach it, or None if none does."""
    vals = [v for c in curves if (v := loss_at(c, p, window)) is not None]
    if not vals:
        return None
    return sum(vals) / len(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals)


def decide(curve: Curve, line_curves: Sequence[Curve], rule: Rule = Rule()) -> Verdict:
    """Cut, go on, or wait for the candidate's ``curve`` so far against the main line's curves."""
    nums: dict[str, Any] = {"progress": rule.progress, "threshold": rule.threshold, "kind": rule.kind}
    mine = loss_at(curve, rule.progress, rule.window)
    if mine is None:
        return Verdict("wait", f"not at progress {rule.progress:g} yet", nums)
    ref = reference(line_curves, rule.progress, rule.window)
    if ref is None:
        return Verdict("go", f"no main-line curve reaches progress {rule.progress:g}: nothing to compare with",
                       {**nums, "loss": mine})
    mean, sd, n = ref
    nums.update(loss=mine, reference=mean, spread=sd, n_line=n)
    if rule.kind == "relative":
        bar = mean * (1 + rule.threshold)
    elif n < 2:
        return Verdict("go", f"one main-line curve at progress {rule.progress:g}: no spread to compare with", nums)
    else:
        bar = mean + rule.threshold * sd
    nums["bar"] = bar
    text = f"loss {mine:.4f} at progress {rule.progress:g} vs the main line's {mean:.4f} (bar {bar:.4f}, {n} runs)"
    return Verdict("cut", f"{text}: clearly losing -> cut", nums) if mine > bar else Verdict("go", text, nums)
