"""The sandbox's ``hidden`` layer with real children (no mocks, no Ray).

A "data cache" in tmp_path holds the validation file and a directory of shards to hide, and a
training file that stays visible. Tests that depend on how the mount namespace is made run for
both ways this machine supports: ``unshare -m`` (root) and ``unshare -rm`` (user namespace).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import sys
import textwrap
from pathlib import Path

import pytest

import worker.sandbox
from worker.runner import RunOutcome, run_training
from worker.sandbox import _can_hide, scrubbed_env, start_sandboxed

pytestmark = pytest.mark.timeout(60)

SUMMARY = 'print("---\\nval_bpb:          0.997900\\ntraining_seconds: 1.0\\nnum_steps:        3")'

MODES = [
    pytest.param("-m", marks=pytest.mark.skipif(
        os.geteuid() != 0 or not _can_hide("-m"), reason="not root, or unshare -m + mount refused")),
    pytest.param("-rm", marks=pytest.mark.skipif(
        not _can_hide("-rm"), reason="unshare -rm + mount refused (no unprivileged user namespaces)")),
]

# What the child sees: the hidden file's content, the hidden directory's listing, the sibling's
# content, whether the untouched hidden file exists (a stat, not an open), and its uid map.
PEEK = textwrap.dedent("""
    import json, os, sys
    cache = sys.argv[1]
    seen = {"val": open(os.path.join(cache, "val.bin")).read(),
            "shards": os.listdir(os.path.join(cache, "shards")),
            "train": open(os.path.join(cache, "train.bin")).read(),
            "test_exists": os.path.exists(os.path.join(cache, "test.bin")),
            "uid_map": open("/proc/self/uid_map").read().split()}
    json.dump(seen, open("seen.json", "w"))
""")


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    c = tmp_path / "cache"
    (c / "shards").mkdir(parents=True)
    (c / "val.bin").write_text("VALIDATION")
    (c / "test.bin").write_text("TEST")
    (c / "train.bin").write_text("TRAIN")
    for i in range(3):
        (c / "shards" / f"shard_{i}.bin").write_text(f"S{i}")
    return c


@pytest.fixture
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Forces the namespace flag the layer uses (the probe's own choice is ``-m`` as root)."""
    monkeypatch.setattr(worker.sandbox, "hiding_available", lambda: request.param)
    return request.param


def _run(tmp_path: Path, body: str, *args: str, **kw) -> RunOutcome:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "train.py").write_text(body)
    return run_training([sys.executable, "train.py", *args], run, log_path=tmp_path / "run.log",
                        budget_s=20.0, grace_s=5.0, env_extra={}, poll_s=0.05, **kw)


def _intact(cache: Path) -> None:
    assert (cache / "val.bin").read_text() == "VALIDATION"
    assert (cache / "test.bin").read_text() == "TEST"
    assert sorted(os.listdir(cache / "shards")) == ["shard_0.bin", "shard_1.bin", "shard_2.bin"]


@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_hidden_file_and_directory_look_empty_and_reads_are_reported(tmp_path: Path, cache: Path,
                                                                      mode: str) -> None:
    out = _run(tmp_path, PEEK + SUMMARY + "\n", str(cache),
               hide=[cache / "val.bin", cache / "shards", cache / "test.bin"])
    assert out.status == "ok", out
    assert out.containment[-1] == "hidden", out.containment
    seen = json.loads((tmp_path / "run" / "seen.json").read_text())
    assert seen["val"] == "" and seen["shards"] == [] and seen["train"] == "TRAIN"
    assert seen["test_exists"], "a decoy stands where the hidden file was"
    if mode == "-rm":  # the child really ran in a user namespace (root there, us outside)
        assert seen["uid_map"] == ["0", str(os.geteuid()), "1"], seen["uid_map"]
    # exactly the opened/listed ones: test.bin was only stat'ed, train.bin is not hidden
    assert out.hidden_touched == sorted([str(cache / "val.bin"), str(cache / "shards")])
    assert "hidden_touched=" in (tmp_path / "run.log").read_text()
    _intact(cache)


@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_a_run_that_leaves_hidden_paths_alone_is_not_reported(tmp_path: Path, cache: Path,
                                                              mode: str) -> None:
    out = _run(tmp_path, textwrap.dedent(f"""
        import os, sys
        assert open(os.path.join(sys.argv[1], "train.bin")).read() == "TRAIN"
        {SUMMARY}
    """), str(cache), hide=[cache / "val.bin", cache / "shards"])
    assert out.status == "ok", out
    assert "hidden" in out.containment and out.hidden_touched == []


@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_hiding_and_network_isolation_share_one_unshare(tmp_path: Path, cache: Path,
                                                        mode: str) -> None:
    if worker.sandbox.network_isolation_available() is None:
        pytest.skip("no network isolation here: unshare -n (root) and unshare -rn both refused")
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        body = textwrap.dedent(f"""
            import socket
            print("val=" + repr(open({str(cache / "val.bin")!r}).read()))
            try:
                socket.create_connection(("127.0.0.1", {srv.getsockname()[1]}), timeout=2).close()
                print("CONNECTED")
            except OSError:
                print("BLOCKED")
        """)
        with open(tmp_path / "out.txt", "wb") as f, start_sandboxed(
                [sys.executable, "-c", body], tmp_path, scrubbed_env({}), f,
                isolate_network=True, hide=[cache / "val.bin"]) as sp:
            assert sp.wait_exit(20)
            unshares = [i for i, a in enumerate(sp.proc.args) if os.path.basename(a) == "unshare"]
            assert len(unshares) == 1, sp.proc.args
            assert sp.proc.args[unshares[0] + 1] == ("-nm" if mode == "-m" else "-rnm")
            net = "netns" if mode == "-m" else "userns-netns"
            assert sp.layers[1:] == [net, "hidden"] or sp.layers[1:] == [net, "memory.max", "hidden"]
            touched = sp.hidden_touched()
    assert (tmp_path / "out.txt").read_text().split() == ["val=''", "BLOCKED"]
    assert touched == [str(cache / "val.bin")]
    _intact(cache)


@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_decoys_are_private_fresh_and_removed_at_close(tmp_path: Path, cache: Path, mode: str) -> None:
    # a hidden path inside a hidden directory too: the inner one must be bound first
    hide = [cache / "shards", cache / "shards" / "shard_0.bin", cache / "val.bin"]
    with start_sandboxed([sys.executable, "-c", "import time; time.sleep(30)"], tmp_path,
                         scrubbed_env({}), None, hide=hide) as sp, \
            start_sandboxed(["true"], tmp_path, scrubbed_env({}), None, hide=hide) as other:
        d = sp.hide_dir
        assert d is not None and other.hide_dir not in (None, d)
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
        modes = sorted(stat.S_IMODE(p.stat().st_mode) for p in d.iterdir())
        assert modes == [0o444, 0o444, 0o555]
        assert other.wait_exit(10) and other.proc.wait() == 0, "the nested hide did not apply"
    assert not d.exists() and sp.hide_dir is None
    _intact(cache)


def test_unavailable_hiding_warns_and_runs_without_the_layer(
        tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(worker.sandbox, "hiding_available", lambda: None)
    with caplog.at_level(logging.WARNING, logger="worker.sandbox"):
        out = _run(tmp_path, PEEK + SUMMARY + "\n", str(cache), hide=[cache / "val.bin"])
    assert out.status == "ok", out
    assert "hidden" not in out.containment and out.hidden_touched == []
    assert json.loads((tmp_path / "run" / "seen.json").read_text())["val"] == "VALIDATION"
    assert any("cannot hide" in r.getMessage() and str(cache / "val.bin") in r.getMessage()
               for r in caplog.records), caplog.text


def test_missing_paths_are_skipped_and_no_hide_means_no_namespace(tmp_path: Path) -> None:
    with start_sandboxed(["true"], tmp_path, scrubbed_env({}), None,
                         hide=[tmp_path / "no-such-file"]) as sp:
        assert "hidden" not in sp.layers and sp.hide_dir is None
        assert not any(os.path.basename(a) == "unshare" for a in sp.proc.args)
        assert sp.wait_exit(10) and sp.hidden_touched() == []


def test_a_bind_that_fails_at_the_start_ends_the_run_unstarted(tmp_path: Path, cache: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    if worker.sandbox.hiding_available() is None:
        pytest.skip("no private mount namespace here (unshare -m/-rm + mount refused)")
    make = worker.sandbox._make_decoys

    def wrong_kind(paths):  # a directory decoy cannot be bound over a file
        tmp, decoys = make(paths)
        for d in decoys:
            d.unlink()
            d.mkdir()
        return tmp, decoys

    monkeypatch.setattr(worker.sandbox, "_make_decoys", wrong_kind)
    out = _run(tmp_path, 'open("started", "w")\n', hide=[cache / "val.bin"])
    assert out.status == "crash" and out.exit_code == 125, out
    assert f"cannot hide {cache / 'val.bin'}" in out.log_tail
    assert not (tmp_path / "run" / "started").exists()


UNMOUNT = textwrap.dedent("""
    import json, os, subprocess, sys
    cache = sys.argv[1]
    worker_root = f"/proc/{sys.argv[2]}/root" + os.path.join(cache, "val.bin")
    try:
        through_proc = open(worker_root).read()
    except OSError as e:
        through_proc = type(e).__name__
    um = subprocess.run(["umount", os.path.join(cache, "val.bin")], capture_output=True)
    json.dump({"umount": um.returncode, "val": open(os.path.join(cache, "val.bin")).read(),
               "through_proc": through_proc}, open("seen.json", "w"))
""")


@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_a_run_cannot_unmount_a_decoy_or_read_the_file_through_the_workers_root(tmp_path: Path, cache: Path,
                                                                               mode: str) -> None:
    if not worker.sandbox.locking_available(mode):
        pytest.skip("nested user namespaces refused here: hidden paths are not locked")
    out = _run(tmp_path, UNMOUNT + SUMMARY + "\n", str(cache), str(os.getpid()), hide=[cache / "val.bin"])
    assert out.status == "ok" and "hidden" in out.containment, out
    seen = json.loads((tmp_path / "run" / "seen.json").read_text())
    assert seen["umount"] != 0, "the decoy's mount is locked"
    assert seen["val"] == "", "and still covers the real file"
    assert seen["through_proc"] != "VALIDATION", "the worker's root is out of reach"
    _intact(cache)


def test_without_nested_user_namespaces_the_layer_says_it_is_unlocked(tmp_path: Path, cache: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    if worker.sandbox.hiding_available() is None:
        pytest.skip("no mount namespace here")
    monkeypatch.setattr(worker.sandbox, "locking_available", lambda flag: False)
    out = _run(tmp_path, UNMOUNT + SUMMARY + "\n", str(cache), str(os.getpid()), hide=[cache / "val.bin"])
    assert "hidden-unlocked" in out.containment and "hidden" not in out.containment
    seen = json.loads((tmp_path / "run" / "seen.json").read_text())
    assert seen["umount"] == 0 and seen["val"] == "VALIDATION", "unlocked: the gap the layer's name admits"


WRITE = textwrap.dedent("""
    import json, os, subprocess, sys
    cache = sys.argv[1]
    tries = {}
    for name, act in [("write", lambda: open(os.path.join(cache, "train.bin"), "w").write("X")),
                      ("create", lambda: open(os.path.join(cache, "new.bin"), "w").write("X")),
                      ("remount", lambda: subprocess.run(["mount", "-o", "remount,bind,rw", cache], check=True))]:
        try:
            act()
            tries[name] = "ok"
        except (OSError, subprocess.CalledProcessError) as e:
            tries[name] = type(e).__name__
    tries["write_after"] = "ok"
    try:
        open(os.path.join(cache, "train.bin"), "a").write("Y")
    except OSError as e:
        tries["write_after"] = type(e).__name__
    tries["val"] = open(os.path.join(cache, "val.bin")).read()
    json.dump(tries, open("seen.json", "w"))
""")


@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_a_read_only_path_cannot_be_written_or_made_writable_and_hiding_still_works_inside(
        tmp_path: Path, cache: Path, mode: str) -> None:
    out = _run(tmp_path, WRITE + SUMMARY + "\n", str(cache), readonly=[cache], hide=[cache / "val.bin"])
    assert out.status == "ok", (tmp_path / "run.log").read_text()
    seen = json.loads((tmp_path / "run" / "seen.json").read_text())
    assert seen["write"] != "ok" and seen["create"] != "ok", seen
    if worker.sandbox.locking_available(mode):
        assert seen["remount"] != "ok" and seen["write_after"] != "ok", "locked: it stays read-only"
        assert {"read-only", "hidden"} <= set(out.containment)
    assert seen["val"] == "" and out.hidden_touched == [str(cache / "val.bin")]
    assert (cache / "train.bin").read_text() == "TRAIN" and not (cache / "new.bin").exists()
    _intact(cache)
