"""`autoresearch-farm` as a user runs it: a real process with its own local Ray and embedded Redis,
on a target repository with the scripted training command (tests/fixtures/scripted_train.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.farmkit import SCRIPTED_CONFIG, free_port, git, make_repo

pytestmark = pytest.mark.slow

CONFIG = SCRIPTED_CONFIG


def farm(*args: str, cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, **kw)


@pytest.fixture
def target(tmp_path):
    repo = make_repo(tmp_path / "target")
    (tmp_path / "farm.toml").write_text(CONFIG)
    return repo


def test_run_to_max_experiments_then_status_and_results(target, tmp_path):
    cfg = str(tmp_path / "farm.toml")
    out = farm("run", "--config", cfg, "--tag", "T", "--max-experiments", "4", "--no-dashboard", cwd=target)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 experiments done" in out.stdout
    status = farm("status", "--config", cfg, "--tag", "T", "--json", cwd=target)
    s = json.loads(status.stdout)
    assert s["status"] == "done"
    assert sum(v for k, v in s["candidates"].items() if k in ("merged", "discarded", "stale", "failed")) == 5
    tsv = farm("results", "--config", cfg, "--tag", "T", cwd=target).stdout.splitlines()
    assert tsv[0].split("\t") == ["commit", "val_bpb", "memory_gb", "status", "description"]
    rows = [r.split("\t") for r in tsv[1:]]
    assert rows[0][4] == "baseline" and rows[0][3] == "keep"
    assert len(rows) == 5
    assert all(r[3] in ("keep", "discard", "crash") for r in rows)
    branches = git(target, "branch", "--list", "--format=%(refname:short)").split()
    assert "autoresearch/T" in branches
    assert len([b for b in branches if b.startswith("candidates/T/")]) == 4
    again = farm("run", "--config", cfg, "--tag", "T", "--no-dashboard", cwd=target)
    assert again.returncode == 2 and "already exists" in again.stderr and "--resume" in again.stderr
    png = tmp_path / "progress.png"
    drawn = farm("plot", "--config", cfg, "--tag", "T", "--out", str(png), cwd=target)
    assert drawn.returncode == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[:2] == (660, 1320)


def test_a_tag_whose_branch_exists_is_refused_before_anything_is_recorded(target, tmp_path):
    cfg = str(tmp_path / "farm.toml")
    git(target, "branch", "autoresearch/taken")
    out = farm("run", "--config", cfg, "--tag", "taken", "--no-dashboard", cwd=target)
    assert out.returncode == 2 and "already exists" in out.stderr
    status = farm("status", "--config", cfg, "--tag", "taken", cwd=target)
    assert status.returncode == 2 and "no run 'taken'" in status.stderr


@pytest.mark.faults
def test_ctrl_c_then_resume_loses_nothing_and_repeats_nothing(target, tmp_path):
    cfg = str(tmp_path / "farm.toml")
    # runs long enough that the stop (driver -> controller actor) lands while work is left
    (target / "train.py").write_text((target / "train.py").read_text().replace("SLEEP = 0.3", "SLEEP = 1.0"))
    git(target, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "slower runs")
    proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", "run", "--config", cfg, "--tag", "R",
                             "--max-experiments", "6", "--no-dashboard"], cwd=target, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen = []
    deadline = time.time() + 240
    while time.time() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        if "[measure]" in line:
            break
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(seen) + rest
    assert "went back to the queue" in rest or "running 0" in rest
    mid = json.loads(farm("status", "--config", cfg, "--tag", "R", "--json", cwd=target).stdout)
    assert mid["status"] == "stopped" and mid["running"] == []
    out = farm("run", "--config", cfg, "--tag", "R", "--resume", "--no-dashboard", cwd=target)
    assert out.returncode == 0, out.stdout + out.stderr
    records = json.loads(farm("results", "--config", cfg, "--tag", "R", "--format", "json", cwd=target).stdout)
    jobs = [r["job"] for r in records]
    assert len(jobs) == len(set(jobs)), "no job has two recorded results"
    final = json.loads(farm("status", "--config", cfg, "--tag", "R", "--json", cwd=target).stdout)
    assert final["candidates"]["queued"] == final["candidates"]["running"] == 0
    measured = {r["cand"] for r in records if r["purpose"] == "measure"}
    assert len(measured) == 6, "every proposed candidate was measured once the run resumed"


@pytest.mark.faults
def test_kill_9_of_the_farm_then_resume_loses_nothing_and_merges_nothing_twice(target, tmp_path):
    cfg = str(tmp_path / "farm.toml")
    proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", "run", "--config", cfg, "--tag", "K",
                             "--max-experiments", "6", "--no-dashboard"], cwd=target, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    wait_for_line(proc, "run K: main line")  # the run is up: its controller is recorded
    loop = controller_pid(cfg, "K", target)
    assert loop != proc.pid, "the loop runs in its actor's process"
    measured = 0
    deadline = time.time() + 240
    while time.time() < deadline and measured < 2:
        measured += "[measure]" in proc.stdout.readline()
    proc.send_signal(signal.SIGSTOP)  # the driver can mark nothing ...
    os.kill(loop, signal.SIGKILL)  # ... while the process running the controller loop dies mid-step
    proc.kill()  # SIGKILL: no clean-up at all
    proc.wait(timeout=30)
    mid = json.loads(farm("status", "--config", cfg, "--tag", "K", "--json", cwd=target).stdout)
    assert mid["status"] == "running", "the record still says running: nobody marked it"
    done_before = {r["job"] for r in json.loads(
        farm("results", "--config", cfg, "--tag", "K", "--format", "json", cwd=target).stdout)}
    out = farm("run", "--config", cfg, "--tag", "K", "--resume", "--no-dashboard", cwd=target)
    assert out.returncode == 0, out.stdout + out.stderr
    records = json.loads(farm("results", "--config", cfg, "--tag", "K", "--format", "json", cwd=target).stdout)
    jobs = [r["job"] for r in records]
    assert len(jobs) == len(set(jobs)), "no job has two recorded results"
    assert done_before <= set(jobs), "nothing recorded before the kill was lost"
    final = json.loads(farm("status", "--config", cfg, "--tag", "K", "--json", cwd=target).stdout)
    assert final["status"] == "done"
    assert final["candidates"]["queued"] == final["candidates"]["running"] == final["candidates"]["finished"] == 0
    assert len({r["cand"] for r in records if r["purpose"] == "measure"}) == 6
    moves = git(target, "reflog", "show", "--format=%H", "autoresearch/K").split()
    assert len(moves) == 1 + final["candidates"]["merged"] - 1, "one main-line move per merged candidate"


def wait_for_line(proc: subprocess.Popen, start: str, timeout: float = 240) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if line.startswith(start) or not line:
            return line
    raise AssertionError(f"no line {start!r} within {timeout:.0f}s")


def controller_pid(cfg: str, tag: str, cwd: Path) -> int:
    """The pid of the process running the run's controller loop (the `<tag>:controller` actor)."""
    status = json.loads(farm("status", "--config", cfg, "--tag", tag, "--json", cwd=cwd).stdout)
    assert status["controller"]["actor"] == f"{tag}:controller"
    return status["controller"]["pid"]


@pytest.mark.faults
def test_a_controller_killed_alone_is_recorded_as_crashed_and_resume_finishes_the_run(target, tmp_path):
    cfg = str(tmp_path / "farm.toml")
    (target / "train.py").write_text((target / "train.py").read_text().replace("SLEEP = 0.3", "SLEEP = 2.0"))
    git(target, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "slower runs")
    proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", "run", "--config", cfg, "--tag", "C",
                             "--max-experiments", "4", "--no-dashboard"], cwd=target, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen = [wait_for_line(proc, "run C: main line")]  # the run is up: its controller is recorded
    loop = controller_pid(cfg, "C", target)
    os.kill(loop, signal.SIGKILL)  # the baseline is being measured meanwhile
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, "".join(seen) + rest
    assert f"the controller of run C (actor C:controller, pid {loop}) died" in rest and "--resume" in rest
    mid = json.loads(farm("status", "--config", cfg, "--tag", "C", "--json", cwd=target).stdout)
    assert mid["status"] == "crashed" and mid["why_ended"].startswith("the controller died")
    done_before = {r["job"] for r in json.loads(
        farm("results", "--config", cfg, "--tag", "C", "--format", "json", cwd=target).stdout)}
    out = farm("run", "--config", cfg, "--tag", "C", "--resume", "--no-dashboard", cwd=target)
    assert out.returncode == 0 and "4 experiments done" in out.stdout, out.stdout + out.stderr
    assert "running job(s) re-queued" in out.stdout
    records = json.loads(farm("results", "--config", cfg, "--tag", "C", "--format", "json", cwd=target).stdout)
    jobs = [r["job"] for r in records]
    assert len(jobs) == len(set(jobs)) and done_before <= set(jobs)
    final = json.loads(farm("status", "--config", cfg, "--tag", "C", "--json", cwd=target).stdout)
    assert final["status"] == "done" and final["controller"]["pid"] != loop
    assert final["candidates"]["queued"] == final["candidates"]["running"] == final["candidates"]["finished"] == 0
    assert len({r["cand"] for r in records if r["purpose"] == "measure"}) == 4
    moves = git(target, "reflog", "show", "--format=%H", "autoresearch/C").split()
    assert len(moves) == final["candidates"]["merged"], "one main-line move per merged candidate"


def test_the_farms_metrics_are_on_rays_prometheus_endpoint_during_a_run(target, tmp_path):
    import urllib.request

    from tests.parts.test_metrics import parse, value

    port = free_port()
    cfg = str(tmp_path / "farm.toml")
    (target / "train.py").write_text((target / "train.py").read_text().replace("SLEEP = 0.3", "SLEEP = 2.0"))
    git(target, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "slower runs")
    proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", "run", "--config", cfg, "--tag", "M",
                             "--max-experiments", "30", "--no-dashboard", "--metrics-port", str(port)], cwd=target,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    found: dict[str, float | None] = {}
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                samples = parse(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())
            except OSError:
                time.sleep(1)
                continue
            found = {"ok": value(samples, "ray_autoresearch_farm_experiments_total", status="ok"),
                     "best": value(samples, "ray_autoresearch_farm_best_val_bpb"),
                     "busy": value(samples, "ray_autoresearch_farm_gpu_busy_fraction")}
            if all(v is not None for v in found.values()):
                break
            time.sleep(1)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    assert found and all(v is not None for v in found.values()), found
    assert found["ok"] >= 1 and 0.9 < found["best"] < 1.1 and 0.0 <= found["busy"] <= 1.0


def test_a_run_that_cannot_start_says_why_and_leaves_nothing_behind(target, tmp_path):
    cfg = str(tmp_path / "farm.toml")
    out = farm("run", "--config", cfg, "--tag", "X", "--workers", "64", "--no-dashboard", cwd=target)
    assert out.returncode == 2 and "64 workers need 64 CPUs" in out.stderr and "--workers" in out.stderr
    status = farm("status", "--config", cfg, "--tag", "X", cwd=target)
    assert status.returncode == 2 and "no run 'X'" in status.stderr
    again = farm("run", "--config", cfg, "--tag", "X", "--max-experiments", "1", "--no-dashboard", cwd=target)
    assert again.returncode == 0, again.stdout + again.stderr
