"""The worker class itself (no Ray): materialising a candidate, running it, cleaning up after a predecessor."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from worker.actor import ORPHAN_MARKER, Worker, python_command, reap_orphans
from worker.sandbox import start_sandboxed
from worker.settings import WorkerSettings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def settings(tmp: Path, **kw) -> WorkerSettings:
    base = {"name": "w0", "work_root": str(tmp / "work"), "command": ["python", "train.py"], "prepare_command": [],
            "budget": 2.0, "grace": 20.0, "cache_dir": "", "isolate_network": False, "env": {},
            "cpu_threads": 1, "device": "cpu"}
    base.update(kw)
    return WorkerSettings(**base)


def test_runs_a_candidate_from_its_files_and_reports_the_summary(tmp_path):
    w = Worker(settings(tmp_path))
    files = {"train.py": (FIXTURES / "scripted_train.py").read_bytes(), "prepare.py": b"", "pkg/data.txt": b"x"}
    job = {"id": "j000001", "cand": "c0002", "commit": "abc", "attempt": 1, "purpose": "measure"}
    out = w.run(job, files, harness_digest="d")
    r = out["result"]
    assert r["status"] == "ok" and 0.9 < r["val_bpb"] < 1.1
    assert r["summary"]["budget_seen"] == 2.0
    assert r["worker"] == "w0" and r["accelerator"] == "cpu" and r["attempt"] == 1
    assert "val_bpb:" in out["log"] and Path(r["log_path"]).exists()
    assert not (tmp_path / "work" / "w0" / "runs" / "j000001-a1").exists(), "the private tree is removed"


def test_refuses_files_outside_its_directory(tmp_path):
    w = Worker(settings(tmp_path))
    job = {"id": "j1", "cand": "c1", "commit": "abc", "attempt": 1}
    try:
        w.run(job, {"../escape.py": b"x", "train.py": b""}, harness_digest="d")
    except ValueError as e:
        assert "outside" in str(e)
    else:
        raise AssertionError("a path outside the run directory was written")
    assert not (tmp_path / "work" / "w0" / "runs" / "escape.py").exists()


def test_a_restarted_worker_kills_what_its_predecessor_left_running(tmp_path):
    root = tmp_path / "work" / "w0"
    env = dict(os.environ, **{ORPHAN_MARKER: str(root)})
    # as a worker SIGKILLed mid-run leaves it: the training tree in its sandbox (cgroup if available)
    with open(tmp_path / "orphan.log", "w") as log:
        orphan = start_sandboxed([sys.executable, "-c", "import time; time.sleep(600)"], tmp_path, env, log)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        time.sleep(0.3)
        assert Worker(settings(tmp_path)).orphans_killed >= 1  # the restart
        assert orphan.reap(timeout=10) is not None
        assert bystander.poll() is None, "processes of other workers are left alone"
        if orphan.cgroup is not None:
            assert not orphan.cgroup.exists(), "the orphan's cgroup is removed too"
        assert reap_orphans(root) == 0
    finally:
        bystander.kill()
        bystander.wait()
        orphan.kill_tree()
        orphan.close()


def test_the_tripwire_runs_without_trusted_evaluation_too(tmp_path):
    w = Worker(settings(tmp_path, frozen=["prepare.py"]))
    cheat = (FIXTURES / "scripted_train.py").read_text().replace(
        "time.sleep(SLEEP)", "time.sleep(SLEEP)\nimport prepare\nprepare.evaluate_bpb = lambda *a: 0.1")
    job = {"id": "j3", "cand": "c4", "commit": "abc", "attempt": 1, "purpose": "measure"}
    r = w.run(job, {"train.py": cheat.encode(), "prepare.py": b"# frozen\n"}, harness_digest="d")["result"]
    assert r["status"] == "cheat" and r["reason"].startswith("tripwire:") and "tripwire" in r["containment"]


def test_python_means_the_farms_interpreter():
    assert python_command(["python", "train.py"]) == [sys.executable, "train.py"]
    assert python_command(["uv", "run", "train.py"]) == ["uv", "run", "train.py"]


def test_a_run_that_rewrites_the_frozen_harness_is_recorded_as_cheat(tmp_path):
    w = Worker(settings(tmp_path, frozen=["prepare.py"], tripwire=False))  # the hash check, behind the tripwire
    cheat = (FIXTURES / "scripted_train.py").read_text().replace(
        "time.sleep(SLEEP)", "time.sleep(SLEEP)\nopen('prepare.py', 'w').write('def evaluate_bpb(*a): return 0.1\\n')")
    files = {"train.py": cheat.encode(), "prepare.py": b"# frozen\n"}
    job = {"id": "j2", "cand": "c3", "commit": "abc", "attempt": 1, "purpose": "measure"}
    r = w.run(job, files, harness_digest="d")["result"]
    assert r["status"] == "cheat" and "prepare.py was modified" in r["reason"]
    assert r["val_bpb"] is None, "its printed val_bpb is not kept"
    honest = w.run(dict(job, id="j3"), {"train.py": (FIXTURES / "scripted_train.py").read_bytes(),
                                        "prepare.py": b"# frozen\n"}, harness_digest="d")["result"]
    assert honest["status"] == "ok"


def test_a_training_process_killed_from_outside_is_reported_lost_not_as_its_result(tmp_path):
    w = Worker(settings(tmp_path))
    job = {"id": "j4", "cand": "c4", "commit": "abc", "attempt": 1, "purpose": "measure"}
    killer = (FIXTURES / "scripted_train.py").read_text().replace('MODE = "ok"', 'MODE = "kill-self"')
    out = w.run(job, {"train.py": killer.encode()}, harness_digest="d")
    assert out["lost"].startswith("the training process on w0 was killed (SIGKILL)")
    assert out["result"]["status"] == "crash" and out["result"]["exit_code"] == -9
    crash = (FIXTURES / "scripted_train.py").read_text().replace('MODE = "ok"', 'MODE = "crash"')
    assert "lost" not in w.run(dict(job, id="j5"), {"train.py": crash.encode()}, harness_digest="d"), \
        "its own crash is its result"
    hang = (FIXTURES / "scripted_train.py").read_text().replace('MODE = "ok"', 'MODE = "hang"')
    out = Worker(settings(tmp_path, budget=0.5, grace=0.5)).run(dict(job, id="j6"), {"train.py": hang.encode()},
                                                               harness_digest="d")
    assert out["result"]["status"] == "timeout" and "lost" not in out, "the runner's own kill is a timeout"
