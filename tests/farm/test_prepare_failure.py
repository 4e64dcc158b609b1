"""A prepare command that fails is a run-level error: the run stops at once, says why, and resumes.

The data preparation belongs to the frozen harness: when it fails, no candidate is at fault and every
job would fail the same way. So the run stops at the first failure (no job re-run, no candidate
failed, nothing more dispatched), its jobs stay queued for `--resume`, the reason is on the console
and in the run's record with the tail of the command's output, the whole output is in the run's logs
folder, and the farm shuts down without waiting out the other workers' prepare (a download can take
minutes) and without Ray's complaints. One test runs `autoresearch-farm run` as a user does (its own
local Ray); one runs the farm in this process and resumes it once prepare is fixed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from cluster.errors import RunFailed
from cluster.records import State
from tests.farmkit import SCRIPTED_CONFIG, Farm, farm_config, make_repo
from worker.runner import TAIL_LINES

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# the CLI as a user runs it, from this checkout whatever is installed
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
REASON = "Tokenizer: need at least 2 data shards (1 train + 1 val). Download more data first."
NOTES = 80  # lines the failing prepare prints before its reason: more than the tail keeps


def failing_prepare(count: Path, token: str) -> list[str]:
    """A prepare command that notes where it ran (one line per call, under the workers' lock), then:
    the first call prints NOTES lines and the reason and exits 1; any later call is a long download."""
    script = (f"# {token}\nimport os, sys, time\n"
              f"with open({str(count)!r}, 'a') as f: f.write(os.getcwd() + '\\n')\n"
              f"if len(open({str(count)!r}).read().splitlines()) > 1:\n"
              "    print('downloading', flush=True); time.sleep(120)\n"
              f"for i in range({NOTES}): print(f'shard note {{i:03d}}')\n"
              f"sys.stdout.flush(); print({REASON!r}, file=sys.stderr); sys.exit(1)\n")
    return ["python", "-c", script]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=ENV)


def processes_with(token: str) -> list[int]:
    pids = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(token in a for a in p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE:
                pids.append(p.pid)
        except psutil.Error:
            continue
    return pids


def test_a_failed_prepare_stops_the_run_at_once_says_why_and_ends_cleanly(tmp_path):
    repo = make_repo(tmp_path / "target")
    count, token = tmp_path / "prepared", f"farm-prepare-{time.time_ns()}"
    config = tmp_path / "farm.toml"
    config.write_text(SCRIPTED_CONFIG.replace("prepare_command = []", "prepare_command = "
                                              + json.dumps(failing_prepare(count, token))
                                              + f"\ncache_dir = {json.dumps(str(tmp_path / 'cache'))}"))
    cfg = str(config)
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", "run", "--config", cfg, "--tag", "P",
                             "--max-experiments", "3", "--no-dashboard"], cwd=repo, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=ENV)
    lines: list[tuple[float, str]] = []
    watchdog = threading.Timer(240, proc.kill)  # a farm that hangs fails the test instead of holding it
    watchdog.start()
    try:
        for line in proc.stdout:
            lines.append((time.time(), line))
        proc.wait(timeout=60)
    finally:
        watchdog.cancel()
        proc.kill()
    ended = time.time()
    out = "".join(text for _, text in lines)
    assert proc.returncode == 2, out
    # on the console, whole: the command, how it ended, the tail of its output, where the rest is, what to do
    message = out[out.index("autoresearch-farm: error: "):]
    assert "the prepare command `python -c" in message and "(exit 1)" in message, message
    assert REASON in message and f"shard note {NOTES - 1:03d}" in message
    first_kept = NOTES + 1 - TAIL_LINES  # the tail's lines: the last notes, then the reason
    assert f"shard note {first_kept:03d}" in message and f"shard note {first_kept - 1:03d}" not in message
    assert "--tag P --resume" in message
    for noise in ("Traceback", "RayTaskError", "ray::", "Failed to connect to GCS", "re-queued", " failed: "):
        assert noise not in out, (noise, out)
    assert not re.search(r"\b(done|merged|running|queued) -\d", out), out
    assert not re.search(r"\[(baseline|measure|confirm)\]", out), "no job ran"
    # the run stopped at the first failure and the farm did not wait out the other worker's download
    started = next(t for t, text in lines if text.startswith("run P: main line"))
    assert ended - started < 30, f"{ended - started:.0f}s from the controller's start to the end ({ended - t0:.0f}s)"
    ran = count.read_text().splitlines()
    assert 1 <= len(ran) <= 2 and len(set(ran)) == len(ran), f"prepare ran at most once per worker: {ran}"
    deadline = time.time() + 10
    while processes_with(token) and time.time() < deadline:
        time.sleep(0.1)
    assert processes_with(token) == [], "no prepare is left running"
    # recorded: `status` says why, with the tail; the whole output is in the run's logs folder
    s = json.loads(cli("status", "--config", cfg, "--tag", "P", "--json", cwd=repo).stdout)
    assert s["status"] == "failed" and REASON in s["why_ended"] and "(exit 1)" in s["why_ended"]
    assert s["running"] == [] and {k for k, v in s["candidates"].items() if v} == {State.QUEUED.value}, \
        "no candidate was failed, run or judged: all are pending"
    assert s["queued"] >= 2, "the baseline's jobs are still queued, for --resume"
    text = cli("status", "--config", cfg, "--tag", "P", cwd=repo).stdout
    assert text.startswith("run P: failed\n") and "  the prepare command `python -c" in text and REASON in text
    logs = sorted((repo / ".git" / "autoresearch-farm" / "runs" / "P" / "logs").glob("prepare-*.log"))
    assert len(logs) == 1 and str(logs[0]) in message
    full = logs[0].read_text()
    assert full.startswith("shard note 000\n") and full.rstrip().endswith(REASON)
    assert json.loads(cli("results", "--config", cfg, "--tag", "P", "--format", "json", cwd=repo).stdout) == []


def test_after_a_failed_prepare_resume_runs_the_same_jobs_and_none_counts_as_lost(ray_local, tmp_path):
    repo = make_repo(tmp_path / "target")
    count = tmp_path / "prepared"
    common = {"judge.baseline_runs": 2, "workers.count": 2, "train.cache_dir": str(tmp_path / "cache")}
    fail = ["python", "-c", f"import os, sys; open({str(count)!r}, 'a').write('fail ' + os.getcwd() + '\\n'); "
            f"print({REASON!r}); sys.exit(1)"]
    farm = Farm(farm_config(repo, **common, **{"train.prepare_command": fail}), [])
    try:
        with pytest.raises(RunFailed) as caught:
            farm.run()
        assert REASON in str(caught.value) and "(exit 1)" in str(caught.value)
        store = farm.store
        assert store.results() == [] and store.running_jobs() == []
        queued = {j.id: j for j in store.queued_jobs()}
        assert len(queued) == 2 and all(j.lost == 0 for j in queued.values()), "put back, not lost"
        assert {c.state for c in store.candidates()} == {State.QUEUED.value}
        events = [e["data"] for e in store.events(100) if e["kind"] == "prepare_failed"]
        assert len(events) >= 1 and events[0]["exit_code"] == 1 and not [e for e in store.events(100)
                                                                          if e["kind"] == "lost"]
        logs = list((farm.ctx.run_dir / "logs").glob("prepare-*.log"))
        assert logs and REASON in logs[0].read_text()
    finally:
        farm.close()
    fixed = ["python", "-c", f"import os; open({str(count)!r}, 'a').write('ok ' + os.getcwd() + '\\n')"]
    resumed = Farm(farm_config(repo, **common, **{"train.prepare_command": fixed}), [], resume=True)
    try:
        resumed.run()
        results = resumed.store.results()
        assert sorted(r.job for r in results) == sorted(queued), "the same jobs ran, each once"
        assert all(r.status == "ok" for r in results)
        assert all(resumed.store.job_record(j)["lost"] == 0 for j in queued)
        assert resumed.by_description()["baseline"].state == State.MERGED.value
    finally:
        resumed.close()
    ran = count.read_text().splitlines()
    assert len([r for r in ran if r.startswith("fail ")]) <= 2 and len([r for r in ran if r.startswith("ok ")]) == 2
