"""Parse the summary block that autoresearch's ``train.py`` prints at its end.

The block looks like::

    ---
    val_bpb:          0.997900
    training_seconds: 300.1
    ...
    depth:            8

Design choices (deliberately strict, deliberately tiny):

* The *last* ``---`` line that is followed by at least one ``key: value`` line wins. A script may
  print several blocks (an eval before and after training, or a stray ``---`` in its chatter);
  only what it said last counts.
* The block is the run of consecutive ``key: value`` lines right after ``---``; the first line
  that is not one ends it. Interleaved junk is not skipped: a warning printed into the middle
  of the block truncates it, and a block without ``val_bpb`` is judged by :func:`is_valid`.
  Guessing past junk would make it easier to smuggle a metric in, not harder.
* Numbers become ``int`` or ``float`` only when they look like plain decimal numbers (or
  ``nan``/``inf``, so that :func:`is_valid` can reject them by name); ``float()``'s other
  leniencies (``1_000``, surrounding whitespace tricks) are not accepted. Everything else stays
  a ``str``.
* This module only reads what the script printed. Whether the numbers are *true* (a candidate
  can print anything) is the cheat detector's business, not this parser's.
"""

from __future__ import annotations

import math
import re

__all__ = ["SUMMARY_KEYS", "MAX_VAL_BPB", "parse_summary", "is_valid"]

#: The keys autoresearch's ``train.py`` prints, in its order. Others are kept too.
SUMMARY_KEYS: tuple[str, ...] = (
    "val_bpb",
    "training_seconds",
    "total_seconds",
    "peak_vram_mb",
    "mfu_percent",
    "total_tokens_M",
    "num_steps",
    "num_params_M",
    "depth",
)

#: A val_bpb above this is not a result but a bug (random bytes are 8 bits per byte).
MAX_VAL_BPB = 20.0

_SEPARATOR = "---"
_ENTRY = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*):[ \t]+(\S(?:.*\S)?)[ \t]*$")
_INT = re.compile(r"^[-+]?\d+$")
_FLOAT = re.compile(r"^[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?$|^[-+]?(?:nan|inf|infinity)$", re.I)


def _value(raw: str) -> float | int | str:
    if _INT.match(raw):
        return int(raw)
    if _FLOAT.match(raw):
        return float(raw)
    return raw


def _block_at(lines: list[str], start: int) -> dict[str, float | int | str]:
    block: dict[str, float | int | str] = {}
    for line in lines[start + 1 :]:
        m = _ENTRY.match(line.strip())
        if not m:
            break
        block[m.group(1)] = _value(m.group(2))
    return block


def parse_summary(text: str) -> dict[str, float | int | str] | None:
    """The last summary block in ``text`` as a dict, or None when there is none.

    Carriage returns count as line ends (progress bars rewrite a line with ``\\r``).
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].strip() == _SEPARATOR:
            block = _block_at(lines, i)
            if block:
                return block
    return None


def is_valid(summary: dict[str, float | int | str] | None) -> str | None:
    """Why ``summary`` is not a usable result (a short reason), or None when it is."""
    if summary is None:
        return "no summary block in the output"
    if "val_bpb" not in summary:
        return "summary block has no val_bpb"
    v = summary["val_bpb"]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return f"val_bpb is not a number: {v!r}"
    if not math.isfinite(v):
        return f"val_bpb is not finite: {v}"
    if v <= 0:
        return f"val_bpb must be positive, got {v}"
    if v > MAX_VAL_BPB:
        return f"val_bpb is absurd (> {MAX_VAL_BPB:g}): {v}"
    return None
