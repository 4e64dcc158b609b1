"""The worker: runs one candidate's training at a time on the accelerator it was given.

This is a plain class; `cluster/actors/placement.py` turns it into a Ray actor pinned to one GPU (Ray
sets CUDA_VISIBLE_DEVICES for it) or to some CPUs. It never talks to Redis or git: the controller
hands it a job and the candidate's files and gets a result back, so a worker on any node of the
cluster needs nothing but Ray. Caches stay warm between runs (the prepared data in the cache
dir, the torch compile cache under the worker's root) so start-up overhead stays small.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from worker.contract import Result, RunStatus
from worker import tripwire
from worker.runner import RunOutcome, run_training
from worker.settings import WorkerSettings
from worker.summary import is_valid

log = logging.getLogger(__name__)

MAX_LOG_BYTES = 2 * 2**20  # the log shipped home per run; the tail is what matters when it is cut


def accelerator_name(gpu_ids: list[str]) -> str:
    """The GPU model (e.g. 'NVIDIA H100 80GB HBM3'), or 'cpu'. Asks nvidia-smi, not torch:
    initialising CUDA here would hold memory on the GPU the training run needs."""
    if not gpu_ids:
        return "cpu"
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", str(gpu_ids[0])],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip()
        return out.splitlines()[0].strip() if out else "cuda"
    except (OSError, subprocess.SubprocessError, IndexError):
        return "cuda"


ORPHAN_MARKER = "AUTORESEARCH_FARM_WORKER"  # in every training process's environment: <worker root>
SEED_ENV = "AUTORESEARCH_SEED"  # prepare.seed(): the seed the farm assigned this measurement
HANDOFF_ENV = "AUTORESEARCH_HANDOFF"  # prepare.HANDOFF_ENV: where evaluate_bpb saves the trained weights
TRUSTED_EVAL = Path(__file__).with_name("trusted_eval.py")
EVAL_SCRIPT = "_arf_trusted_eval.py"  # its name in the evaluation directory


def reap_orphans(root: Path) -> int:
    """Kill processes left by an earlier incarnation of this worker (one that was SIGKILLed
    mid-run leaves its training tree running, holding the GPU). Returns how many were killed."""
    import psutil

    marker = f"{ORPHAN_MARKER}={root}".encode()
    killed, cgroups = 0, set()
    for pid in psutil.pids():
        if pid == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{pid}/cgroup") as f:
                cgroups |= {line.split(":", 2)[2].strip() for line in f if line.startswith("0::")}
            os.kill(pid, 9)
            killed += 1
        except (OSError, ProcessLookupError):
            continue
    _remove_run_cgroups(cgroups)
    if killed:
        log.warning("killed %d process(es) left running by an earlier incarnation of %s", killed, root.name)
    return killed


def _remove_run_cgroups(paths: set[str]) -> None:
    """rmdir the per-run cgroups the orphans were in, once they are empty (a sandbox names them)."""
    mount = next((line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                  if " - cgroup2 " in line), None)
    if mount is None:
        return
    for rel in paths:
        cg = Path(mount) / rel.lstrip("/")
        if not cg.name.startswith("autoresearch-run-"):
            continue
        for _ in range(50):
            try:
                cg.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:  # still has processes for a moment after SIGKILL
                time.sleep(0.1)


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = (root / rel).resolve()
        if root.resolve() not in path.parents:
            raise ValueError(f"refusing to write outside the run directory: {rel}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def frozen_tampering(run_dir: Path, files: dict[str, bytes], frozen: Iterable[str]) -> str | None:
    """Why the frozen harness in run_dir is no longer what was shipped (changed, replaced by a
    link, removed), or None. Checked after every run: a candidate may rewrite files while it runs."""
    changed = []
    for rel in frozen:
        path = run_dir / rel
        if rel not in files:
            continue
        if path.is_symlink() or not path.is_file():
            changed.append(f"{rel} was replaced or removed")
        elif path.read_bytes() != files[rel]:
            changed.append(f"{rel} was modified")
    return f"cheat: {'; '.join(changed)} during the run" if changed else None


def python_command(cmd: Sequence[str]) -> list[str]:
    """`python` in a command means the interpreter the farm runs under (a venv need not be on PATH)."""
    if cmd and cmd[0] in ("python", "python3"):
        return [sys.executable, *cmd[1:]]
    return list(cmd)


class Worker:
    """One worker, configured by its :class:`~worker.settings.WorkerSettings`."""

    def __init__(self, settings: WorkerSettings):
        self.settings = settings
        self.name = settings.name
        self.root = Path(settings.work_root).expanduser() / self.name
        self.root.mkdir(parents=True, exist_ok=True)
        self.orphans_killed = reap_orphans(self.root)
        self._cancel = threading.Event()
        self._prepared_digest: str | None = None
        self._gpu_ids = self._visible_gpus()
        self.accelerator = accelerator_name(self._gpu_ids)

    @staticmethod
    def _visible_gpus() -> list[str]:
        ray = sys.modules.get("ray")  # not imported: not inside Ray (and Ray need not be installed)
        if ray is not None and ray.is_initialized():  # ray.get_gpu_ids() outside Ray would start a local cluster
            return [str(g) for g in ray.get_gpu_ids()]
        cvd = os.environ.get("CUDA_VISIBLE_DEVICES", "")  # not inside Ray (tests call the class directly)
        return [g for g in cvd.split(",") if g]

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "node": socket.gethostname(),
            "pid": os.getpid(),
            "gpu_ids": self._gpu_ids,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "accelerator": self.accelerator,
        }

    def _env(self) -> dict[str, str]:
        s = self.settings
        env = {"AUTORESEARCH_TIME_BUDGET": str(s.budget), "PYTHONUNBUFFERED": "1", ORPHAN_MARKER: str(self.root)}
        env.update(s.env or {})
        if s.cache_dir:
            env["AUTORESEARCH_CACHE"] = str(Path(s.cache_dir).expanduser())
        # compile caches survive between runs of this worker (warm start-up)
        env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(self.root / "inductor-cache"))
        env.setdefault("TRITON_CACHE_DIR", str(self.root / "triton-cache"))
        if s.device:
            env["AUTORESEARCH_DEVICE"] = s.device
        if s.cpu_threads:
            env["OMP_NUM_THREADS"] = str(int(s.cpu_threads))
        if self._gpu_ids:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self._gpu_ids)
        return env

    def prepare(self, files: dict[str, bytes], digest: str) -> dict[str, Any]:
        """Run the prepare command once per distinct frozen harness (a no-op when data is cached).
        A file lock serialises workers of one node that share a cache directory."""
        if self._prepared_digest == digest or not self.settings.prepare_command:
            self._prepared_digest = digest
            return {"prepared": False}
        where = self.root / "prepare"
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir(parents=True)
        write_tree(where, files)
        cache = self.cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items()}
        env.update(self._env())
        t0 = time.time()
        with open(cache / ".farm-prepare.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            proc = subprocess.run(
                python_command(self.settings.prepare_command), cwd=where, env=env,
                capture_output=True, text=True,
            )
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr)[-3000:]
            raise RuntimeError(f"prepare command failed on {self.name} (exit {proc.returncode}):\n{tail}")
        self._prepared_digest = digest
        return {"prepared": True, "seconds": time.time() - t0}

    def cache_dir(self) -> Path:
        """The data cache train.py reads, resolved as prepare.py resolves CACHE_DIR: the configured
        cache_dir, else $AUTORESEARCH_CACHE, else $XDG_CACHE_HOME/autoresearch (~/.cache/autoresearch)."""
        configured = self.settings.cache_dir or os.environ.get("AUTORESEARCH_CACHE", "").strip()
        if configured:
            return Path(configured).expanduser()
        return Path(os.environ.get("XDG_CACHE_HOME", "").strip() or "~/.cache").expanduser() / "autoresearch"

    def data_state(self) -> dict[str, tuple[int, int, int, int]]:
        """(size, mtime, ctime, inode) of every prepared file: any write, even one that restores
        the mtime, changes the ctime."""
        out = {}
        for path in sorted(self.cache_dir().glob("tokenized/**/*")):
            st = path.stat()
            out[str(path)] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        return out

    def hidden_paths(self) -> list[Path]:
        """What a training process must not read: every prepared validation split, and the raw data."""
        cache = self.cache_dir()
        return sorted(cache.glob("tokenized/*/val*")) + [p for p in [cache / "data"] if p.is_dir()]

    def _trusted_verdict(self, job: dict[str, Any], files: dict[str, bytes], outcome: RunOutcome,
                         summary: dict[str, Any], weights: Path, log_path: Path) -> tuple[str, str, Any, str]:
        """(status, reason, val_bpb, log tail) of a run whose number comes from the trusted evaluator."""
        printed = summary.get("val_bpb")
        if isinstance(printed, (int, float)) and not isinstance(printed, bool) and math.isfinite(printed):
            return (RunStatus.CHEAT.value, f"printed a val_bpb of its own ({printed:g}): the harness hands the "
                    "weights to the farm's evaluator and prints nan", None, outcome.log_tail)
        if outcome.hidden_touched:
            return (RunStatus.CHEAT.value, f"opened the validation data during training: "
                    f"{', '.join(outcome.hidden_touched)}",
                    None, outcome.log_tail)
        if outcome.exit_code != 0 or outcome.status in (RunStatus.CRASH.value, RunStatus.TIMEOUT.value):
            return outcome.status, outcome.reason, None, outcome.log_tail  # its own failure is its result
        if not weights.is_file():
            return (RunStatus.NO_METRIC.value, "the trained weights were not handed over: train.py must score its "
                    "model with prepare.evaluate_bpb(model, ...)", None, outcome.log_tail)
        s = self.settings
        eval_dir = self.root / "eval" / f"{job['id']}-a{job['attempt']}"
        shutil.rmtree(eval_dir, ignore_errors=True)
        eval_dir.mkdir(parents=True)
        write_tree(eval_dir, files)  # the commit's files, not the run directory the candidate could write
        (eval_dir / EVAL_SCRIPT).write_bytes(TRUSTED_EVAL.read_bytes())
        out = eval_dir / "verdict.json"
        ev = run_training(
            python_command(["python", EVAL_SCRIPT, "--weights", str(weights), "--out", str(out)]), eval_dir,
            log_path=log_path, budget_s=0.0, grace_s=float(s.grace), env_extra=self._env(),
            isolate_network=bool(s.isolate_network), cancel=self._cancel,
            readonly=[p for p in [self.cache_dir() / "tokenized"] if p.is_dir()],
        )
        try:
            verdict = json.loads(out.read_text()) if out.is_file() and ev.exit_code == 0 else None
        except ValueError:
            verdict = None
        shutil.rmtree(eval_dir, ignore_errors=True)
        if ev.reason == "cancelled" or ev.status == RunStatus.TIMEOUT.value:
            why = "cancelled" if ev.reason == "cancelled" else f"the trusted evaluation ran past {s.grace:g} s"
            return ev.status, why, None, ev.log_tail
        if not isinstance(verdict, dict):
            return (RunStatus.CRASH.value, f"the trusted evaluation failed ({ev.reason or 'no verdict'}); "
                    "see the log's end", None, ev.log_tail)
        summary["eval_checks"] = verdict.get("checks")
        summary["eval_seconds"] = verdict.get("seconds")
        if "cheat" in verdict:
            return RunStatus.CHEAT.value, str(verdict["cheat"]), None, ev.log_tail
        why = is_valid({"val_bpb": verdict.get("val_bpb")})
        if why:
            return RunStatus.NO_METRIC.value, f"trusted evaluation: {why}", None, ev.log_tail
        return RunStatus.OK.value, "", verdict["val_bpb"], outcome.log_tail

    def cancel(self) -> None:
        """Kill the run in progress (its process tree); it reports status crash, reason cancelled."""
        self._cancel.set()

    def run(self, job: dict[str, Any], files: dict[str, bytes], harness_digest: str) -> dict[str, Any]:
        s = self.settings
        self._cancel.clear()
        self.prepare(files, harness_digest)
        run_dir = self.root / "runs" / f"{job['id']}-a{job['attempt']}"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        write_tree(run_dir, files)
        log_path = self.root / "logs" / f"{job['cand']}-{job['id']}-a{job['attempt']}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.time()
        trusted = bool(s.trusted_eval)
        editable = s.editable or "train.py"
        weights = self.root / "handoff" / f"{job['id']}-a{job['attempt']}.pt"  # outside the run dir
        env = self._env()
        if job.get("seed") is not None:  # prepare.seed() reads it: a new draw for every measurement
            env[SEED_ENV] = str(int(job["seed"]))
        data_before = self.data_state() if trusted else {}
        scan = trusted and s.tripwire and editable in files  # tests turn it off to reach the layers behind
        warning = tripwire.check(files[editable].decode("utf-8", "replace")) if scan else None
        if warning:  # refused before it runs: no GPU time spent on it
            with open(log_path, "ab") as f:
                f.write(f"=== not run: the tripwire caught {warning} ===\n".encode())
            outcome = RunOutcome(status=RunStatus.CHEAT.value, exit_code=None, wall_seconds=0.0, summary=None,
                                 log_tail="", reason=f"tripwire: {warning}")
        else:
            if trusted:
                weights.parent.mkdir(parents=True, exist_ok=True)
                weights.unlink(missing_ok=True)
                env[HANDOFF_ENV] = str(weights)
            outcome = run_training(
                python_command(s.command), run_dir,
                log_path=log_path, budget_s=float(s.budget), grace_s=float(s.grace),
                env_extra=env, isolate_network=bool(s.isolate_network), cancel=self._cancel,
                hide=self.hidden_paths() if trusted else (),
                disk_quota_bytes=int(s.disk_quota_gb * 2**30) if s.disk_quota_gb else None,
                readonly=[p for p in [self.cache_dir() / "tokenized"] if trusted and p.is_dir()],
            )
        summary = dict(outcome.summary or {})
        status, reason, tail = outcome.status, outcome.reason, outcome.log_tail
        containment = ",".join(outcome.containment) if not isinstance(outcome.containment, str) else outcome.containment
        train_wall = outcome.wall_seconds
        tampered = frozen_tampering(run_dir, files, s.frozen or ())
        if tampered:  # whatever it printed, its number cannot be trusted
            status, reason = RunStatus.CHEAT.value, tampered
        elif trusted and status != RunStatus.CHEAT.value:
            status, reason, val, tail = self._trusted_verdict(job, files, outcome, summary, weights, log_path)
            summary["val_bpb"] = val
            containment = ",".join(filter(None, [containment, "trusted-eval"]))
        weights.unlink(missing_ok=True)
        if trusted and (changed := sorted({k for k, _ in self.data_state().items() ^ data_before.items()})):
            status, reason = RunStatus.CHEAT.value, (
                f"changed the prepared data ({', '.join(changed)[:300]}): every later run would be "
                "scored on it; rebuild it with `python prepare.py --force`")
            log.error("%s: run %s %s", self.name, job["id"], reason)

        def num(key: str) -> float | None:
            v = summary.get(key)
            return float(v) if isinstance(v, (int, float)) else None

        result = Result(
            job=job["id"], cand=job["cand"], commit=job["commit"], attempt=int(job["attempt"]),
            status=status, val_bpb=num("val_bpb") if status == RunStatus.OK.value else None,
            peak_vram_mb=num("peak_vram_mb"), training_seconds=num("training_seconds"),
            total_seconds=num("total_seconds"), wall_seconds=time.time() - started if trusted else outcome.wall_seconds,
            train_wall_seconds=train_wall, exit_code=outcome.exit_code,
            worker=self.name, node=socket.gethostname(), accelerator=self.accelerator,
            started_at=started, finished_at=time.time(), summary=summary, log_path=str(log_path),
            log_tail=tail, reason=reason, purpose=job.get("purpose", "measure"), containment=containment,
            seed=job.get("seed"),
        )
        if trusted:  # the phases' own end lines judge each process alone; this is what the farm records
            with open(log_path, "ab") as f:
                f.write(f"=== farm verdict: {status} val_bpb={result.val_bpb} (trusted evaluation) "
                        f"{reason!r} ===\n".encode())
        with open(log_path, "rb") as f:
            f.seek(max(0, log_path.stat().st_size - MAX_LOG_BYTES))
            log_text = f.read().decode("utf-8", "replace")
        shutil.rmtree(run_dir, ignore_errors=True)
        out = {"result": result.to_dict(), "log": log_text}
        if outcome.status == RunStatus.CRASH.value and outcome.reason == "killed by signal SIGKILL":
            # not the runner's kill (timeout, cancel, log limit) nor the cgroup's OOM kill: the host's OOM
            # killer, an operator, or the run itself; the controller re-runs it, up to workers.max_lost times
            out["lost"] = f"the training process on {self.name} was killed (SIGKILL) from outside the worker"
        return out
