"""The farm's metrics reach Prometheus: recorded through FarmMetrics on a real local Ray started with
a metrics export port, then scraped from that port as Prometheus text, the way a Prometheus on the
head scrapes every node. Also: without Ray, FarmMetrics is a silent no-op and imports nothing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cluster.loop.metrics import DISPATCH_GAP_BOUNDARIES, PREFIX, SPECS
from tests.farmkit import free_port

ROOT = Path(__file__).resolve().parents[2]
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text format -> (name, labels, value) samples."""
    out = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m and not line.startswith("#"):
            out.append((m.group(1), dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def value(samples, name: str, **labels: str) -> float | None:
    for n, lab, v in samples:
        if n == name and all(lab.get(k) == want for k, want in labels.items()):
            return v
    return None


def test_without_ray_it_is_a_noop_and_imports_nothing():
    code = (
        "import sys\n"
        "from cluster.loop.metrics import FarmMetrics\n"
        "m = FarmMetrics('t')\n"
        "m.result('ok'); m.decision('merge'); m.dispatch_gap(1.0); m.llm_usage(10, 5, 0.01)\n"
        "m.snapshot(1.0, 1.1, 3, 2, 0.5, workers=2)\n"
        "assert not m.enabled and 'ray' not in sys.modules, sorted(k for k in sys.modules if 'ray' in k)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_metric_names_and_boundaries_are_sane():
    assert all(re.fullmatch(r"[a-z_]+", name) for name in SPECS)
    assert DISPATCH_GAP_BOUNDARIES == sorted(DISPATCH_GAP_BOUNDARIES) and DISPATCH_GAP_BOUNDARIES[0] > 0
    grafana = json.loads((ROOT / "docs" / "grafana_dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in grafana["panels"] for t in p.get("targets", []))
    for name, (kind, _, _) in SPECS.items():
        exported = "ray_" + PREFIX + name + ("_total" if kind == "counter" else "_bucket" if kind == "histogram" else "")
        assert exported in exprs, f"the Grafana dashboard has no panel for {exported}"
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in grafana["templating"]["list"])


# Runs in a process of its own: it needs a Ray started with a metrics export port, and the suite's
# in-process Ray (conftest's ray_local) may already be up without one.
RECORDER = """
import sys, time
import ray
from cluster.loop.metrics import FarmMetrics

ray.init(_metrics_export_port=int(sys.argv[1]), include_dashboard=False, num_cpus=1)
m = FarmMetrics("mtest")
assert m.enabled
m.result("ok"); m.result("ok"); m.result("crash")
m.decision("merge")
m.snapshot(0.98, 1.0, queue_depth=3, running=2, busy_fraction=0.75, workers=4)
for gap in (0.01, 0.3, 42.0):
    m.dispatch_gap(gap)
m.llm_usage(1000, 250, 0.0125)
m.llm_usage(0, 50, 0.0)
print("recorded", flush=True)
sys.stdin.read()  # keep Ray (and its metrics agent) up until the test closes stdin
ray.shutdown()
"""


@pytest.mark.slow
def test_recorded_values_are_served_to_prometheus():
    want = {
        ("ray_autoresearch_farm_experiments_total", (("status", "ok"),)): 2.0,
        ("ray_autoresearch_farm_experiments_total", (("status", "crash"),)): 1.0,
        ("ray_autoresearch_farm_decisions_total", (("action", "merge"),)): 1.0,
        ("ray_autoresearch_farm_best_val_bpb", ()): 0.98,
        ("ray_autoresearch_farm_baseline_val_bpb", ()): 1.0,
        ("ray_autoresearch_farm_queue_depth", ()): 3.0,
        ("ray_autoresearch_farm_running_candidates", ()): 2.0,
        ("ray_autoresearch_farm_gpu_busy_fraction", ()): 0.75,
        ("ray_autoresearch_farm_workers", ()): 4.0,
        ("ray_autoresearch_farm_dispatch_gap_seconds_count", ()): 3.0,
        ("ray_autoresearch_farm_dispatch_gap_seconds_bucket", (("le", "0.05"),)): 1.0,
        ("ray_autoresearch_farm_dispatch_gap_seconds_bucket", (("le", "0.5"),)): 2.0,
        ("ray_autoresearch_farm_dispatch_gap_seconds_bucket", (("le", "60.0"),)): 3.0,
        ("ray_autoresearch_farm_llm_tokens_total", (("kind", "prompt"),)): 1000.0,
        ("ray_autoresearch_farm_llm_tokens_total", (("kind", "completion"),)): 300.0,
        ("ray_autoresearch_farm_llm_cost_usd_total", ()): 0.0125,
    }
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", RECORDER, str(port)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:  # wait until Ray is up and the values are recorded
            lines.append(line)
            if line.strip() == "recorded":
                break
        assert proc.poll() is None, "".join(lines[-30:])
        deadline = time.monotonic() + 60  # the metrics agent exports every few seconds
        got: dict = {}
        while time.monotonic() < deadline:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                text = ""
            samples = parse(text)
            got = {k: value(samples, k[0], tag="mtest", **dict(k[1])) for k in want}
            if all(got[k] is not None and abs(got[k] - v) < 1e-9 for k, v in want.items()):
                break
            time.sleep(1)
        assert got == pytest.approx(want), "series missing or wrong on the Prometheus endpoint"
    finally:
        proc.stdin.close()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
