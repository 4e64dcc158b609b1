"""Layers ``netns``/``userns-netns``, ``hidden`` and ``read-only``: one ``unshare`` for the network
and mount namespaces, the prelude that brings ``lo`` up, binds the read-only paths and the empty
decoys over the hidden paths (locked behind a nested user namespace where the kernel allows), the
probes that say which of this works here, and the inotify watch that reports touched decoys."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_LO_UP = "ip link set lo up 2>/dev/null; "
IN_ACCESS, IN_OPEN, IN_Q_OVERFLOW = 0x1, 0x20, 0x4000  # <sys/inotify.h>


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
