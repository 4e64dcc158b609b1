"""worker.runner / worker.sandbox with real subprocesses (no mocks, no Ray).

Each test writes a small "training script" to tmp_path and runs it through run_training.
Tests that depend on a containment layer run for every layer this machine has; the
process-tracking fallback always runs, forced, even where cgroups work.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from worker.runner import RunOutcome, run_training
from worker.sandbox import (
    SandboxError, cgroup_base, network_isolation_available, scrubbed_env, start_sandboxed,
)

pytestmark = pytest.mark.timeout(60)

SUMMARY = 'print("---\\nval_bpb:          0.997900\\ntraining_seconds: 1.0\\nnum_steps:        3")'

LAYERS = [
    pytest.param("cgroup", marks=pytest.mark.skipif(
        cgroup_base() is None, reason="no writable cgroup v2 on this machine")),
    "process-tracking",
]


def _run(tmp_path: Path, body: str, **kw) -> RunOutcome:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(body))
    args = dict(log_path=tmp_path / "logs" / "run.log", budget_s=20.0, grace_s=5.0,
                env_extra={"AUTORESEARCH_TIME_BUDGET": "20"}, poll_s=0.05)
    args.update(kw)
    return run_training([sys.executable, str(script)], tmp_path, **args)  # type: ignore[arg-type]


def _alive(pid: int) -> bool:
    """A zombie is dead for our purposes (it holds no memory and no GPU; init reaps it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_for(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def _pids(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def test_ok_run_parses_summary_logs_and_reports_progress(tmp_path: Path) -> None:
    seen: list[str] = []
    out = _run(tmp_path, f"""
        print("step 1 | loss 4.2")
        {SUMMARY}
    """, on_progress=seen.append)
    assert out.status == "ok", out
    assert out.exit_code == 0 and out.reason == "" and not out.timed_out
    assert out.summary == {"val_bpb": 0.9979, "training_seconds": 1.0, "num_steps": 3}
    assert 0 < out.wall_seconds < 20
    assert out.containment and out.containment[0] in ("cgroup", "process-tracking")
    assert "step 1 | loss 4.2" in "\n".join(seen)
    text = (tmp_path / "logs" / "run.log").read_text()
    assert "step 1 | loss 4.2" in text and "status=ok" in text
    assert "val_bpb:          0.997900" in out.log_tail


def test_crash_keeps_the_traceback_in_the_log_tail(tmp_path: Path) -> None:
    out = _run(tmp_path, """
        def train():
            raise RuntimeError("boom-1234: shapes do not match")
        train()
    """)
    assert out.status == "crash" and out.exit_code == 1 and out.reason == "exit code 1"
    assert "Traceback (most recent call last)" in out.log_tail
    assert "boom-1234" in out.log_tail


def test_crash_by_signal_names_it(tmp_path: Path) -> None:
    out = _run(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert out.status == "crash" and out.exit_code == -signal.SIGKILL
    assert out.reason == "killed by signal SIGKILL"


def test_exit_zero_without_summary_is_no_metric(tmp_path: Path) -> None:
    out = _run(tmp_path, 'print("trained, but forgot to evaluate")')
    assert out.status == "no-metric" and out.summary is None
    assert out.reason == "no summary block in the output"


def test_exit_zero_with_nan_is_no_metric(tmp_path: Path) -> None:
    out = _run(tmp_path, 'print("---\\nval_bpb: nan\\nnum_steps: 3")')
    assert out.status == "no-metric" and "not finite" in out.reason


def test_appended_log_never_reuses_an_earlier_runs_summary(tmp_path: Path) -> None:
    assert _run(tmp_path, SUMMARY).status == "ok"
    second = _run(tmp_path, 'print("no summary this time")')
    assert second.status == "no-metric" and second.summary is None
    assert (tmp_path / "logs" / "run.log").read_text().count("=== autoresearch run start") == 2


def test_timeout_kills_a_hung_script_within_the_deadline(tmp_path: Path) -> None:
    t0 = time.monotonic()
    out = _run(tmp_path, """
        import time
        print("hanging", flush=True)
        time.sleep(120)
    """, budget_s=1.0, grace_s=0.5)
    elapsed = time.monotonic() - t0
    assert out.status == "timeout" and out.timed_out
    assert out.exit_code == -signal.SIGKILL
    assert 1.5 <= out.wall_seconds and elapsed < 1.5 + 2.0
    assert "hanging" in out.log_tail


ESCAPERS = textwrap.dedent("""
    import os, subprocess, sys, time
    pids = os.path.join(os.getcwd(), "pids.txt")
    # a grandchild in its own session (setsid) ...
    g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                         start_new_session=True)
    # ... and a classic double-forked daemon, reparented away from us
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            with open(pids, "a") as f:
                f.write(f"{os.getpid()}\\n")
            time.sleep(120)
        os._exit(0)
    os.wait()
    while len(open(pids).read().split()) < 1:
        time.sleep(0.01)
    with open(pids, "a") as f:
        f.write(f"{g.pid}\\n{os.getpid()}\\n")
    with open(os.path.join(os.getcwd(), "token.txt"), "w") as f:
        f.write(os.environ.get("AUTORESEARCH_RUN_TOKEN", ""))
    print("escapers ready", flush=True)
""")


@pytest.mark.parametrize("layer", LAYERS)
def test_timeout_kills_setsid_grandchild_and_double_forked_daemon(tmp_path: Path, layer: str) -> None:
    (tmp_path / "pids.txt").touch()
    out = _run(tmp_path, ESCAPERS + "time.sleep(120)\n", budget_s=1.5, grace_s=0.5,
               containment=layer)
    assert out.status == "timeout" and out.containment[0] == layer
    pids = _pids(tmp_path / "pids.txt")
    assert len(pids) == 3, "the script did not get to start its escapers"
    assert _wait_for(lambda: not any(_alive(p) for p in pids)), [p for p in pids if _alive(p)]


def _own_cgroup(tmp_path: Path) -> Path:
    """The cgroup of the run whose script wrote its token to tmp_path/token.txt (other tests, or
    other farms on this machine, may run cgroups of their own at the same time)."""
    return cgroup_base() / f"autoresearch-run-{(tmp_path / 'token.txt').read_text().strip()}"  # type: ignore[operator]


@pytest.mark.parametrize("layer", LAYERS)
def test_leftover_background_processes_die_after_a_normal_exit(tmp_path: Path, layer: str) -> None:
    (tmp_path / "pids.txt").touch()
    out = _run(tmp_path, ESCAPERS + SUMMARY + "\n", containment=layer)
    assert out.status == "ok", out
    pids = _pids(tmp_path / "pids.txt")
    assert len(pids) == 3
    assert _wait_for(lambda: not any(_alive(p) for p in pids)), [p for p in pids if _alive(p)]
    if layer == "cgroup":
        assert (tmp_path / "token.txt").read_text().strip(), "the run's token reached it"
        assert not _own_cgroup(tmp_path).exists(), "cgroup not removed"


def test_environment_is_scrubbed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {"OPENAI_API_KEY": "sk-x", "REDIS_URL": "redis://h:6379", "RAY_ADDRESS": "h:6379",
               "AWS_SECRET_ACCESS_KEY": "a", "HF_TOKEN": "hf", "GITHUB_TOKEN": "gh",
               "PYTHONPATH": "/farm/src", "LD_PRELOAD": "/evil.so"}
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/cache/inductor")
    out = _run(tmp_path, f"""
        import json, os
        json.dump(dict(os.environ), open("env.json", "w"))
        {SUMMARY}
    """, env_extra={"AUTORESEARCH_TIME_BUDGET": "300"})
    assert out.status == "ok"
    env = json.loads((tmp_path / "env.json").read_text())
    assert not set(secrets) & set(env), set(secrets) & set(env)
    assert env["AUTORESEARCH_TIME_BUDGET"] == "300"
    assert env["CUDA_VISIBLE_DEVICES"] == "3"
    assert env["TORCHINDUCTOR_CACHE_DIR"] == "/cache/inductor"
    assert len(env["AUTORESEARCH_RUN_TOKEN"]) == 32
    assert env["PATH"] == os.environ["PATH"]


def test_scrubbed_env_deny_list_beats_a_permissive_allow_list() -> None:
    base = {"PATH": "/bin", "OPENAI_API_KEY": "k", "DB_PASSWORD": "p", "RAY_ADDRESS": "a",
            "MY_SECRET_THING": "s", "REDIS_HOST": "r", "HARMLESS": "ok"}
    env = scrubbed_env({"AUTORESEARCH_TIME_BUDGET": "5"}, allow=("*",), base=base)
    assert env == {"PATH": "/bin", "HARMLESS": "ok", "AUTORESEARCH_TIME_BUDGET": "5"}
    assert scrubbed_env({}, base=base) == {"PATH": "/bin"}  # HARMLESS is not on the allow-list


def test_cancel_kills_the_run_and_says_cancelled(tmp_path: Path) -> None:
    cancel = threading.Event()
    started = tmp_path / "started"

    def canceller() -> None:
        _wait_for(started.exists, 10)
        cancel.set()

    th = threading.Thread(target=canceller, daemon=True)
    th.start()
    t0 = time.monotonic()
    out = _run(tmp_path, """
        import os, time
        open("started", "w").write(str(os.getpid()))
        time.sleep(120)
    """, cancel=cancel)
    th.join(5)
    assert out.status == "crash" and out.reason == "cancelled" and not out.timed_out
    assert time.monotonic() - t0 < 10
    assert not _alive(int(started.read_text()))


def test_runaway_log_is_stopped(tmp_path: Path) -> None:
    out = _run(tmp_path, """
        while True:
            print("x" * 1000)
    """, max_log_bytes=200_000)
    assert out.status == "crash" and "log exceeded" in out.reason
    assert (tmp_path / "logs" / "run.log").stat().st_size < 50_000_000


def test_forcing_an_unavailable_layer_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        start_sandboxed(["true"], tmp_path, {}, None, containment="chroot")
    if cgroup_base() is None:
        with pytest.raises(SandboxError):
            start_sandboxed(["true"], tmp_path, {}, None, containment="cgroup")


NET_PROBE = textwrap.dedent("""
    import socket
    try:
        socket.create_connection(("127.0.0.1", PORT), timeout=2).close()
        print("CONNECTED")
    except OSError as e:
        print("BLOCKED", e)
""")


def test_network_isolation_blocks_the_host_loopback(tmp_path: Path) -> None:
    layer = network_isolation_available()
    if layer is None:
        pytest.skip("no network isolation here: unshare -n (root) and unshare -rn both refused")
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        body = NET_PROBE.replace("PORT", str(srv.getsockname()[1])) + SUMMARY + "\n"
        control = _run(tmp_path, body)  # proves the probe can see the server at all
        isolated = _run(tmp_path, body, isolate_network=True)
    assert "CONNECTED" in control.log_tail, control.log_tail
    assert isolated.status == "ok", isolated
    assert "BLOCKED" in isolated.log_tail and "CONNECTED" not in isolated.log_tail.split("BLOCKED")[-1]
    assert layer in isolated.containment


def test_memory_limit_when_the_cgroup_has_a_memory_controller(tmp_path: Path) -> None:
    if cgroup_base() is None:
        pytest.skip("no writable cgroup v2: the fallback has no memory cap (by design)")
    probe = _run(tmp_path, SUMMARY, memory_limit_bytes=256 * 2**20)
    if "memory.max" not in probe.containment:
        pytest.skip("cgroup v2 here has no memory controller delegated (hybrid or v1 memory)")
    out = _run(tmp_path, """
        chunks = []
        while True:
            chunks.append(bytearray(16 * 2**20))
    """, memory_limit_bytes=128 * 2**20)
    assert out.status == "crash" and "out of memory" in out.reason


def test_cgroup_layer_alone_holds_every_escaper(tmp_path: Path) -> None:
    """The cgroup, not the process-tracking backstop, is what holds the escapers in cgroup mode."""
    base = cgroup_base()
    if base is None:
        pytest.skip("no writable cgroup v2 on this machine")
    (tmp_path / "pids.txt").touch()
    (tmp_path / "train.py").write_text(ESCAPERS + "time.sleep(120)\n")
    with start_sandboxed([sys.executable, "train.py"], tmp_path, scrubbed_env({}), None,
                         containment="cgroup") as sp:
        assert sp.layers == ["cgroup"] and sp.cgroup is not None
        assert _wait_for(lambda: len(_pids(tmp_path / "pids.txt")) == 3, 10)
        pids = _pids(tmp_path / "pids.txt")
        members = {int(x) for x in (sp.cgroup / "cgroup.procs").read_text().split()}
        assert set(pids) <= members, (pids, members)
        assert sp.kill_tree()
        cg = sp.cgroup
    assert _wait_for(lambda: not any(_alive(p) for p in pids))
    assert not cg.exists()


@pytest.mark.parametrize("layer", LAYERS)
def test_a_missing_command_raises_instead_of_blaming_the_candidate(tmp_path: Path, layer: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import uuid

    import worker.sandbox

    known = uuid.UUID("0123456789abcdef0123456789abcdef")
    monkeypatch.setattr(worker.sandbox.uuid, "uuid4", lambda: known)  # so this run's cgroup has a known name
    with pytest.raises(FileNotFoundError):
        run_training(["no-such-trainer-xyz"], tmp_path, log_path=tmp_path / "run.log", budget_s=5,
                     grace_s=1, env_extra={}, containment=layer)
    if layer == "cgroup":
        assert not (cgroup_base() / f"autoresearch-run-{known.hex}").exists()  # type: ignore[operator]


def test_a_run_that_fills_its_directory_past_the_quota_is_killed(tmp_path):
    body = ("import time\n"
            "for i in range(200):\n"
            "    open(f'blob{i}', 'wb').write(b'x' * 2**20)\n"
            "    time.sleep(0.01)\n"
            "time.sleep(30)\n")
    (tmp_path / "train.py").write_text(body)
    out = run_training([sys.executable, "train.py"], tmp_path, log_path=tmp_path / "log", budget_s=20.0, grace_s=5.0,
                       env_extra={}, poll_s=0.05, disk_quota_bytes=8 * 2**20)
    assert out.status == "crash" and "exceeded the disk quota of 8388608 bytes" in out.reason, out
    assert out.wall_seconds < 10, "killed at the quota, not at the deadline"
    assert sum(p.stat().st_size for p in tmp_path.glob("blob*")) < 100 * 2**20
