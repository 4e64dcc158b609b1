"""A 3-way line merge that, unlike git's ``merge-file``, accepts edits on adjacent lines.

Two constants on neighbouring lines of ``train.py`` are independent edits; git needs a line of
context between two hunks and calls that a conflict. :func:`merge_lines` is the fallback the
rebase uses when ``merge-file`` reports one (and the simulated farm's only merge).
"""

from __future__ import annotations

import difflib


def _edits(a: list[bytes], b: list[bytes]) -> list[tuple[int, int, list[bytes]]]:
    """The changes turning a into b, as (start, end, replacement) ranges of a's lines."""
    sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return [(i1, i2, b[j1:j2]) for op, i1, i2, j1, j2 in sm.get_opcodes() if op != "equal"]


def _clash(x: tuple[int, int, list[bytes]], y: tuple[int, int, list[bytes]]) -> bool:
    (s1, e1, _), (s2, e2, _) = x, y
    if x == y:
        return False  # the same edit made on both sides
    if s1 == e1 and s2 == e2:
        return s1 == s2  # two insertions at one place: their order is unknown
    if s1 == e1:
        return s2 < s1 < e2
    if s2 == e2:
        return s1 < s2 < e1
    return s1 < e2 and s2 < e1  # overlapping replaced ranges; touching ones are independent


def merge_lines(ancestor: bytes, ours: bytes, theirs: bytes) -> bytes | None:
    """3-way line merge that, unlike git's, accepts edits on adjacent lines; None on a conflict
    (both sides changed the same lines differently, or inserted at the same place)."""
    base = ancestor.splitlines(keepends=True)
    mine, other = _edits(base, ours.splitlines(keepends=True)), _edits(base, theirs.splitlines(keepends=True))
    if any(_clash(x, y) for x in mine for y in other):
        return None
    edits = sorted(set((s, e, tuple(r)) for s, e, r in mine + other), key=lambda t: (t[0], t[1]))
    out, pos = [], 0
    for s, e, r in edits:
        out += base[pos:s] + list(r)
        pos = e
    return b"".join(out + base[pos:])
