"""Run ONE candidate's training command to completion, safely, and say what happened.

:func:`run_training` is what the worker's Ray actor calls for each job. It owns the process
from start to finish: scrubbed environment, containment (:mod:`worker.sandbox`), the wall-clock
deadline, cancellation, the log, and the verdict (a :class:`worker.contract.RunStatus` value).

Choices and trade-offs
----------------------
* **The log is a file, not a pipe.** The child's stdout and stderr are the log file itself
  (opened for append), so the runner never holds the log in memory, a chatty child can never
  block on a full pipe, and a grandchild that keeps the descriptor open cannot hang the runner.
  ``PYTHONUNBUFFERED=1`` is set (``env_extra`` may override it) so lines land as they are
  printed. The runner reads back only the tail: the last 64 KiB of *this run's* output for the
  summary, the last 50 lines / 4 KiB for ``log_tail``. Each run is framed by ``===`` header and
  footer lines, and only bytes after this run's header are ever parsed, so an earlier run's
  summary in the same file can never be mistaken for this one's. A run that writes more than
  ``max_log_bytes`` is killed (crash) before it fills the disk.
* **Time is the runner's, not the script's.** ``wall_seconds`` runs from just before the start
  to the moment the exit (or the kill decision) was seen. The deadline is ``budget_s + grace_s``
  (startup, compilation, final evaluation); past it the whole tree is killed: ``timeout``.
* **Exit is detected without reaping** (pidfd + ``waitid(WNOWAIT)``): the leader's pid and
  process-group id stay reserved until every leftover process is killed, so the kill can never
  hit a recycled pid. Nothing outlives a run, normal exit included: a background process the
  script left behind would hold the GPU from the next candidate.
* **Verdicts**: exit 0 with a valid summary: ``ok``; exit 0 without one: ``no-metric`` (reason
  from :func:`worker.summary.is_valid`); non-zero exit: ``crash`` ("exit code N" or "killed by
  signal SIGKILL", plus the OOM note when the cgroup's memory limit fired); deadline:
  ``timeout``. ``cheat`` is never given here: that needs the judge's view of the checkout.
* **Cancellation** (the caller sets ``cancel``: the job was revoked, or the worker is shutting
  down) kills the tree and returns ``crash`` with reason ``"cancelled"``. It is *not* the
  candidate's fault: the caller must re-queue the job rather than record the result. Latency is
  at most ``poll_s``.
* **Hidden paths** (``hide``: the validation data, say) are seen empty by the run where the
  sandbox's ``hidden`` layer is available (a warning otherwise, not an error);
  ``hidden_touched`` lists those the run opened, read or listed anyway. The runner only reports
  it: deciding that this is cheating is the caller's (or the judge's) call.
* **Disk quota** (``disk_quota_bytes``): the run directory's size is checked once per poll and
  a run past it is killed (``crash``); what it writes elsewhere is not counted.
* **Start failures raise** (missing executable or cwd, a containment layer that was required but
  is unavailable: :class:`worker.sandbox.SandboxError`): that is the farm's configuration, not
  the candidate's code, and must not be recorded as a crashed candidate.
* ``on_progress`` gets, once per poll at most, the new complete log lines (``\\r`` counts as a
  line end; at most the newest 4 KiB). It runs on the runner's thread: keep it cheap. Exceptions
  from it are logged and ignored.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from worker.contract import RunStatus
from worker.sandbox import DEFAULT_ALLOW, View, scrubbed_env, start_sandboxed
from worker.summary import is_valid, parse_summary

log = logging.getLogger(__name__)

__all__ = ["RunOutcome", "run_training", "run_prepare", "DEFAULT_MAX_LOG_BYTES"]

DEFAULT_MAX_LOG_BYTES = 512 * 1024 * 1024
TAIL_LINES = 50
TAIL_BYTES = 4096
SUMMARY_WINDOW = 64 * 1024
PROGRESS_WINDOW = 64 * 1024
PREPARE_POLL_S = 0.2  # how soon a cancel reaches a prepare command, or a worker waiting for its lock


@dataclass
class RunOutcome:
    """What one training run did. ``summary`` is whatever block the output ended with, whatever
    the status; only ``status == "ok"`` vouches for it."""

    status: str  # a RunStatus value
    exit_code: int | None  # the main process's; negative: killed by that signal; None: unknown
    wall_seconds: float  # measured by the runner
    summary: dict[str, Any] | None
    log_tail: str
    reason: str  # why a non-ok status was given ("" for ok)
    containment: list[str] = field(default_factory=list)  # e.g. ["cgroup", "netns", "hidden"]
    timed_out: bool = False
    hidden_touched: list[str] = field(default_factory=list)  # hidden paths the run opened or read
    denied: list[str] = field(default_factory=list)  # the view's credential canaries it listed or opened

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_range(path: Path, start: int, end: int, window: int) -> str:
    """The last ``window`` bytes of ``path[start:end]``, without a cut first line."""
    lo = max(start, end - window)
    if end <= lo:
        return ""
    with open(path, "rb") as f:
        f.seek(lo)
        data = f.read(end - lo)
    if lo > start and b"\n" in data:
        data = data[data.index(b"\n") + 1 :]
    return data.decode("utf-8", errors="replace")


def _tail(text: str) -> str:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n").split("\n")
    out = "\n".join(lines[-TAIL_LINES:])
    return out[-TAIL_BYTES:]


class _Follower:
    """Hands new complete lines of a growing file to a callback, cheaply."""

    def __init__(self, path: Path, offset: int, callback: Callable[[str], None] | None) -> None:
        self.path, self.offset, self.callback = path, offset, callback
        self.partial = b""
        self.failed = False

    def poll(self, size: int) -> None:
        if self.callback is None or self.failed or size <= self.offset:
            return
        if size - self.offset > PROGRESS_WINDOW:
            self.offset, self.partial = size - PROGRESS_WINDOW, b""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = self.partial + f.read(size - self.offset)
        self.offset = size
        data = data.replace(b"\r", b"\n")
        cut = data.rfind(b"\n")
        self.partial = data[cut + 1 :][-TAIL_BYTES:]
        lines = [ln for ln in data[: max(cut, 0)].decode("utf-8", "replace").split("\n") if ln]
        if not lines:
            return
        try:
            self.callback("\n".join(lines)[-TAIL_BYTES:])
        except Exception:  # noqa: BLE001 -- a broken progress hook must not break the run
            log.exception("on_progress failed; not calling it again for this run")
            self.failed = True


def dir_bytes(root: Path) -> int:
    """Disk space (allocated blocks) of everything under ``root``; symlinks are not followed."""
    total, stack = 0, [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    try:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(e.path)
                        else:
                            total += e.stat(follow_symlinks=False).st_blocks * 512
                    except OSError:
                        continue
        except OSError:
            continue
    return total


def _exit_reason(code: int | None, oom_kills: int) -> str:
    if code is None:
        return "exit status unknown (process would not die)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        oom = " (out of memory: the cgroup's memory.max fired)" if oom_kills else ""
        return f"killed by signal {name}{oom}"
    return f"exit code {code}"


def run_training(
    cmd: Sequence[str],
    cwd: Path,
    *,
    log_path: Path,
    budget_s: float,
    grace_s: float,
    env_extra: Mapping[str, str],
    isolate_network: bool = False,
    poll_s: float = 0.5,
    cancel: threading.Event | None = None,
    on_progress: Callable[[str], None] | None = None,
    memory_limit_bytes: int | None = None,
    containment: str = "auto",
    max_log_bytes: int | None = DEFAULT_MAX_LOG_BYTES,
    allow: tuple[str, ...] = DEFAULT_ALLOW,
    hide: Sequence[Path] = (),
    readonly: Sequence[Path] = (),
    disk_quota_bytes: int | None = None,
    view: View | None = None,
) -> RunOutcome:
    """Run ``cmd`` in ``cwd`` until it exits, ``budget_s + grace_s`` pass, or ``cancel`` is set.

    ``env_extra`` goes on top of the scrubbed environment (put ``AUTORESEARCH_TIME_BUDGET``
    there). ``containment``: ``"auto"`` | ``"cgroup"`` | ``"process-tracking"`` (see
    :func:`worker.sandbox.start_sandboxed`). ``memory_limit_bytes`` is applied only where a cgroup
    memory controller is available (``"memory.max"`` then appears in ``containment``). ``hide``:
    paths the run must see empty (``"hidden"`` then appears in ``containment``); ``readonly``:
    paths it must not change (``"read-only"``). ``disk_quota_bytes``: a run whose directory grows
    past it is killed (crash); checked once per poll. ``view``: what the run may see of the host
    (:class:`worker.sandbox.View`; ``"view"`` then appears in ``containment`` where the OS allows it).
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = scrubbed_env({"PYTHONUNBUFFERED": "1", **env_extra}, allow)
    with open(log_path, "ab", buffering=0) as logf:
        logf.write(f"=== autoresearch run start {time.strftime('%Y-%m-%d %H:%M:%S')} "
                   f"budget={budget_s:g}s grace={grace_s:g}s cwd={cwd} "
                   f"cmd={shlex.join(cmd)} ===\n".encode())
        start_offset = os.fstat(logf.fileno()).st_size
        follower = _Follower(log_path, start_offset, on_progress)
        t0 = time.monotonic()
        deadline = t0 + budget_s + grace_s
        stop = ""  # why the runner stopped the run: "" (it exited) | timeout | cancel | log
        with start_sandboxed(cmd, Path(cwd), env, logf, containment=containment,
                             isolate_network=isolate_network,
                             memory_limit_bytes=memory_limit_bytes, hide=hide, readonly=readonly,
                             view=view) as sp:
            tracking = sp.layers[0] == "process-tracking"
            while True:
                wait = min(poll_s, max(0.0, deadline - time.monotonic()))
                if sp.wait_exit(wait):
                    break
                size = os.fstat(logf.fileno()).st_size
                follower.poll(size)
                if tracking:
                    sp.track()
                if cancel is not None and cancel.is_set():
                    stop = "cancel"
                elif time.monotonic() >= deadline:
                    stop = "timeout"
                elif max_log_bytes is not None and size - start_offset > max_log_bytes:
                    stop = "log"
                elif disk_quota_bytes is not None and dir_bytes(Path(cwd)) > disk_quota_bytes:
                    stop = "disk"
                if stop:
                    break
            wall = time.monotonic() - t0
            if not sp.kill_tree():
                log.error("run in %s: some processes survived; the GPU may not be free", cwd)
            code = sp.reap()
            oom_kills = sp.oom_kills()
            layers = list(sp.layers)
            touched = sp.hidden_touched()  # every process of the run is gone: the list is final
            denied = sp.denied()
        end_offset = os.fstat(logf.fileno()).st_size
        follower.poll(end_offset)
        summary = parse_summary(_read_range(log_path, start_offset, end_offset, SUMMARY_WINDOW))
        log_tail = _tail(_read_range(log_path, start_offset, end_offset, TAIL_BYTES * 2))

        if stop == "cancel":
            status, reason = RunStatus.CRASH, "cancelled"
        elif stop == "timeout":
            status = RunStatus.TIMEOUT
            reason = f"still running after budget+grace ({budget_s:g}+{grace_s:g} s): killed"
        elif stop == "log":
            status, reason = RunStatus.CRASH, f"log exceeded {max_log_bytes} bytes: killed"
        elif stop == "disk":
            status, reason = RunStatus.CRASH, f"its directory exceeded the disk quota of {disk_quota_bytes} bytes: killed"
        elif code == 0:
            invalid = is_valid(summary)
            status, reason = (RunStatus.NO_METRIC, invalid) if invalid else (RunStatus.OK, "")
        else:
            status, reason = RunStatus.CRASH, _exit_reason(code, oom_kills)

        outcome = RunOutcome(status=status.value, exit_code=code, wall_seconds=round(wall, 3),
                             summary=summary, log_tail=log_tail, reason=reason,
                             containment=layers, timed_out=stop == "timeout",
                             hidden_touched=touched, denied=denied)
        logf.write(f"=== autoresearch run end status={outcome.status} exit={code} "
                   f"wall={wall:.1f}s containment={'+'.join(layers)} reason={reason!r}"
                   f"{f' hidden_touched={touched}' if touched else ''}"
                   f"{f' denied={denied}' if denied else ''} ===\n".encode())
    if touched:
        log.warning("run in %s opened hidden paths: %s", cwd, ", ".join(touched))
    if denied:
        log.warning("run in %s tried to reach %s (not in its view)", cwd, ", ".join(denied))
    log.info("run in %s: %s (%s) in %.1f s [%s]", cwd, outcome.status, reason or "-", wall,
             "+".join(layers))
    return outcome


def run_prepare(command: Callable[[], Sequence[str]], cwd: Path, env: Mapping[str, str], *, log_path: Path,
                lock_path: Path, cancel: threading.Event, max_bytes: int) -> tuple[int | None, str, str]:
    """Run the data-preparation command to its end under an exclusive lock on ``lock_path``; returns
    (its exit code, the tail of its output, the output's last ``max_bytes``).

    Not sandboxed: it is the frozen harness's own step (it downloads, and writes the cache runs
    read). Its stdout and stderr go, interleaved as printed, to ``log_path`` (not into memory: a
    download's progress can run long). ``command`` is called once the lock is held; one that cannot
    be built or started (no such program) is said in the log, with exit code None. ``cancel`` ends
    the wait for the lock and the command (its whole session: it runs in one of its own), so a
    stopping farm neither waits out a download nor leaves one running under a killed worker; a
    command killed so ends with -9, one cancelled before it started with None.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    code: int | None = None
    with open(lock_path, "w") as lock, open(log_path, "wb") as out:
        while not cancel.is_set():
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:  # another worker of this node is preparing the same cache
                cancel.wait(PREPARE_POLL_S)
        proc = None
        if not cancel.is_set():
            try:
                proc = subprocess.Popen(list(command()), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            except (OSError, ValueError) as e:  # no such program, not executable, a command that cannot be built
                out.write(f"cannot run the prepare command: {e}\n".encode())
        while proc is not None and code is None:
            try:
                code = proc.wait(timeout=PREPARE_POLL_S)
            except subprocess.TimeoutExpired:
                if cancel.is_set():
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:  # it ended a moment ago
                        pass
                    code = proc.wait()
        if cancel.is_set():
            out.write(b"\n=== cancelled: the farm is stopping ===\n")
    size = log_path.stat().st_size
    output = _read_range(log_path, 0, size, max_bytes)
    return code, _tail(output), output
