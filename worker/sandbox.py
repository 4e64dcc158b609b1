"""Containment for one candidate's training process (code written by an LLM: buggy, maybe hostile).

Layers, and when each is used
-----------------------------
``env`` (always)
    :func:`scrubbed_env` builds the child's environment from an *allow*-list, so API keys, Redis and
    Ray addresses/credentials of the worker never reach candidate code. A deny-list (``*_KEY``,
    ``*_TOKEN``, ``AWS_*``, ``REDIS_*``, ``RAY_*``, ...) is applied on top of the allow-list as a
    safety net. Not covered: anything readable on disk (``~/.aws``, the farm's config files) or
    through ``/proc/<worker pid>/environ`` of a same-user process. ``PYTHONPATH`` is *not* passed
    on: the worker's points into the farm's own code and venv (Ray, Redis clients); the training
    script must resolve its imports from its own environment (``uv run``), which also keeps runs
    reproducible across workers. A deployment that needs one passes it in ``extra``.
``cgroup`` (kill layer; preferred)
    When cgroup v2 is mounted and our own cgroup is writable (probed once, lazily, then cached),
    each run gets a child cgroup ``autoresearch-run-<token>``. The command joins it *before* it
    execs (a tiny ``sh`` wrapper writes ``$$`` to ``cgroup.procs``, so no fork can race ahead),
    and everything it starts stays in it whatever ``setsid()``/double-fork tricks it plays.
    Killing is ``cgroup.kill`` (Linux >= 5.14) or freeze + SIGKILL of ``cgroup.procs``, repeated
    until the cgroup is empty; then the cgroup is removed. With ``memory_limit_bytes`` and the
    memory controller delegated to our cgroup, ``memory.max`` (and ``memory.swap.max=0``) caps the
    whole tree (layer ``memory.max``). Not covered: a process running as root can move itself to
    another cgroup; the ``process-tracking`` sweep below still runs afterwards as a backstop.
``process-tracking`` (kill layer; fallback, or forced with ``containment="process-tracking"``)
    The child's environment carries ``AUTORESEARCH_RUN_TOKEN=<uuid>``, inherited by everything it
    starts. Killing SIGKILLs, until none is left: the process group (safe from pid reuse because
    the leader is not reaped until after the kill), every descendant seen while polling
    (:meth:`SandboxedProcess.track`, pids checked against their start time), and every process
    whose ``/proc/<pid>/environ`` carries the token. Not covered: a process that both escaped the
    tree before a poll saw it *and* exec'd with a fresh environment (``env -i``); no memory cap.
``netns`` / ``userns-netns`` (optional, ``isolate_network=True``)
    The command runs under ``unshare -n`` (root) or ``unshare -rn`` (unprivileged user
    namespaces), with ``lo`` brought up when ``ip`` exists, so candidate code can reach neither
    the Internet nor services of the host (Redis, the Ray GCS, other workers). Availability is
    probed once (:func:`network_isolation_available`). Requested but unavailable is an error
    (:class:`SandboxError`), not a silent downgrade. Not covered: UNIX sockets on the filesystem
    (Ray's ``/tmp/ray/session_*/sockets``, a Redis socket), shared memory, the GPU itself.
``hidden`` (optional, ``hide=[paths]``)
    Each existing path in ``hide`` (the validation data in the data cache, say) is covered, for
    the child only, by an empty decoy bind-mounted over it in a private mount namespace: an empty
    read-only file over a file, an empty directory over a directory. The namespace comes from
    ``unshare -m`` (root) or ``unshare -rm`` (user namespace), the same single ``unshare`` as the
    network layer when both are used (``-nm`` / ``-rnm``); util-linux makes its mount propagation
    private, so nothing shows outside. Decoys are made fresh for each run in a private (0700)
    temporary directory, removed at close, and watched with inotify from before the start; as
    only this run's namespace has them bound, :meth:`SandboxedProcess.hidden_touched` names the
    hidden paths this run opened, read or listed (a ``stat`` or ``exists`` goes unseen).
    A bind that fails at the start ends the run (exit 125) instead of running it unhidden.
    Availability is probed once, with a real bind mount (:func:`hiding_available`). Requested but
    unavailable is a logged warning, not an error, and ``hidden`` is then absent from the layers;
    without inotify the paths are hidden but touches go unreported. Not covered: paths not listed
    (a copy of the data elsewhere, a cache derived from it); a process that reaches a mount
    namespace outside. Locking: the prelude that made the bind mounts execs the command through a
    second, nested ``unshare -rm``; the kernel locks mounts copied into a less privileged user
    namespace, so ``umount <path>`` fails, and the command is root only inside that namespace
    (``/proc/<worker pid>/root`` and ``nsenter`` into the worker's namespaces are refused). Where a
    nested user namespace is refused, the paths are still hidden but not locked (the layer is
    then ``hidden-unlocked``, and a run that unmounts a decoy reads the real file unseen).
``read-only`` (optional, ``readonly=[paths]``)
    In the same mount namespace, each path becomes a read-only bind mount of itself before the
    decoys go on top, and the same nested user namespace locks it (``read-only-unlocked`` where it
    cannot): the prepared data a run reads, which a run that wrote to it would change for every
    later candidate. Not covered: without a mount namespace, nothing (the worker's before/after
    check of the data is the backstop).

Memory without a cgroup: none, deliberately. ``RLIMIT_AS`` breaks CUDA (the driver reserves
terabytes of virtual address space); ``RLIMIT_DATA`` counts private writable mappings (pinned
host buffers, allocator arenas) and is per process, so a child escapes it anyway. The host's
OOM killer is the backstop, and the tree is killed at the end of every run. cgroup v1 (and the
v1 memory controller of "hybrid" hosts, whose v2 tree has no controllers) is not used: v2's
``cgroup.kill`` and single tree are what make the kill layer simple and race-free.

What none of this is: a security boundary against a determined attacker. Candidate code runs
as the worker's user (often root in a container) and could, e.g., ptrace or signal the worker,
write outside the checkout, or leave a cron job. The layers above stop *accidents* and cheap
tricks: leaked secrets, stray network calls, processes that outlive their run and hold the GPU.
Real isolation needs a dedicated unprivileged user or a container per run.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import select
import shlex
import shutil
import signal
import struct
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import IO, Any

import psutil


log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ALLOW", "DENY", "TOKEN_VAR", "SandboxError", "SandboxedProcess", "cgroup_base",
    "hiding_available", "network_isolation_available", "scrubbed_env", "start_sandboxed",
]

TOKEN_VAR = "AUTORESEARCH_RUN_TOKEN"

#: Names (``fnmatch`` patterns) passed from the worker to candidate code, and why.
DEFAULT_ALLOW: tuple[str, ...] = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR",  # basics
    "VIRTUAL_ENV", "LD_LIBRARY_PATH",  # NVIDIA images find libcuda through LD_LIBRARY_PATH
    "CUDA_*", "NVIDIA_*", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES",  # Ray sets the GPU here
    "TORCH_*", "TORCHINDUCTOR_*", "PYTORCH_*", "TRITON_*",  # compile caches, allocator config
    "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
    "XDG_CACHE_HOME", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
    "UV_CACHE_DIR", "UV_PYTHON_INSTALL_DIR", "UV_PROJECT_ENVIRONMENT", "UV_NO_SYNC",
    "UV_OFFLINE", "UV_FROZEN", "UV_LINK_MODE",  # `uv run train.py`, without index credentials
    "AUTORESEARCH_*",  # the farm's own knobs for train.py
)

#: Never passed on from the worker, even when an allow pattern matches (``extra`` is not filtered).
DENY: tuple[str, ...] = (
    "*_KEY", "*_KEYS", "*API_KEY*", "*_TOKEN", "*_TOKENS", "*SECRET*", "*PASSWORD*", "*PASSWD*",
    "*_CREDENTIALS", "*_AUTH", "AWS_*", "REDIS_*", "RAY_*", TOKEN_VAR,
)

_CG_PREFIX = "autoresearch-run-"
_JOIN_CGROUP = (  # $1: cgroup.procs of the run's cgroup, then the command
    'echo $$ > "$1" 2>/dev/null || echo "autoresearch-sandbox: could not join cgroup" >&2; '
    'shift; exec "$@"'
)
_LO_UP = "ip link set lo up 2>/dev/null; "
IN_ACCESS, IN_OPEN, IN_Q_OVERFLOW = 0x1, 0x20, 0x4000  # <sys/inotify.h>


class SandboxError(RuntimeError):
    """A requested containment layer is not available on this machine."""


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


def scrubbed_env(
    extra: Mapping[str, str],
    allow: tuple[str, ...] = DEFAULT_ALLOW,
    *,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment for candidate code: ``base`` (default ``os.environ``) filtered through
    ``allow`` minus :data:`DENY`, then ``extra`` on top, unfiltered (the caller's own choice)."""
    src = os.environ if base is None else base
    env = {k: v for k, v in src.items() if _matches(k, allow) and not _matches(k, DENY)}
    for k in extra:
        if _matches(k, DENY):
            log.warning("passing %s to candidate code explicitly, though it looks secret", k)
    env.update(extra)
    return env


def _sh() -> str:
    return "/bin/sh" if os.path.exists("/bin/sh") else (shutil.which("sh") or "sh")


@functools.lru_cache(maxsize=1)
def network_isolation_available() -> str | None:
    """The network layer this machine supports (``netns``/``userns-netns``), or None. Probed once."""
    unshare = shutil.which("unshare")
    if unshare is None:
        log.info("network isolation unavailable: no unshare binary")
        return None
    tries = ([("netns", "-n")] if os.geteuid() == 0 else []) + [("userns-netns", "-rn")]
    for layer, flag in tries:
        try:
            r = subprocess.run([unshare, flag, "--", _sh(), "-c", "exit 0"],
                               capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError) as e:
            log.debug("unshare %s failed: %s", flag, e)
            continue
        if r.returncode == 0:
            return layer
        log.debug("unshare %s: %s", flag, r.stderr.decode(errors="replace").strip())
    log.info("network isolation unavailable: unshare -n/-rn refused")
    return None


def _unshare_prefix(flags: str, lo_up: bool, binds: Mapping[Path, Path], lock: bool = False,
                    readonly: Sequence[Path] = ()) -> list[str]:
    """``unshare -<flags>``, then an ``sh`` prelude that brings ``lo`` up, makes each ``readonly``
    path a read-only bind of itself and bind-mounts each decoy over its hidden path (failing
    closed: exit 125) before it execs the command; with ``lock``, through a nested ``unshare -rm``,
    whose copy of the mounts the command can neither undo nor make writable again."""
    q = shlex.quote
    mount = q(shutil.which("mount") or "mount")

    def fail(what: str) -> str:
        return f" || {{ echo {q(f'autoresearch-sandbox: cannot {what}')} >&2; exit 125; }}; "

    script = (_LO_UP if lo_up else "") + "".join(
        f"{mount} --bind {q(os.path.abspath(p))} {q(os.path.abspath(p))} && "
        f"{mount} -o remount,bind,ro {q(os.path.abspath(p))}" + fail(f"make {p} read-only")
        for p in readonly) + "".join(
        f"{mount} --bind {q(str(d))} {q(os.path.abspath(p))}" + fail(f"hide {p}") for d, p in binds.items())
    unshare = shutil.which("unshare") or "unshare"
    run = f"exec {q(unshare)} -rm -- \"$@\"" if lock and (binds or readonly) else 'exec "$@"'
    return [unshare, f"-{flags}", "--"] + ([_sh(), "-c", script + run, "autoresearch-ns"] if script else [])


def _can_hide(flag: str, lock: bool = False) -> bool:
    """Whether a bind mount works under ``unshare <flag>``: hides a temporary file, and checks
    (with ``lock``: also that the command cannot unmount it)."""
    with tempfile.TemporaryDirectory(prefix="autoresearch-hide-probe-") as tmp:
        decoy, real = Path(tmp, "decoy"), Path(tmp, "real")
        decoy.touch()
        real.write_text("x")
        argv = _unshare_prefix(flag.lstrip("-"), False, {decoy: real}, lock)
        check = 'test ! -s "$1"' + (' && ! umount "$1" 2>/dev/null && test ! -s "$1"' if lock else "")
        try:
            r = subprocess.run(argv + [_sh(), "-c", check, "probe", str(real)],
                               capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError) as e:
            log.debug("unshare %s failed: %s", flag, e)
            return False
    if r.returncode != 0:
        log.debug("unshare %s + bind mount: %s", flag, r.stderr.decode(errors="replace").strip())
    return r.returncode == 0


@functools.lru_cache(maxsize=1)
def hiding_available() -> str | None:
    """The ``unshare`` flag (``-m`` as root, else ``-rm``) under which the ``hidden`` layer works
    here, or None. Probed once."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        log.info("hiding unavailable: no unshare or mount binary")
        return None
    for flag in (["-m"] if os.geteuid() == 0 else []) + ["-rm"]:
        if _can_hide(flag):
            return flag
    log.info("hiding unavailable: unshare -m/-rm with a bind mount refused")
    return None


@functools.lru_cache(maxsize=2)
def locking_available(flag: str) -> bool:
    """Whether hidden paths can be locked under ``flag`` (a nested user namespace). Probed once."""
    ok = _can_hide(flag, lock=True)
    if not ok:
        log.warning("hidden paths cannot be locked here (nested unshare -rm refused): a run can unmount them")
    return ok


def _make_decoys(paths: Sequence[Path]) -> tuple[Path, dict[Path, Path]]:
    """A private directory with one empty decoy per path: decoy -> path, deepest paths first (so
    a hidden path inside another hidden directory is bound before that directory is covered)."""
    tmp = Path(tempfile.mkdtemp(prefix="autoresearch-hide-"))  # mode 0700
    decoys = {}
    for i, p in enumerate(sorted(paths, key=lambda p: -len(Path(os.path.abspath(p)).parts))):
        d = tmp / str(i)
        d.mkdir() if p.is_dir() else d.touch()
        d.chmod(0o555 if p.is_dir() else 0o444)  # exact, whatever the umask
        decoys[d] = p
    return tmp, decoys


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1, libc.inotify_add_watch  # noqa: B018 -- AttributeError if missing
        return libc
    except (OSError, AttributeError) as e:
        log.warning("no inotify (%s): hidden paths are hidden, but touching them goes unreported", e)
        return None


def _watch(decoys: Mapping[Path, Path]) -> tuple[int | None, dict[int, str]]:
    """An inotify fd watching each decoy for opens and reads, and watch descriptor -> hidden path."""
    libc = _libc()
    fd = -1 if libc is None else libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        if libc is not None:
            log.warning("inotify_init1: %s: touches of hidden paths go unreported",
                        os.strerror(ctypes.get_errno()))
        return None, {}
    watches = {}
    for d, p in decoys.items():
        wd = libc.inotify_add_watch(fd, os.fsencode(d), IN_OPEN | IN_ACCESS)
        if wd < 0:
            log.warning("cannot watch the decoy of %s: %s", p, os.strerror(ctypes.get_errno()))
        else:
            watches[wd] = str(p)
    return fd, watches


def _drop_decoys(tmp: Path | None, fd: int | None) -> None:
    if fd is not None:
        os.close(fd)
    if tmp is not None:  # a child that was root in its namespace may have written into a decoy
        for d, _, _ in os.walk(tmp):
            os.chmod(d, 0o700)
        shutil.rmtree(tmp, ignore_errors=True)


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
        """Collect the main process's exit status (its returncode, negative for a signal)."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.error("run %s: pid %d does not die (stuck in the kernel?)", self.token, self.pid)
            return None

    def hidden_touched(self) -> list[str]:
        """The hidden paths (as given in ``hide``) whose decoy was opened, read or listed so far;
        [] without the layer or without inotify."""
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
        return sorted(self._touched)

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
        self.hidden_touched()
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


def start_sandboxed(
    cmd: Sequence[str],
    cwd: Path,
    env: Mapping[str, str],
    stdout: IO[Any] | int | None,
    *,
    containment: str = "auto",
    isolate_network: bool = False,
    memory_limit_bytes: int | None = None,
    hide: Sequence[Path] = (),
    readonly: Sequence[Path] = (),
) -> SandboxedProcess:
    """Start ``cmd`` in its own session with the given (already scrubbed) ``env``, contained.

    ``containment``: ``"auto"`` (cgroup when available, else process-tracking), ``"cgroup"``
    (error when unavailable) or ``"process-tracking"`` (forced fallback). stderr goes to stdout.
    ``hide``: paths the command must see empty (layer ``hidden``, when available; missing paths
    are skipped). ``readonly``: paths the command must not change (layer ``read-only``, same
    mount namespace; hidden paths inside them are still hidden).
    """
    if containment not in ("auto", "cgroup", "process-tracking"):
        raise ValueError(f"containment must be auto, cgroup or process-tracking, not {containment!r}")
    exe = cmd[0] if os.sep in cmd[0] else shutil.which(cmd[0], path=env.get("PATH", os.defpath))
    if exe is None or not os.access(Path(cwd, exe), os.X_OK):  # the sh wrappers would hide it
        raise FileNotFoundError(f"command not found or not executable: {cmd[0]!r}")
    token = uuid.uuid4().hex
    base = cgroup_base() if containment != "process-tracking" else None
    if containment == "cgroup" and base is None:
        raise SandboxError("cgroup containment requested, but no writable cgroup v2 here")
    argv, layers, cg, ns = list(cmd), [], None, ""  # ns: the unshare flags
    if isolate_network:
        net = network_isolation_available()
        if net is None:
            raise SandboxError("network isolation requested, but unshare -n/-rn does not work here")
        ns = "rn" if net == "userns-netns" else "n"
    hidden = [Path(p) for p in hide if os.path.exists(p)]
    protected = [Path(p) for p in readonly if os.path.exists(p)]
    flag = hiding_available() if hidden or protected else None
    if (hidden or protected) and flag is None:
        log.warning("cannot hide %s or protect %s: no private mount namespace here (unshare -m/-rm, mount)",
                    ", ".join(map(str, hidden)) or "nothing", ", ".join(map(str, protected)) or "nothing")
        hidden, protected = [], []
    if (hidden or protected) and flag:  # one unshare for both layers: -nm, -rnm, -m or -rm
        ns = ("r" if "r" in ns + flag else "") + ns.replace("r", "") + "m"
    if isolate_network:
        layers.append("userns-netns" if "r" in ns else "netns")
    if base is not None:
        cg = base / f"{_CG_PREFIX}{token}"
        try:
            cg.mkdir()
        except OSError as e:
            if containment == "cgroup":
                raise SandboxError(f"cannot create cgroup {cg}: {e}") from e
            log.warning("cannot create cgroup %s (%s); falling back to process-tracking", cg, e)
            cg = None
    if (cg is not None and memory_limit_bytes is not None
            and _memory_limit(base, cg, memory_limit_bytes)):  # type: ignore[arg-type]
        layers.append("memory.max")
    if memory_limit_bytes is not None and "memory.max" not in layers:
        log.warning("memory limit of %d bytes requested but no cgroup memory controller: "
                    "the run has no memory cap", memory_limit_bytes)
    child_env = dict(env)
    child_env[TOKEN_VAR] = token
    hide_dir, decoys, inotify, watches = None, {}, None, {}
    lock = bool(flag) and locking_available(flag)  # type: ignore[arg-type]
    try:
        if protected:
            layers.append("read-only" if lock else "read-only-unlocked")
        if hidden:
            hide_dir, decoys = _make_decoys(hidden)
            inotify, watches = _watch(decoys)  # before the start: no open can be missed
            layers.append("hidden" if lock else "hidden-unlocked")
        if ns:
            argv = _unshare_prefix(ns, isolate_network and bool(shutil.which("ip")), decoys,
                                   lock=lock, readonly=protected) + argv
        if cg is not None:
            argv = [_sh(), "-c", _JOIN_CGROUP, "autoresearch-sandbox", str(cg / "cgroup.procs")] + argv
        proc = subprocess.Popen(argv, cwd=cwd, env=child_env, stdin=subprocess.DEVNULL,
                                stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True)
    except BaseException:
        if cg is not None:
            _remove_cgroup(cg)
        _drop_decoys(hide_dir, inotify)
        raise
    sp = SandboxedProcess(proc=proc, token=token, layers=layers, cgroup=cg, hide_dir=hide_dir,
                          _inotify=inotify, _watches=watches)
    try:
        sp._pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        sp._pidfd = None
    joined = cg is not None
    if cg is not None:  # belt and braces: the wrapper joins first, unless it could not
        _write(cg / "cgroup.procs", str(proc.pid))
        if proc.pid not in _procs(cg) and not sp.wait_exit(0):
            log.warning("pid %d did not join %s; relying on process-tracking", proc.pid, cg)
            joined = False
    layers.insert(0, "cgroup" if joined else "process-tracking")
    log.debug("started pid %d (%s): %s", proc.pid, "+".join(layers), list(cmd))
    return sp
