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

``view``, ``pidns``, ``unprivileged`` (optional, ``view=View(...)``; :mod:`worker.sandbox.view`)
    The run's root is its own: only the system, the interpreter, the paths it was given and a
    private ``$HOME``/``/tmp``, in its own PID namespace, as uid ``nobody`` where the worker is
    root. It replaces the single ``unshare`` above (the ``hidden`` and ``read-only`` paths are then
    bound inside the view). Unavailable here: the layers are absent from ``layers``, and the run
    starts as it would without them (the pre-flight refuses a farm that did not accept that).

What none of this is: a boundary against a kernel exploit or the GPU driver. Without the view,
candidate code runs as the worker's user and can reach what that user can.

Modules, one per layer: :mod:`worker.sandbox.env` (``env``), :mod:`worker.sandbox.process`
(``cgroup``, ``process-tracking``, ``memory.max`` and :class:`SandboxedProcess`),
:mod:`worker.sandbox.namespaces` (``netns``, ``hidden``, ``read-only``), :mod:`worker.sandbox.view`
(``view``, ``pidns``, ``unprivileged``); :func:`start_sandboxed`,
here, composes them.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from worker.sandbox.env import DEFAULT_ALLOW, DENY, TOKEN_VAR, scrubbed_env
from worker.sandbox.namespaces import _can_hide as _can_hide  # the tests probe it
# start_sandboxed looks these up here, where the tests replace them (monkeypatch worker.sandbox.X)
from worker.sandbox.namespaces import (
    _drop_decoys, _make_decoys, _sh, _unshare_prefix, _watch, hiding_available, locking_available,
    network_isolation_available,
)
from worker.sandbox.process import (
    _CG_PREFIX, _JOIN_CGROUP, SandboxedProcess, _memory_limit, _procs, _remove_cgroup, _write, cgroup_base,
)
from worker.sandbox.view import RUN_UID, View, give, make_canaries, view_support
from worker.sandbox.view import prefix as _view_prefix

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ALLOW", "DENY", "RUN_UID", "TOKEN_VAR", "SandboxError", "SandboxedProcess", "View", "cgroup_base",
    "hiding_available", "network_isolation_available", "scrubbed_env", "start_sandboxed", "view_support",
]


class SandboxError(RuntimeError):
    """A requested containment layer is not available on this machine."""


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
    view: View | None = None,
) -> SandboxedProcess:
    """Start ``cmd`` in its own session with the given (already scrubbed) ``env``, contained.

    ``containment``: ``"auto"`` (cgroup when available, else process-tracking), ``"cgroup"``
    (error when unavailable) or ``"process-tracking"`` (forced fallback). stderr goes to stdout.
    ``hide``: paths the command must see empty (layer ``hidden``, when available; missing paths
    are skipped). ``readonly``: paths the command must not change (layer ``read-only``, same
    mount namespace; hidden paths inside them are still hidden). ``view``: the run sees only what it
    names (layers ``view``, ``pidns``, ``unprivileged``: :mod:`worker.sandbox.view`) where this
    machine allows it; elsewhere the layers are absent and the run goes on as before (the caller
    decides whether that may run).
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
    support = view_support() if view is not None else None
    if support is not None and not support.view:
        view = support = None
    flag = hiding_available() if (hidden or protected) and view is None else None
    if (hidden or protected) and view is None and flag is None:
        log.warning("cannot hide %s or protect %s: no private mount namespace here (unshare -m/-rm, mount)",
                    ", ".join(map(str, hidden)) or "nothing", ", ".join(map(str, protected)) or "nothing")
        hidden, protected = [], []
    if (hidden or protected) and flag:  # one unshare for both layers: -nm, -rnm, -m or -rm
        ns = ("r" if "r" in ns + flag else "") + ns.replace("r", "") + "m"
    if isolate_network:
        layers.append("userns-netns" if "r" in ns or (view is not None and os.geteuid() != 0) else "netns")
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
    hide_dir, decoys, canaries, inotify, watches, status_r, status_w = None, {}, {}, None, {}, None, None
    if support is not None:  # the view's own namespaces: nothing to lock where the run is not root
        lock = support.identity != "setpriv" and locking_available(hiding_available() or "-rm")
        locked = lock or support.identity == "setpriv"
    else:
        lock = locked = bool(flag) and locking_available(flag)  # type: ignore[arg-type]
    try:
        if protected:
            layers.append("read-only" if locked else "read-only-unlocked")
        if hidden or view is not None:
            hide_dir, decoys = _make_decoys(hidden)
            if view is not None:
                canaries = make_canaries(hide_dir, view)
            inotify, watches = _watch({**decoys, **canaries})  # before the start: no open can be missed
        if hidden:
            layers.append("hidden" if locked else "hidden-unlocked")
        if view is not None and support is not None:
            root = hide_dir / "root"  # type: ignore[operator]
            root.mkdir()
            status_r, status_w = os.pipe()
            os.set_inheritable(status_w, True)
            if support.identity == "setpriv":
                give(view.writable, view.uid, view.gid)
            tmp = child_env.get("TMPDIR")
            if tmp and not any(Path(os.path.abspath(tmp)).is_relative_to(os.path.abspath(w)) for w in view.writable):
                child_env["TMPDIR"] = "/tmp"  # the worker's is not in the view: the view's own
            argv = _view_prefix(view, Path(cwd), root, decoys=decoys, canaries=canaries, readonly=protected,
                                isolate_network=isolate_network, support=support, lock=lock,
                                status_fd=status_w) + argv
            layers += ["view", "pidns"] + (["unprivileged"] if support.identity else [])
        elif ns:
            argv = _unshare_prefix(ns, isolate_network and bool(shutil.which("ip")), decoys,
                                   lock=lock, readonly=protected) + argv
        if cg is not None:
            argv = [_sh(), "-c", _JOIN_CGROUP, "autoresearch-sandbox", str(cg / "cgroup.procs")] + argv
        proc = subprocess.Popen(argv, cwd=cwd, env=child_env, stdin=subprocess.DEVNULL,
                                stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True,
                                pass_fds=(status_w,) if status_w is not None else ())
    except BaseException:
        if cg is not None:
            _remove_cgroup(cg)
        _drop_decoys(hide_dir, inotify)
        for fd in (status_r, status_w):
            if fd is not None:
                os.close(fd)
        raise
    if status_w is not None:
        os.close(status_w)
    sp = SandboxedProcess(proc=proc, token=token, layers=layers, cgroup=cg, hide_dir=hide_dir,
                          _inotify=inotify, _watches=watches, _canaries={str(p) for p in canaries.values()},
                          _status_fd=status_r)
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
