"""The worker's prepare step (no Ray): a failure is a structured PrepareFailed, with its output kept.

A prepare command that fails is the frozen harness's failure, not a candidate's: what the controller
needs from it (the command, the exit code, the output's tail, the whole output) must come back in
one piece, through pickle (Ray hands it over as ``RayTaskError.cause``), so the run can stop and say why.
"""

from __future__ import annotations

import pickle
import threading
import time
from pathlib import Path

import psutil
import pytest

from worker.actor import Worker
from worker.contract import PrepareFailed
from worker.runner import TAIL_LINES
from worker.settings import WorkerSettings

FILES = {"train.py": b"print('never run')\n", "prepare.py": b"# frozen\n"}


def worker(tmp: Path, prepare: list[str]) -> Worker:
    return Worker(WorkerSettings(name="10.0.0.1:gpu0", work_root=str(tmp / "work"), command=("python", "train.py"),
                                 prepare_command=tuple(prepare), budget=1.0, grace=5.0, cache_dir=str(tmp / "cache"),
                                 isolate_network=False, env={}, cpu_threads=1, device="cpu"))


def noisy_failure(lines: int) -> list[str]:
    """A prepare that prints ``lines`` numbered lines on stdout, then the reason on stderr, and exits 3."""
    return ["python", "-c", f"import sys\nfor i in range({lines}): print(f'note {{i:03d}}')\n"
            "sys.stdout.flush()\nprint('Tokenizer: need at least 2 data shards', file=sys.stderr)\nsys.exit(3)"]


def test_a_failed_prepare_raises_the_command_its_exit_code_the_tail_and_the_whole_log(tmp_path):
    w = worker(tmp_path, noisy_failure(80))
    with pytest.raises(PrepareFailed) as caught:
        w.prepare(FILES, "ab" * 32)
    e = caught.value
    assert e.exit_code == 3 and e.how == "exit 3" and e.worker == "10.0.0.1:gpu0"
    assert e.command == noisy_failure(80), "the command as configured, not the interpreter's path"
    tail = e.tail.splitlines()
    assert len(tail) == TAIL_LINES and tail[-1] == "Tokenizer: need at least 2 data shards"
    assert tail[0] == f"note {80 - TAIL_LINES + 1:03d}", "the last lines, stdout and stderr in order"
    log = Path(e.log_path)
    assert log == tmp_path / "work" / "10.0.0.1:gpu0" / "logs" / f"prepare-{'ab' * 6}.log"
    assert log.read_text() == e.log and e.log.startswith("note 000\n") and "need at least 2" in e.log
    assert "exit 3" in str(e) and "need at least 2 data shards" in str(e)
    again = pickle.loads(pickle.dumps(e))  # what Ray does to hand it to the controller
    assert (again.worker, again.command, again.exit_code, again.tail, again.log_path, again.log) == \
        (e.worker, e.command, e.exit_code, e.tail, e.log_path, e.log)
    assert w._prepared_digest is None, "a failed prepare is not cached: the next run tries again"


def test_a_prepare_that_cannot_start_is_a_prepare_failure_too(tmp_path):
    with pytest.raises(PrepareFailed) as caught:
        worker(tmp_path, ["no-such-prepare-program", "--x"]).prepare(FILES, "cd" * 32)
    assert caught.value.exit_code is None and caught.value.how == "did not start"
    assert "no-such-prepare-program" in caught.value.tail


def test_a_long_output_keeps_its_tail_within_the_limit(tmp_path):
    long_line = ["python", "-c", "import sys; print('x' * 100000); print('the end'); sys.exit(1)"]
    with pytest.raises(PrepareFailed) as caught:
        worker(tmp_path, long_line).prepare(FILES, "ef" * 32)
    assert len(caught.value.tail) <= 4096 and caught.value.tail.endswith("the end")


def test_a_prepare_that_succeeds_runs_once_per_harness(tmp_path):
    count = tmp_path / "count"
    w = worker(tmp_path, ["python", "-c", f"open({str(count)!r}, 'a').write('x')"])
    assert w.prepare(FILES, "01" * 32)["prepared"] is True
    assert w.prepare(FILES, "01" * 32)["prepared"] is False
    assert count.read_text() == "x"


def test_cancel_kills_a_prepare_in_progress_and_its_children(tmp_path):
    """A stopping farm does not wait out a long prepare (a download), nor leave it running."""
    token = f"prepare-sleeps-{time.time_ns()}"
    w = worker(tmp_path, ["python", "-c", "import subprocess, sys, time\n"
                          f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', {token!r}])\n"
                          "print('downloading', flush=True); time.sleep(60)"])
    errors: list[BaseException] = []
    t = threading.Thread(target=lambda: errors.extend(_raised(w.prepare, FILES, "23" * 32)))
    t.start()
    deadline = time.time() + 20
    while time.time() < deadline and not _with_token(token):
        time.sleep(0.05)
    assert _with_token(token), "the prepare's child started"
    t0 = time.time()
    w.cancel()
    t.join(10)
    assert not t.is_alive() and time.time() - t0 < 5
    assert isinstance(errors[0], PrepareFailed) and "cancelled" in errors[0].tail
    deadline = time.time() + 5
    while time.time() < deadline and _with_token(token):
        time.sleep(0.05)
    assert not _with_token(token), "the whole tree of the prepare was killed"


def _raised(fn, *args) -> list[BaseException]:
    try:
        fn(*args)
    except BaseException as e:  # noqa: BLE001 - handed to the test thread
        return [e]
    return []


def _with_token(token: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if token in (p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            continue
    return out
