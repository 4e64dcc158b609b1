"""The dashboard's charts as inline SVG, drawn on the server: no script library, no CDN, nothing to
download, so the page works offline and a screenshot shows what the browser shows.

:func:`progress_chart` is `plot`'s picture for the browser (every experiment in the order it finished,
kept ones labelled, the running best, the baseline; each point links to its candidate and names its
change on hover). :func:`curves_chart` draws training-loss curves against the budget's progress.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any, Sequence

W, H = 920, 320
LEFT, RIGHT, TOP, BOTTOM = 72, 24, 16, 36
COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4d7c0f", "#be185d")


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round values between lo and hi."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def _frame(xs: tuple[float, float], ys: tuple[float, float], xfmt: str, yfmt: str, xlabel: str, ylabel: str):
    """The axes, and the functions from data to pixels."""
    (x0, x1), (y0, y1) = xs, ys
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-3)

    def px(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT)

    def py(y: float) -> float:
        return TOP + (y1 - y) / (y1 - y0) * (H - TOP - BOTTOM)

    out = [f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}" class="plot"/>']
    for t in _ticks(y0, y1):
        out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{py(t):.1f}" y2="{py(t):.1f}" class="grid"/>'
                   f'<text x="{LEFT - 6}" y="{py(t) + 4:.1f}" class="tick" text-anchor="end">{t:{yfmt}}</text>')
    for t in _ticks(x0, x1, 8):
        out.append(f'<text x="{px(t):.1f}" y="{H - BOTTOM + 16}" class="tick" text-anchor="middle">{t:{xfmt}}</text>')
    out.append(f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 4}" class="axis" text-anchor="middle">{escape(xlabel)}</text>'
               f'<text x="14" y="{(TOP + H - BOTTOM) / 2}" class="axis" text-anchor="middle" '
               f'transform="rotate(-90 14 {(TOP + H - BOTTOM) / 2})">{escape(ylabel)}</text>')
    return px, py, out


def progress_chart(rows: Sequence[dict[str, Any]], baseline: float | None, link: str = "/c/") -> str:
    """rows: `cluster.report.results.finished` without the baseline (cand, status, val_bpb, description).
    Values far above the baseline would flatten the rest: the axis stops at the baseline plus twice the
    best gain (or the highest value, if lower) and higher points sit on the top edge as triangles."""
    vals = [r["val_bpb"] for r in rows if r["val_bpb"] is not None]
    if not rows:
        return '<p class="empty">No experiment has finished yet.</p>'
    ref = [v for v in vals + ([baseline] if baseline is not None else [])]
    lo = min(ref) if ref else 0.0
    hi = max(ref) if ref else 1.0
    if baseline is not None and baseline > lo:
        hi = min(hi, baseline + 2 * (baseline - lo))
    pad = (hi - lo) * 0.08 or 1e-3
    px, py, out = _frame((0.5, len(rows) + 0.5), (lo - pad, hi + pad), ".0f", ".4f", "experiment (in the order it finished)",
                         "val_bpb")
    if baseline is not None:
        out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{py(baseline):.1f}" y2="{py(baseline):.1f}" class="baseline"/>'
                   f'<text x="{W - RIGHT - 4}" y="{py(baseline) - 4:.1f}" class="label" text-anchor="end">baseline '
                   f'{baseline:.4f}</text>')
    best, steps = baseline, []
    for i, r in enumerate(rows, 1):
        if r["status"] == "keep" and r["val_bpb"] is not None and (best is None or r["val_bpb"] < best):
            if best is not None:
                steps.append((i, best))
            best = r["val_bpb"]
            steps.append((i, best))
    if steps:
        steps.append((len(rows) + 0.5, steps[-1][1]))
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in steps)
        out.append(f'<polyline points="{pts}" class="best"/>')
    for i, r in enumerate(rows, 1):
        v, st = r["val_bpb"], r["status"]
        tip = escape(f"{r['cand']} {st} {v:.6f}: {r['description']}" if v is not None else
                     f"{r['cand']} {st}: {r['description']}")
        x = px(i)
        if v is None:  # a crash: no value, marked along the bottom
            y = H - BOTTOM - 6
            mark = f'<path d="M{x - 4:.1f},{y - 4} l8,8 m0,-8 l-8,8" class="pt crash"/>'
        elif v > hi + pad:
            mark = f'<path d="M{x:.1f},{TOP + 1} l-5,8 h10 z" class="pt {st} off"/>'
        else:
            mark = f'<circle cx="{x:.1f}" cy="{py(v):.1f}" r="{5 if st == "keep" else 3.5}" class="pt {st}"/>'
        out.append(f'<a href="{link}{escape(r["cand"])}" class="point" data-cand="{escape(r["cand"])}" '
                   f'data-status="{st}"><title>{tip}</title>{mark}</a>')
        if st == "keep" and v is not None and v <= hi + pad:
            label = r["description"] if len(r["description"]) <= 38 else r["description"][:37] + "…"
            out.append(f'<text x="{x + 7:.1f}" y="{py(v) - 7:.1f}" class="label keep">{escape(label)}</text>')
    return (f'<svg id="progress-chart" viewBox="0 0 {W} {H}" role="img" data-points="{len(rows)}" '
            f'aria-label="val_bpb of every experiment">' + "".join(out) + "</svg>")


def curves_chart(series: Sequence[tuple[str, Sequence[Sequence[float]]]]) -> str:
    """Training-loss curves: (label, [[progress 0..1, loss], ...]) each, one colour each."""
    series = [(label, pts) for label, pts in series if pts]
    if not series:
        return '<p class="empty">No loss curve recorded.</p>'
    losses = sorted(p[1] for _, pts in series for p in pts)
    lo, hi = losses[0], losses[min(len(losses) - 1, int(len(losses) * 0.98))]  # the first steps' loss is huge
    pad = (hi - lo) * 0.05 or 1e-3
    px, py, out = _frame((0.0, 1.0), (lo - pad, hi + pad), ".0%", ".3f", "progress through the training budget",
                         "training loss")
    for k, (label, pts) in enumerate(series):
        color = COLORS[k % len(COLORS)]
        line = " ".join(f"{px(p[0]):.1f},{py(min(p[1], hi + pad)):.1f}" for p in pts)
        out.append(f'<polyline points="{line}" class="curve" stroke="{color}"><title>{escape(label)}</title></polyline>'
                   f'<text x="{LEFT + 8}" y="{TOP + 14 + 14 * k}" class="label" fill="{color}">{escape(label)}</text>')
    return (f'<svg id="curve-chart" viewBox="0 0 {W} {H}" role="img" data-series="{len(series)}" '
            f'aria-label="training loss">' + "".join(out) + "</svg>")
