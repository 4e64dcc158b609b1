"""Layers ``view`` and ``unprivileged``: a run sees a filesystem of its own, and is nobody on the host.

``view``: the command runs in new mount and PID namespaces whose root is a fresh, read-only tmpfs
holding only what the run was given, each at its own path:

* the system (``/usr``, ``/etc``, the ``/bin``, ``/lib*`` links) and the interpreter's prefixes,
  read-only;
* the paths it may read (the prepared data, the launcher, a hand-off to score), read-only, and the
  paths it may write (its run directory, its hand-off directory, the worker's compile caches);
* a private, empty ``$HOME`` (at the same path as the worker's) and ``/tmp``, tmpfs;
* a ``/dev`` with the harmless devices and the GPUs, a private ``/dev/shm``, ``/sys`` read-only,
  and a ``/proc`` of its own PID namespace (no other process of the host is visible);
* empty, read-only *canaries* over the well-known credential paths (``~/.ssh``, ``~/.ray``, ...,
  :data:`CANARIES`), watched with inotify, so a run that lists or opens one is recorded
  (``denied``); a file it opens inside one does not exist, and goes unseen.

Nothing else exists there: not the researched repository or its ``.git``, not the farm's home or its
Redis socket, not Ray's session directory, not the other workers' directories, not the user's files.
Directories on the way to a given path are empty and read-only. The bind mounts are made by an
``sh`` prelude (``mount``, ``pivot_root``), which fails closed (exit 125) rather than run with less.

PID 1 of the namespace is a small init (:data:`INIT`) that runs the command as its child, reaps
orphans, and sends the command's exact wait status to the worker over a pipe: a PID 1 ignores
signals it has no handler for, so the command must not be it (a run that SIGKILLs itself must
die), and a command killed by a signal must still read as killed. When PID 1 ends, the kernel
kills whatever is left in the namespace.

``unprivileged``: the command never runs with the host's root. A worker that is root on the host
(most GPU clusters) switches to :data:`RUN_UID` (``nobody``) with ``setpriv`` after the view is built,
with no capabilities and ``no_new_privs`` (setuid binaries do nothing), so host files it was not
given are unreadable and the mounts cannot be undone. A worker that is not root already is nobody
special: the command runs as its user, root only inside a nested user namespace, which locks the
mounts (the kernel refuses to unmount what was copied into a less privileged namespace). Root
inside a user namespace that maps nothing but root (``unshare -r`` run by root) can have neither:
the layer is then missing, and the run's ``containment`` says so.

:func:`view_support` probes, once, what this machine allows; a requested view that is not
available is absent from the layers (the worker decides whether that may run: ``train.accept_missing``).
"""

from __future__ import annotations

import functools
import glob
import logging
import os
import shlex
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

RUN_UID = 65534  # nobody / nogroup: the host identity of a root worker's runs
SCRATCH = "8g"  # the ceiling of a run's private /tmp and $HOME each (tmpfs: memory, charged to its cgroup)
SYSTEM = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
GPU_DEVICES = ("/dev/nvidia*", "/dev/kfd", "/dev/dri")  # NVIDIA (with nvidia-caps), AMD
#: Credential and farm paths, relative to $HOME unless absolute: each appears in the view as an empty
#: read-only canary (True: a directory), and a run that lists or opens one is recorded.
CANARIES: tuple[tuple[str, bool], ...] = (
    (".ssh", True), (".aws", True), (".config/gcloud", True), (".azure", True), (".docker", True),
    (".kube", True), (".ray", True), ("/tmp/ray", True), ("autoresearch-farm", True), (".netrc", False),
    (".git-credentials", False), (".gitconfig", False), (".cache/huggingface", True), (".pypirc", False),
)
STATUS_FD_ARG = "--status-fd"
CONTAINMENT = ("view", "unprivileged")  # what every run must have, unless train.accept_missing names it

# PID 1 of the run's namespace: runs the command as its child, reaps every orphan, reports the
# command's wait status on the fd it is given, and exits with its code (128 + n for a signal).
INIT = r"""
import os, signal, sys
fd, argv = int(sys.argv[1]), sys.argv[2:]
signal.signal(signal.SIGINT, signal.SIG_DFL)
pid = os.fork()
if pid == 0:
    os.close(fd)
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        os.write(2, ("autoresearch-sandbox: cannot run %s: %s\n" % (argv[0], e)).encode())
        os._exit(127)
while True:
    try:
        p, st = os.waitpid(-1, 0)
    except ChildProcessError:
        p, st = pid, 0
    if p == pid:
        break
os.write(fd, b"%d\n" % st)
code = os.waitstatus_to_exitcode(st)
os._exit(code if code >= 0 else 128 - code)
"""


@dataclass(frozen=True)
class View:
    """What one run may see: ``writable`` and ``readable`` paths (at their own paths), nothing else
    of the host but the system, the interpreter, the devices (see the module's docstring)."""

    writable: Sequence[Path] = ()
    readable: Sequence[Path] = ()
    home: Path | None = None  # where the private $HOME appears; None: the worker's own $HOME
    uid: int = RUN_UID
    gid: int = RUN_UID
    canaries: Sequence[tuple[str, bool]] = field(default=CANARIES)

    def home_path(self) -> Path:
        return Path(os.path.abspath(self.home or os.path.expanduser("~")))


def interpreter_paths() -> list[Path]:
    """Where this interpreter and its libraries live (read-only in every view)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable)), os.path.dirname(sys.executable)}
    paths.update(v for k, v in sysconfig.get_paths().items() if k in ("stdlib", "platstdlib", "purelib", "platlib"))
    try:
        paths.update(site.getsitepackages())
    except AttributeError:  # a virtualenv's old site.py
        pass
    user = site.getusersitepackages()
    if user and os.path.isdir(user):
        paths.add(user)
    return sorted({Path(os.path.realpath(p)) for p in paths if p and os.path.isdir(p)})


def outer_uid(euid: int) -> int | None:
    """The host-side uid of ``euid`` in this user namespace (None: unmapped or unknown)."""
    try:
        lines = Path("/proc/self/uid_map").read_text().split("\n")
    except OSError:
        return euid
    for ln in lines:
        parts = ln.split()
        if len(parts) == 3:
            inner, outer, count = map(int, parts)
            if inner <= euid < inner + count:
                return outer + euid - inner
    return None


def _mapped(uid: int, which: str = "uid") -> bool:
    try:
        lines = Path(f"/proc/self/{which}_map").read_text().split("\n")
    except OSError:
        return True
    return any(int(p[0]) <= uid < int(p[0]) + int(p[2]) for ln in lines if len(p := ln.split()) == 3)


@dataclass(frozen=True)
class Support:
    """What :func:`view_support` found: whether the view works, how the run is made unprivileged
    (``"setpriv"``: a root worker's runs are :data:`RUN_UID`; ``"user"``: the worker is not root;
    None: neither can be had), how ``/sys`` can be bound, and why a layer is missing."""

    view: bool
    identity: str | None
    sys_bind: str = "--bind"
    why: str = ""

    def missing(self) -> list[str]:
        """The layers of :data:`CONTAINMENT` that runs here would lack."""
        have = {"view": self.view, "unprivileged": self.view and self.identity is not None}
        return [k for k in CONTAINMENT if not have[k]]


def _is_root() -> bool:
    return os.geteuid() == 0


def _plan_script(view: View, cwd: Path, root: Path, *, decoys: Mapping[Path, Path], canaries: Mapping[Path, Path],
                 readonly: Sequence[Path], lo_up: bool, identity: str | None, sys_bind: str, lock: bool,
                 status_fd: int) -> str:
    """The ``sh`` prelude that builds the view on ``root``, pivots into it, and execs the init."""
    q = shlex.quote
    mount = q(shutil.which("mount") or "/bin/mount")
    home = view.home_path()
    own = identity == "setpriv"

    def fail(what: str) -> str:
        return f" || {{ echo {q(f'autoresearch-sandbox: cannot {what}')} >&2; exit 125; }}\n"

    entries: list[tuple[Path, str, str]] = []  # (path in the view, op, source or options)
    for s in SYSTEM:
        if os.path.islink(s):
            entries.append((Path(s), "link", os.readlink(s)))
        elif os.path.isdir(s):
            entries.append((Path(s), "ro", s))
    entries.append((Path("/tmp"), "tmpfs", f"mode=1777,size={SCRATCH},nosuid,nodev"))
    home_opts = f"mode=0700,size={SCRATCH},nosuid,nodev" + (f",uid={view.uid},gid={view.gid}" if own else "")
    entries.append((home, "tmpfs", home_opts))
    ro = [*interpreter_paths(), *map(Path, view.readable), *map(Path, readonly)]
    for p in ro:
        entries.append((Path(os.path.abspath(p)), "ro", os.path.abspath(p)))
    for p in view.writable:
        entries.append((Path(os.path.abspath(p)), "rw", os.path.abspath(p)))
    for d, p in [*decoys.items(), *canaries.items()]:
        entries.append((Path(os.path.abspath(p)), "decoy", str(d)))
    entries.append((Path("/dev"), "dev", ""))
    entries.append((Path("/proc"), "proc", ""))
    entries.append((Path("/sys"), "sys", ""))
    entries = [e for e in entries if e[1] not in ("ro", "rw") or os.path.exists(e[2])]
    entries.sort(key=lambda e: len(e[0].parts))  # stable: a decoy goes on after what it is inside

    binds: list[tuple[Path, str]] = []  # (path, op) of the mounts made so far: what lies inside is real

    def covered(p: Path, op: str | None = None) -> bool:
        return any((p == b or b in p.parents) and (op is None or o == op) for b, o in binds
                   if o in ("ro", "rw", "decoy") or p == b)

    made: set[Path] = {Path("/")}
    lines = [f"{mount} -t tmpfs -o mode=0755,size=16m autoresearch-view {q(str(root))}" + fail("mount the view's root")]
    if lo_up:
        lines.append("ip link set lo up 2>/dev/null\n")

    def mkdirs(p: Path, leaf_is_dir: bool) -> None:
        for a in [*reversed(p.parents), p]:
            if a in made or covered(a):
                continue
            at = q(f"{root}{a}")
            if a == p and not leaf_is_dir:
                lines.append(f": > {at}" + fail(f"make {a}"))
            else:
                lines.append(f"mkdir -m 0755 {at}" + fail(f"make {a}"))
            if own and home in a.parents:  # inside the private home: the run's own
                lines.append(f"chown {view.uid}:{view.gid} {at}" + fail(f"give {a} to the run"))
            made.add(a)

    for path, op, src in entries:
        at = q(f"{root}{path}")
        if op in ("ro", "rw") and covered(path, op):
            continue  # already visible, the same way
        if op == "link":
            lines.append(f"ln -s {q(src)} {at}" + fail(f"link {path}"))
            made.add(path)
            continue
        mkdirs(path, os.path.isdir(src) if op in ("ro", "rw", "decoy") else True)
        if op == "ro":
            lines.append(f"{mount} --rbind {q(src)} {at} && {mount} -o remount,bind,ro {at}" + fail(f"show {path}"))
        elif op == "rw":
            lines.append(f"{mount} --rbind {q(src)} {at}" + fail(f"show {path}"))
        elif op == "decoy":
            lines.append(f"{mount} --bind {q(src)} {at}" + fail(f"hide {path}"))
        elif op == "tmpfs":
            lines.append(f"{mount} -t tmpfs -o {src} autoresearch-scratch {at}" + fail(f"mount {path}"))
        elif op == "dev":
            lines.append(f"{mount} -t tmpfs -o mode=0755,size=1m,nosuid autoresearch-dev {at}" + fail("mount /dev"))
            devs = [f"/dev/{n}" for n in DEVICES if os.path.exists(f"/dev/{n}")]
            devs += sorted(p for g in GPU_DEVICES for p in glob.glob(g))
            for dev in devs:
                tgt = q(f"{root}{dev}")
                make = f"mkdir {tgt}" if os.path.isdir(dev) else f": > {tgt}"
                lines.append(f"{make} && {mount} --rbind {q(dev)} {tgt}" + fail(f"show {dev}"))
            lines.append(f"mkdir -m 1777 {q(f'{root}/dev/shm')} && {mount} -t tmpfs -o mode=1777,nosuid,nodev "
                         f"autoresearch-shm {q(f'{root}/dev/shm')}" + fail("mount /dev/shm"))
            for name, tgt in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                              ("stderr", "/proc/self/fd/2")):
                lines.append(f"ln -s {tgt} {q(f'{root}/dev/{name}')}\n")
        elif op == "proc":
            lines.append(f"{mount} -t proc -o nosuid,nodev,noexec proc {at}" + fail("mount /proc"))
        elif op == "sys":
            lines.append(f"{mount} {sys_bind} /sys {at}" + fail("show /sys"))
            lines.append(f"{mount} -o remount,bind,ro {at} 2>/dev/null\n")
        binds.append((path, op))
        made.add(path)
    lines.append(f"mkdir {q(f'{root}/.oldroot')} && {mount} -o remount,ro {q(str(root))}" + fail("seal the view"))
    pivot = q(shutil.which("pivot_root") or "/sbin/pivot_root")
    umount = q(shutil.which("umount") or "/bin/umount")
    lines.append(f"cd {q(str(root))} && {pivot} . .oldroot && {umount} -l /.oldroot" + fail("enter the view"))
    lines.append(f"cd {q(os.path.abspath(cwd))}" + fail(f"enter {cwd}"))
    drop: list[str] = []
    if own:
        drop = [shutil.which("setpriv") or "setpriv", f"--reuid={view.uid}", f"--regid={view.gid}",
                "--clear-groups", "--no-new-privs", "--"]
    elif lock:
        drop = [shutil.which("unshare") or "unshare", "-rm", "--"]
    init = [sys.executable, "-I", "-S", "-c", INIT, str(status_fd), *drop]
    lines.append(f"exec {shlex.join(init)} \"$@\"\n")
    return "".join(lines)


def prefix(view: View, cwd: Path, root: Path, *, decoys: Mapping[Path, Path], canaries: Mapping[Path, Path],
           readonly: Sequence[Path], isolate_network: bool, support: Support, lock: bool, status_fd: int) -> list[str]:
    """The argv prefix that runs a command in ``view`` (``root``: an empty directory to build it on)."""
    unshare = shutil.which("unshare") or "unshare"
    flags = ["-m", "-p", "--fork", "--kill-child", "--propagation", "private"]
    if not _is_root():
        flags.insert(0, "-r")
    if isolate_network:
        flags.insert(0, "-n")
    script = _plan_script(view, cwd, root, decoys=decoys, canaries=canaries, readonly=readonly,
                          lo_up=isolate_network and bool(shutil.which("ip")), identity=support.identity,
                          sys_bind=support.sys_bind, lock=lock, status_fd=status_fd)
    sh = "/bin/sh" if os.path.exists("/bin/sh") else (shutil.which("sh") or "sh")
    return [unshare, *flags, "--", sh, "-c", script, "autoresearch-view"]


def canary_paths(view: View) -> list[tuple[Path, bool]]:
    """The canaries of ``view`` that are not on the way to a path it shows (those stay directories)."""
    home = view.home_path()
    shown = [Path(os.path.abspath(p)) for p in [*view.writable, *view.readable]]
    out = []
    for rel, is_dir in view.canaries:
        p = Path(rel) if rel.startswith("/") else home / rel
        if not any(p == s or p in s.parents or s in p.parents for s in shown):
            out.append((p, is_dir))
    return out


def give(paths: Sequence[Path], uid: int = RUN_UID, gid: int = RUN_UID) -> None:
    """Make each of ``paths`` (and what is inside, where its top is not the run's yet) the run's own:
    a root worker's runs are ``uid`` on the host, and must be able to write where they may."""
    for top in map(Path, paths):
        try:
            st = top.lstat()
        except FileNotFoundError:
            continue
        if st.st_uid == uid and st.st_gid == gid:
            continue  # given before (a compile cache): what a run made in it is the run's already
        os.chown(top, uid, gid, follow_symlinks=False)
        for d, dirs, files in os.walk(top):
            for name in dirs + files:
                os.chown(os.path.join(d, name), uid, gid, follow_symlinks=False)


def make_canaries(where: Path, view: View) -> dict[Path, Path]:
    """One empty read-only decoy in ``where`` per canary of ``view``: decoy -> canary path."""
    out = {}
    for i, (p, is_dir) in enumerate(canary_paths(view)):
        d = where / f"canary-{i}"
        d.mkdir() if is_dir else d.touch()
        d.chmod(0o555 if is_dir else 0o444)
        out[d] = p
    return out


def _probe(support: Support) -> tuple[bool, str]:
    """Run ``id -u`` in a real view: does it start, is a host path outside it absent, who runs it."""
    with tempfile.TemporaryDirectory(prefix="autoresearch-view-probe-") as tmp:
        run, secret, root = Path(tmp, "run"), Path(tmp, "secret"), Path(tmp, "root")
        run.mkdir()
        root.mkdir()
        secret.write_text("x")
        if support.identity == "setpriv":
            os.chown(run, RUN_UID, RUN_UID)
        r_fd, w_fd = os.pipe()
        try:
            argv = prefix(View(writable=[run]), run, root, decoys={}, canaries={}, readonly=[],
                          isolate_network=False, support=support, lock=support.identity != "setpriv", status_fd=w_fd)
            check = f'test ! -e {shlex.quote(str(secret))} && test -w . && test ! -d /proc/{os.getpid()} && id -u'
            r = subprocess.run(argv + ["/bin/sh", "-c", check], capture_output=True, timeout=20, check=False,
                               pass_fds=(w_fd,), cwd=tmp)
        except (OSError, subprocess.SubprocessError) as e:
            return False, str(e)
        finally:
            os.close(r_fd)
            os.close(w_fd)
    if r.returncode != 0:
        return False, (r.stderr.decode(errors="replace").strip() or f"exit {r.returncode}")[-300:]
    uid = r.stdout.decode().strip()
    if support.identity == "setpriv" and uid != str(RUN_UID):
        return False, f"the run's uid is {uid}, not {RUN_UID}"
    return True, ""


@functools.lru_cache(maxsize=1)
def view_support() -> Support:
    """What this machine allows (probed once, with real namespaces)."""
    missing = [t for t in ("unshare", "mount", "umount", "pivot_root") if shutil.which(t) is None
               and not os.path.exists(f"/sbin/{t}")]
    if missing:
        return Support(False, None, why=f"no {', '.join(missing)} here")
    if _is_root() and outer_uid(0) == 0:  # root of the host (or of a namespace that maps only root)
        identity = "setpriv" if (shutil.which("setpriv") and _mapped(RUN_UID) and _mapped(RUN_UID, "gid")) else None
    else:
        identity = "user"
    why = ""
    for sys_bind in ("--bind", "--rbind"):  # a user namespace cannot bind /sys without its submounts
        ok, why = _probe(Support(True, identity, sys_bind))
        if ok:
            break
    else:
        if identity == "setpriv":  # the view may still work as root, without the identity
            if _probe(Support(True, None, "--rbind"))[0]:
                return Support(True, None, "--rbind", why=f"cannot run as uid {RUN_UID}: {why}")
        log.warning("no private filesystem view for runs here: %s", why)
        return Support(False, None, why=why)
    if identity is None:
        why = (f"the worker is root and uid {RUN_UID} is not mapped in its user namespace (or there is no setpriv): "
               "runs would be root on the host; run the worker as root of the host, or as an unprivileged user")
    return Support(True, identity, sys_bind, why=why)
