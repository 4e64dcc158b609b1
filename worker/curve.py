"""A run's training-loss curve, read from what ``train.py`` printed: [progress, loss] pairs.

Progress is the fraction of the training budget spent (0..1), the clock ``train.py``'s own
learning-rate schedule follows, so curves of runs that took different numbers of steps (a slower
candidate, a loaded machine) line up at the same point of their schedule. Two step-line formats
are read, the rest of the output is skipped:

* the farm's harness (this repository's ``train.py``)::

      step 00012 | loss 5.123456 | smooth 5.2 | lr x1.000 | 95 ms | 43,000 tok/s | epoch 0 | 1.2/60s

  progress = training seconds / budget, the two figures at the line's end; the caller's
  ``budget`` (the worker's, the run's AUTORESEARCH_TIME_BUDGET) replaces the printed one, which is
  rounded to whole seconds, where the two agree to that rounding;
* an upstream-style harness (karpathy/autoresearch): ``step 00012 (12.3%) | loss: 5.123456 | ...``
  (its loss is the debiased smoothed one), progress = the printed percentage.

Choices:

* **Tolerant.** A line that matches neither format is skipped, as is a loss that is not a finite
  number; carriage returns count as line ends (upstream rewrites its step line with ``\\r``).
* **The last run wins.** A step number that does not grow starts the curve again, so a log that
  holds two runs (or the trusted evaluator's phase after the training) gives the last training.
* **Thin, by averaging.** At most ``max_points`` points: consecutive groups of equal size are
  averaged (progress and loss), which also smooths the noise of single-batch losses.
* **Informational, not trusted.** A candidate can print any loss; an early-cut rule
  (:mod:`cluster.loop.cut`) only ever stops a run whose own curve looks worse, so faking the
  curve gains it nothing it would not get by printing nothing.

:class:`CurveFollower` reads the same lines incrementally (the runner's ``on_progress`` hook), so
the worker can say how far its run has got while it runs.
"""

from __future__ import annotations

import math
import re

__all__ = ["MAX_POINTS", "CurveFollower", "parse_curve", "parse_line", "parse_points", "thin"]

MAX_POINTS = 200  # a record stays small (a few KB of JSON) and still resolves 0.5 % of the budget

_NUM = r"[0-9]+(?:\.[0-9]*)?"
_FARM = re.compile(rf"^step\s+(\d+)\s+\|\s+loss\s+(\S+)\s+\|.*\|\s*({_NUM})/({_NUM})s\s*$")
_UPSTREAM = re.compile(rf"^step\s+(\d+)\s+\(({_NUM})%\)\s+\|\s+loss:\s+(\S+)")


def _finite(raw: str) -> float | None:
    try:
        v = float(raw)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def parse_line(line: str, budget: float | None = None) -> tuple[int, float, float] | None:
    """(step, progress, loss) of one step line, or None when it is not one."""
    line = line.strip()
    if m := _FARM.match(line):
        step, loss, spent, printed = int(m.group(1)), _finite(m.group(2)), float(m.group(3)), float(m.group(4))
        # the printed budget is rounded to whole seconds: the caller's, where it is the one printed
        total = budget if budget and budget > 0 and abs(budget - printed) <= 0.5 else printed
        if loss is None or total <= 0:
            return None
        return step, min(spent / total, 1.0), loss
    if m := _UPSTREAM.match(line):
        step, pct, loss = int(m.group(1)), float(m.group(2)), _finite(m.group(3))
        return None if loss is None else (step, min(pct / 100.0, 1.0), loss)
    return None


class CurveFollower:
    """Collects (progress, loss) points from step lines as they come; :meth:`curve` thins them."""

    def __init__(self, budget: float | None = None) -> None:
        self.budget = budget
        self.points: list[tuple[float, float]] = []
        self._last_step = -1

    def feed(self, text: str) -> None:
        for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
            p = parse_line(line, self.budget)
            if p is None:
                continue
            step, progress, loss = p
            if step <= self._last_step:  # another run begins: the last one counts
                self.points = []
            self._last_step = step
            self.points.append((progress, loss))

    def curve(self, max_points: int = MAX_POINTS) -> list[list[float]]:
        return thin(self.points, max_points)


def thin(points: list[tuple[float, float]], max_points: int = MAX_POINTS) -> list[list[float]]:
    """At most ``max_points`` [progress, loss] pairs: consecutive groups of equal size, averaged."""
    if not points or max_points <= 0:
        return []
    size = -(-len(points) // max_points)
    out = []
    for i in range(0, len(points), size):
        group = points[i : i + size]
        out.append([round(sum(p for p, _ in group) / len(group), 5), round(sum(v for _, v in group) / len(group), 6)])
    return out


def parse_points(text: str, budget: float | None = None) -> list[tuple[float, float]]:
    """Every (progress, loss) point of the last run in ``text``, unthinned."""
    f = CurveFollower(budget)
    f.feed(text)
    return f.points


def parse_curve(text: str, budget: float | None = None, max_points: int = MAX_POINTS) -> list[list[float]]:
    """The loss curve of the last run in ``text``: at most ``max_points`` [progress, loss] pairs."""
    return thin(parse_points(text, budget), max_points)
