"""Kill layers ``cgroup`` and ``process-tracking``, and layer ``memory.max``: the run's own cgroup v2
(joined before the command execs, killed with ``cgroup.kill`` or freeze + SIGKILL, then removed),
the process-tree sweep that backs it up or replaces it, and :class:`SandboxedProcess`, the handle
on a started run and everything it spawned."""

from __future__ import annotations

import functools
import logging
import os
import select
import signal
import struct
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from worker.sandbox.env import TOKEN_VAR
from worker.sandbox.namespaces import IN_Q_OVERFLOW, _drop_decoys

log = logging.getLogger(__name__)

_CG_PREFIX = "autoresearch-run-"
_JOIN_CGROUP = (  # $1: cgroup.procs of the run's cgroup, then the command
    'echo $$ > "$1" 2>/dev/null || echo "autoresearch-sandbox: could not join cgroup" >&2; '
    'shift; exec "$@"'
)


def _own_cgroup_dir() -> Path | None:
    try:
        rel = next(ln[3:] for ln in Path("/proc/self/cgroup").read_text().splitlines()
                   if ln.startswith("0::"))
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except (OSError, StopIteration):
        return None
    for ln in mounts:
        pre, _, post = ln.partition(" - ")
        if not post.startswith("cgroup2 "):
            continue
        root, mnt = (f.encode().decode("unicode_escape") for f in pre.split()[3:5])
        if rel == root or rel.startswith(root.rstrip("/") + "/"):
            d = Path(mnt) / rel[len(root):].lstrip("/")
            if (d / "cgroup.procs").exists():
                return d
    return None


@functools.lru_cache(maxsize=1)
def cgroup_base() -> Path | None:
    """Our own cgroup v2 directory when a child cgroup can be made there, else None. Probed once."""
    base = _own_cgroup_dir()
    if base is None or not os.access(base, os.W_OK):
        log.info("cgroup containment unavailable: no writable cgroup v2 (%s)", base)
        return None
    probe = base / f"autoresearch-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        probe.mkdir()
        ok = (probe / "cgroup.procs").exists()
        probe.rmdir()
    except OSError as e:
        log.info("cgroup containment unavailable: %s", e)
        return None
    return base if ok else None


def _write(path: Path, value: str) -> bool:
    try:
        path.write_text(value)
        return True
    except OSError as e:
        log.debug("cannot write %s to %s: %s", value, path, e)
        return False


def _procs(cg: Path) -> list[int]:
    try:
        return [int(x) for x in (cg / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _memory_limit(base: Path, cg: Path, limit: int) -> bool:
    try:
        enabled = "memory" in (base / "cgroup.subtree_control").read_text().split()
        available = "memory" in (base / "cgroup.controllers").read_text().split()
    except OSError:
        return False
    if not enabled:
        if not available:
            return False
        _write(base / "cgroup.subtree_control", "+memory")  # EBUSY if base holds processes
    if not (cg / "memory.max").exists() or not _write(cg / "memory.max", str(int(limit))):
        return False
    if (cg / "memory.swap.max").exists():
        _write(cg / "memory.swap.max", "0")
    return True


@dataclass
class SandboxedProcess:
    """A started command and everything it may spawn. Use as a context manager, or call close()."""

    proc: subprocess.Popen[bytes]
    token: str
    layers: list[str]  # first the kill layer ("cgroup" | "process-tracking"), then the others
    cgroup: Path | None = None
    hide_dir: Path | None = None  # the run's decoys (layer "hidden")
    _seen: dict[int, float] = field(default_factory=dict)  # descendant pid -> create time
    _pidfd: int | None = None
    _inotify: int | None = None
    _watches: dict[int, str] = field(default_factory=dict)  # watch descriptor -> hidden path
    _touched: set[str] = field(default_factory=set)
    _canaries: set[str] = field(default_factory=set)  # watched paths that are canaries, not hidden data
    _status_fd: int | None = None  # the view's init reports the command's wait status here
    _status: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __enter__(self) -> SandboxedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_exit(self, timeout: float) -> bool:
        """Whether the main process has exited, waiting up to ``timeout`` s. Does NOT reap it, so
        its pid (and process group id) cannot be reused until :meth:`reap`."""
        if self.proc.returncode is not None:
            return True
        if self._pidfd is not None and timeout > 0:
            poller = select.poll()
            poller.register(self._pidfd, select.POLLIN)
            poller.poll(max(0, int(timeout * 1000)))
        elif timeout > 0:
            time.sleep(timeout)
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def track(self) -> None:
        """Remember the current descendants (cheap; helps the process-tracking kill)."""
        for pid, ctime in _descendants(self.pid):
            self._seen.setdefault(pid, ctime)

    def _tracked(self) -> set[int]:
        me, found = os.getpid(), set()
        needle = f"{TOKEN_VAR}={self.token}".encode()
        for pid in psutil.pids():
            if pid == me:
                continue
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        found.add(pid)
            except OSError:
                continue
        for pid, ctime in list(self._seen.items()):
            try:
                p = psutil.Process(pid)
                if p.create_time() == ctime and p.status() != psutil.STATUS_ZOMBIE:
                    found.add(pid)
                    continue
            except psutil.Error:
                pass
            del self._seen[pid]
        if self.proc.returncode is None:
            found.update(pid for pid, _ in _descendants(self.pid))
        return found

    def kill_tree(self, timeout: float = 10.0) -> bool:
        """SIGKILL everything the command started (its main process included); True when none
        is left. The main process is not reaped here (see :meth:`reap`)."""
        deadline = time.monotonic() + timeout
        if self.cgroup is not None:
            has_kill = (self.cgroup / "cgroup.kill").exists()
            while pids := _procs(self.cgroup):
                if not (has_kill and _write(self.cgroup / "cgroup.kill", "1")):
                    _write(self.cgroup / "cgroup.freeze", "1")
                    for pid in pids:
                        _kill(pid)
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
        while True:  # the process-tracking sweep: the fallback, and the cgroup's backstop
            if self.proc.returncode is None:  # leader unreaped: its pgid cannot have been reused
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            victims = self._tracked()
            for pid in victims:
                _kill(pid)
            if not victims:
                return True
            if time.monotonic() > deadline:
                log.error("run %s: processes survive SIGKILL: %s", self.token, sorted(victims))
                return False
            time.sleep(0.01)

    def reap(self, timeout: float = 30.0) -> int | None:
        """Collect the main process's exit status (its returncode, negative for a signal). In a view
        that is the command's own, as its namespace's init reported it (the init's where it had none
        to report: killed with the whole tree)."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.error("run %s: pid %d does not die (stuck in the kernel?)", self.token, self.pid)
            return None
        if self._status_fd is not None:
            os.set_blocking(self._status_fd, False)
            try:
                data = os.read(self._status_fd, 64)
            except OSError:
                data = b""
            os.close(self._status_fd)
            self._status_fd = None
            if data.strip().isdigit():
                self._status = os.waitstatus_to_exitcode(int(data.strip()))
        return self._status if self._status is not None else code

    def hidden_touched(self) -> list[str]:
        """The hidden paths (as given in ``hide``) whose decoy was opened, read or listed so far;
        [] without the layer or without inotify."""
        return sorted(self._seen_decoys() - self._canaries)

    def denied(self) -> list[str]:
        """The view's canaries (credential paths) the run listed or opened so far."""
        return sorted(self._seen_decoys() & self._canaries)

    def _seen_decoys(self) -> set[str]:
        while self._inotify is not None:
            try:
                buf = os.read(self._inotify, 65536)
            except BlockingIOError:
                break
            off = 0
            while off + 16 <= len(buf):  # struct inotify_event: int wd; u32 mask, cookie, len
                wd, mask, _, n = struct.unpack_from("iIII", buf, off)
                off += 16 + n
                if mask & IN_Q_OVERFLOW:  # only decoys are watched: something was touched
                    log.warning("run %s: inotify queue overflow; counting every hidden path "
                                "as touched", self.token)
                    self._touched.update(self._watches.values())
                elif wd in self._watches:
                    self._touched.add(self._watches[wd])
        return set(self._touched)

    def oom_kills(self) -> int:
        """How many processes the cgroup's memory limit killed (0 without one)."""
        try:
            for ln in (self.cgroup / "memory.events").read_text().splitlines():  # type: ignore[operator]
                if ln.startswith("oom_kill "):
                    return int(ln.split()[1])
        except (OSError, TypeError, ValueError):
            pass
        return 0

    def close(self) -> None:
        """Kill whatever is left, reap the main process, remove the cgroup and the decoys (what
        :meth:`hidden_touched` saw stays). Idempotent."""
        self.kill_tree()
        self.reap()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        self._seen_decoys()
        _drop_decoys(self.hide_dir, self._inotify)
        self.hide_dir = self._inotify = None
        if self.cgroup is not None and self.cgroup.exists():
            _remove_cgroup(self.cgroup)


def _descendants(pid: int) -> list[tuple[int, float]]:
    """(pid, create time) of every live descendant of ``pid``; [] when it is gone."""
    out = []
    try:
        for c in psutil.Process(pid).children(recursive=True):
            try:
                out.append((c.pid, c.create_time()))
            except psutil.Error:
                continue
    except psutil.Error:
        pass
    return out


def _remove_cgroup(cg: Path, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:  # candidate code running as root may have made sub-cgroups: bottom-up
            for d, _, _ in sorted(os.walk(cg), key=lambda t: -len(t[0])):
                os.rmdir(d)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if time.monotonic() > deadline:
                log.error("cannot remove cgroup %s: %s", cg, e)
                return
            time.sleep(0.02)
