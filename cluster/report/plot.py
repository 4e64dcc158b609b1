"""`autoresearch-farm plot`: the run's progress as one picture.

Every measured experiment in the order it finished (its mean val_bpb), the merged ones
highlighted and labelled, the running best as a step line, and the baseline as a reference.
Crashes have no number and are marked along the bottom.
"""

from __future__ import annotations

from pathlib import Path

def plot(rows: list[dict[str, str]], tag: str, out: Path) -> Path:
    """rows: results.tsv rows (commit, val_bpb, memory_gb, status, description), the baseline first."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError(f"run {tag} has no finished experiment to plot yet")
    xs = list(range(len(rows)))
    ok = [(x, float(r["val_bpb"])) for x, r in zip(xs, rows) if r["status"] != "crash"]
    kept = [(x, float(r["val_bpb"]), r["description"]) for x, r in zip(xs, rows) if r["status"] == "keep"]
    crashed = [x for x, r in zip(xs, rows) if r["status"] == "crash"]
    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=120)
    if ok:
        ax.scatter([x for x, _ in ok], [y for _, y in ok], s=18, color="#b0b0b0", label="discarded", zorder=2)
    if kept:
        ax.scatter([x for x, _, _ in kept], [y for _, y, _ in kept], s=40, color="#1a7f37", label="kept", zorder=3)
        steps_x, steps_y = [k[0] for k in kept] + [xs[-1]], [k[1] for k in kept] + [kept[-1][1]]
        ax.step(steps_x, steps_y, where="post", color="#1a7f37", linewidth=1.5, label="best so far", zorder=1)
        for x, y, desc in kept[1:]:
            ax.annotate(desc[:40], (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7, rotation=-20)
    baseline = float(rows[0]["val_bpb"])
    ax.axhline(baseline, color="#cf222e", linestyle="--", linewidth=1, label=f"baseline {baseline:.4f}")
    if crashed and ok:
        low = min(y for _, y in ok)
        ax.scatter(crashed, [low] * len(crashed), marker="x", color="#cf222e", s=20, label="crash", zorder=2)
    ax.set_xlabel("experiment (in the order they finished)")
    ax.set_ylabel("val_bpb (lower is better)")
    best = min((y for _, y, _ in kept), default=baseline)
    merged = sum(1 for x, _, _ in kept if x > 0)  # (rows[0] is the baseline, kept or not: a baseline that crashed is not)
    ax.set_title(f"run {tag}: {len(rows) - 1} experiments, {merged} kept, "
                 f"best {best:.4f} ({best - baseline:+.4f})")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
