"""The dashboard's HTML: three pages (the run, the workers, a candidate), each a shell around named
regions. A page is rendered whole on the server, and its regions are rendered again by the same
functions for the live stream (cluster/report/web.py), which replaces a region's contents when they
change: one rendering path, so what arrives live is what a reload would show.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any

from cluster.report import svg

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#111;background:#fafafa}
header{background:#111;color:#eee;padding:8px 20px;display:flex;gap:18px;align-items:baseline}
header a{color:#eee;text-decoration:none}header a.on{border-bottom:2px solid #eee}header .run{font-weight:600}
header .live{margin-left:auto;font-size:12px;color:#9ca3af}
main{padding:8px 20px 40px;max-width:1300px}h2{font-size:16px;margin:22px 0 6px}
table{border-collapse:collapse;width:100%;background:#fff}th,td{padding:3px 8px;border-bottom:1px solid #e5e7eb;
text-align:left;vertical-align:top}th{background:#f3f4f6;font-weight:600}td.num{text-align:right;
font-variant-numeric:tabular-nums}a{color:#1d4ed8}.error{background:#fee2e2;border:1px solid #fca5a5;padding:8px}
.kv{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px}.kv dt{color:#555}.kv dd{margin:0}
.keep{color:#15803d}.discard{color:#6b7280}.crash,.failed{color:#b91c1c}.stale{color:#a16207}.empty{color:#666}
.bar{width:160px;height:10px;background:#e5e7eb;display:inline-block;vertical-align:middle}
.bar i{display:block;height:100%;background:#2563eb}pre{background:#fff;border:1px solid #e5e7eb;padding:8px;
overflow:auto;max-height:520px;font-size:12px}pre .add{color:#15803d}pre .del{color:#b91c1c}pre .hunk{color:#7c3aed}
svg{background:#fff;border:1px solid #e5e7eb;max-width:100%;height:auto}svg .plot{fill:none}
svg .grid{stroke:#eee}svg .tick,svg .label{font-size:11px;fill:#444}svg .axis{font-size:12px;fill:#333}
svg .baseline{stroke:#6b7280;stroke-dasharray:5 4}svg .best{fill:none;stroke:#15803d;stroke-width:2}
svg .pt.keep{fill:#16a34a}svg .pt.discard,svg .pt.stale,svg .pt.failed{fill:#9ca3af}svg .pt.crash{stroke:#dc2626;
stroke-width:2}svg .label.keep{fill:#166534}svg .curve{fill:none;stroke-width:1.5}
"""

# Live updates: the server's event stream sends {"regions": {id: html}, "at": ...} whenever a region
# changes; EventSource reconnects by itself when the stream drops (a restarted dashboard, a network blip).
JS = """
(function(){const page=document.body.dataset.page;let n=0;
function go(){const es=new EventSource('/events?page='+encodeURIComponent(page));
es.onopen=()=>{document.getElementById('live').textContent='live'};
es.onmessage=(m)=>{const d=JSON.parse(m.data);for(const [id,html] of Object.entries(d.regions)){
const el=document.getElementById(id);if(el)el.innerHTML=html;}n+=1;document.body.dataset.updates=n;
document.getElementById('live').textContent='live, updated '+d.at;};
es.onerror=()=>{document.getElementById('live').textContent='reconnecting...'};}
go();})();
"""

NAV = (("run", "/", "Run"), ("workers", "/workers", "Workers"))


def _f(v: float | None, fmt: str = ".6f", none: str = "-") -> str:
    return none if v is None else format(v, fmt)


def _cand(cid: str | None) -> str:
    return f'<a href="/c/{escape(cid)}">{escape(cid)}</a>' if cid else "-"


def _table(head: list[str], rows: list[list[str]], num: set[int] = frozenset(), empty: str = "none") -> str:
    if not rows:
        return f'<p class="empty">{escape(empty)}</p>'
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if i in num else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def page(key: str, title: str, tag: str, regions: dict[str, str]) -> str:
    """The whole page: header and navigation, then each region as a <section> with its id."""
    nav = "".join(f'<a href="{href}"{" class=on" if key == k else ""}>{label}</a>' for k, href, label in NAV)
    body = "".join(f'<section id="{rid}">{html}</section>' for rid, html in regions.items())
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>'
            f'<body data-page="{escape(key)}"><header><span class="run">autoresearch-farm · {escape(tag)}</span>{nav}'
            f'<span class="live" id="live">connecting...</span></header><main>{body}</main>'
            f"<script>{JS}</script></body></html>")


def message(title: str, text: str) -> str:
    """A page that says what went wrong (an unknown candidate, a run that cannot be read)."""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<style>{CSS}</style></head><body><header><span class="run">autoresearch-farm</span>'
            f'<a href="/">Run</a><a href="/workers">Workers</a></header><main><h2>{escape(title)}</h2>'
            f'<p class="error" id="message">{escape(text)}</p></main></body></html>')


def banner(error: str | None) -> str:
    return f'<p class="error">cannot read the run right now: {escape(error)}</p>' if error else ""


def _per(cost: dict[str, Any], what: str) -> str:
    """The run's cost per experiment or per merged improvement."""
    c, n = cost[what], cost["experiments" if what == "per_experiment" else "merged"]
    if not c:
        return "-"
    return f"{c['gpu_hours']:.3f} GPU-h, {cost['worker_hours'] / n:.3f} worker-h, ${c['usd']:.2f}"


def _best(s: dict[str, Any], lineage: list[dict[str, Any]]) -> str:
    """The main line's value (its own runs), else its last merge's runs as a candidate, against the baseline."""
    best, note = s["best_bpb"], ""
    if best is None and lineage and lineage[-1]["val_bpb"] is not None:
        best, note = lineage[-1]["val_bpb"], " (measured as a candidate; the main line's own runs are to come)"
    if best is None:
        return "-"
    base = s["baseline_bpb"]
    vs = f" ({best - base:+.6f} vs the baseline {base:.6f})" if base is not None else ""
    return f'<span id="best">{best:.6f}</span> at <code>{escape((s["main"] or "")[:8])}</code>{vs}{escape(note)}'


def run_regions(v: dict[str, Any]) -> dict[str, str]:
    s, r = v["status"], v["rates"]
    cost = s["cost"]
    noise = s.get("noise") or {}
    floors = [f"{a['sigma']:.4f} bpb on {escape(acc)} ({a['runs']} runs of {a['commits']} main-line commit{'s' if a['commits'] != 1 else ''})"
              for acc, a in sorted((noise.get("by_accelerator") or {}).items())]
    n_exp = len(v["experiments"])
    why = s.get("why_ended")
    error = (s.get("proposer") or {}).get("last_error")
    kv = [("status", f'<span id="run-status">{escape(str(s["status"]))}</span>' + (f" ({escape(str(why))})" if why else "")),
          ("experiments", f'<span id="n-experiments">{n_exp}</span> finished, {s["measurements"]} measurements, '
                          f'{s["queued"]} jobs queued'),
          ("best val_bpb", _best(s, v["lineage"])),
          ("merged", f'<span id="n-merged">{len(v["lineage"])}</span> improvements'),
          ("experiments per hour", _f(r["experiments_per_hour"], ".1f")),
          ("workers busy", f'{r["workers_busy"]} of {r["workers"]}'),
          ("noise floor", "; ".join(floors) or f"the prior, {noise.get('prior', 0):.4f} bpb, until the main line has "
                                                "repeats"),
          ("cost", f"{cost['gpu_hours']:.3f} GPU-h, {cost['worker_hours']:.3f} worker-h, "
                   f"{cost['prompt_tokens'] + cost['completion_tokens']:,} LLM tokens, ${cost['usd']:.2f}"),
          ("per experiment", _per(cost, "per_experiment")), ("per merged improvement", _per(cost, "per_merged"))]
    if error:
        kv.append(("proposer's last error", f"<pre>{escape(str(error))}</pre>"))
    summary = '<dl class="kv">' + "".join(f"<dt>{k}</dt><dd>{val}</dd>" for k, val in kv) + "</dl>"
    lineage = _table(["#", "commit", "candidate", "change", "val_bpb", "gain", "cumulative", "runs", "why merged"],
                     [[str(i), f"<code>{escape(m['commit'][:8])}</code>", _cand(m["cand"]),
                       escape(m["description"]) + (f" (combines {', '.join(map(_cand, m['members']))})"
                                                   if m["members"] else ""),
                       _f(m["val_bpb"]) + ("" if m["line"] else " *"), _f(m["gain"], "+.6f"), _f(m["cumulative"], "+.6f"), str(m["runs"]),
                       escape(m["reason"])] for i, m in enumerate(v["lineage"], 1)],
                     num={0, 4, 5, 6, 7}, empty="Nothing merged yet: the main line is the baseline.")
    if any(not m["line"] for m in v["lineage"]):
        lineage += '<p class="empty">* measured as a candidate: the main line\'s own runs of it are to come</p>'
    recent = v["experiments"][::-1][:200]
    table = _table(["candidate", "origin", "status", "val_bpb", "runs", "change"],
                   [[_cand(e["cand"]), escape(e["origin"]), f'<span class="{e["status"]}">{e["status"]}</span>',
                     _f(e["val_bpb"]), str(e["runs"]), escape(e["description"])] for e in recent],
                   num={3, 4}, empty="No experiment has finished yet.")
    return {"banner": "", "summary": "<h2>The run</h2>" + summary,
            "chart": "<h2>Progress</h2>" + svg.progress_chart(v["experiments"], s["baseline_bpb"]),
            "lineage": "<h2>The main line</h2>" + lineage,
            "experiments": f"<h2>Experiments (newest first{', the last 200' if len(recent) < n_exp else ''})</h2>"
                           + table}


def _elapsed(w: dict[str, Any], budget: float | None) -> str:
    if not w["job"]:
        return '<span class="empty">idle</span>'
    frac = w["progress"]  # through the training budget, from its loss curve; else the wall time so far
    if frac is None:
        frac = min(1.0, w["elapsed_s"] / budget) if w["elapsed_s"] is not None and budget else 0.0
    el = f"{w['elapsed_s']:.0f} s" if w["elapsed_s"] is not None else "starting"
    of = f" of {budget:g} s budget" if budget else ""
    return (f'<span class="bar" title="{frac:.0%} of the training budget"><i style="width:{min(frac, 1) * 100:.1f}%">'
            f"</i></span> {frac:.0%} · {el}{of}" + (f" · loss {w['loss']:.3f}" if w["loss"] is not None else ""))


def workers_regions(v: dict[str, Any]) -> dict[str, str]:
    rows = [[escape(w["name"]), escape(str(w["node"] or "?")),
             escape(str(w["accelerator"] or "?")) + (f" (GPU {','.join(map(str, w['gpu_ids']))})" if w["gpu_ids"] else ""),
             _cand(w["cand"]) + (f" {escape(w['purpose'])}: {escape(w['description'])}" if w["cand"] else ""),
             _elapsed(w, v["budget"]),
             ", ".join(f'{_cand(r["cand"])} <span class="{r["status"]}">{_f(r["val_bpb"], ".4f", r["status"])}</span>'
                       for r in w["last"]) or "-", f"{w['seen_s']:.0f} s ago"] for w in v["workers"]]
    queue = _table(["#", "job", "candidate", "purpose", "change"],
                   [[str(i), escape(q["job"]), _cand(q["cand"]), escape(q["purpose"]), escape(q["description"])]
                    for i, q in enumerate(v["queue"], 1)], num={0}, empty="The queue is empty.")
    more = f" (the first {len(v['queue'])} of {v['queue_length']})" if v["queue_length"] > len(v["queue"]) else ""
    return {"banner": "",
            "workers": f'<h2>Workers (<span id="n-busy">{v["rates"]["workers_busy"]}</span> of {len(v["workers"])} '
                       f"busy)</h2>" + _table(["worker", "node", "accelerator", "running", "elapsed", "last results",
                                               "heartbeat"], rows, empty="No live worker."),
            "queue": f"<h2>Queue: {v['queue_length']} jobs{more}</h2>" + queue}


def _diff(text: str) -> str:
    def cls(line: str) -> str:
        if line.startswith(("+++", "---")):
            return ""
        return {"+": "add", "-": "del", "@": "hunk"}.get(line[:1], "")

    return "<pre id=\"diff-text\">" + "\n".join(
        f'<span class="{c}">{escape(ln)}</span>' if (c := cls(ln)) else escape(ln) for ln in text.splitlines()) + "</pre>"


def _when(t: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) if t else "-"


def _event(data: dict[str, Any]) -> str:
    """An event's data in words: the judge's action and reason first, then the rest."""
    head = ": ".join(str(data[k]) for k in ("action", "reason") if data.get(k))
    rest = "; ".join(f"{k} {v}" for k, v in data.items() if k not in ("cand", "action", "reason", "at"))
    return escape("; ".join(p for p in (head, rest) if p))


def candidate_regions(cv: dict[str, Any]) -> dict[str, str]:
    c, results = cv["candidate"], cv["results"]
    d = c.get("decision") or {}
    meta = c.get("meta") or {}
    kv = [("change", escape(c["description"])), ("origin", escape(c["origin"])),
          ("state", f'<span class="{escape(c["state"])}" id="cand-state">{escape(c["state"])}</span>'),
          ("decision", f'<span id="decision">{escape(d.get("action", "-"))}: {escape(d.get("reason", ""))}</span>'),
          ("commit", f"<code>{escape(c['commit'])}</code> on the main line at <code>{escape(c['base'][:8])}</code>"),
          ("branch", f"<code>{escape(c['branch'])}</code>"), ("lines", f"+{c['lines_added']} -{c['lines_removed']}")]
    if c.get("parent"):
        kv.append(("repairs", _cand(c["parent"])))
    if meta.get("combination"):
        kv.append(("combines", ", ".join(map(_cand, meta["combination"]))))
    head = '<dl class="kv">' + "".join(f"<dt>{k}</dt><dd>{val}</dd>" for k, val in kv) + "</dl>"
    decisions = _table(["time", "event", "what"],
                       [[_when(e["at"]), escape(e["kind"]), _event(e["data"])] for e in cv["events"]],
                       empty="No decision yet.")
    runs = _table(["job", "purpose", "seed", "worker", "node", "accelerator", "training s", "wall s", "val_bpb", "status",
                   "finished", "reason"],
                  [[escape(r["job"]), escape(r["purpose"]), str(r.get("seed", "-")), escape(r["worker"]), escape(r["node"]),
                    escape(r["accelerator"]), _f(r["training_seconds"], ".1f"), _f(r["wall_seconds"], ".1f"),
                    _f(r["val_bpb"]), f'<span class="{escape(r["status"])}">{escape(r["status"])}</span>',
                    _when(r["finished_at"]), escape(r["reason"])] for r in results], num={2, 6, 7, 8},
                  empty="Not measured yet.")
    series = [(f"{r['job']} ({r['purpose']}, seed {r.get('seed')})", r.get("loss_curve") or []) for r in results]
    series += [(f"{lv['job']} on {lv['worker']}, running", lv.get("points") or []) for lv in cv["live"]]
    last_log = next((r for r in reversed(results) if r.get("log_tail")), None)
    if cv["diff"]:
        diff = _diff(cv["diff"])
    else:
        diff = f'<p class="empty">{escape(cv["diff_missing"] or "No change: this is the main line itself.")}</p>'
    return {"banner": "", "candidate": f"<h2>Candidate {escape(c['id'])}</h2>" + head,
            "decisions": "<h2>The judge's decisions</h2>" + decisions,
            "measurements": f"<h2>Measurements ({len(results)})</h2>" + runs,
            "curve": "<h2>Training loss</h2>" + svg.curves_chart(series),
            "diff": "<h2>Diff against its base</h2>" + diff,
            "log": "<h2>Log tail</h2>" + (f"<p>of {escape(last_log['job'])}</p><pre>{escape(last_log['log_tail'])}</pre>"
                                          if last_log else '<p class="empty">No log yet.</p>')}

