"""The worker: runs one candidate's training at a time on the accelerator it was given.

This is a plain class; `cluster/actors/placement.py` turns it into a Ray actor pinned to one GPU (Ray
sets CUDA_VISIBLE_DEVICES for it) or to some CPUs. It never talks to Redis or git: the controller
hands it a job and the candidate's files and gets a result back, so a worker on any node of the
cluster needs nothing but Ray. Caches stay warm between runs (the prepared data in the cache
dir; the torch compile caches in ``<work_root>/compile-cache``, shared by the workers of a node, so
only a node's first experiment compiles cold) so start-up overhead stays small.
"""

from __future__ import annotations

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

from worker.contract import PrepareFailed, Result, RunStatus
from worker import tripwire
from worker.curve import CurveFollower, parse_curve
from worker.upstream import host, launch as upstream
from worker.runner import RunOutcome, run_prepare, run_training
from worker import sandbox
from worker.sandbox import View
from worker.settings import WorkerSettings
from worker.summary import is_valid

log = logging.getLogger(__name__)

MAX_LOG_BYTES = 2 * 2**20  # the log shipped home per run; the tail is what matters when it is cut
LIVE_CURVE_POINTS = 50  # the curve so far in every heartbeat: enough to see a run's trend, small to send every few s


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
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # runs without network


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
        # inductor and triton write their caches atomically (a temporary file renamed into place), so
        # the workers of one node share them: only a node's first experiment pays the cold compile
        self.compile_cache = Path(settings.work_root).expanduser() / "compile-cache"
        self.root.mkdir(parents=True, exist_ok=True)
        self.orphans_killed = reap_orphans(self.root)
        self._cancel = threading.Event()
        self._prepared_digest: str | None = None
        self._layout: dict[str, Any] = {}  # an upstream harness's paths (_describe)
        self._gpu_ids = self._visible_gpus()
        self.accelerator = accelerator_name(self._gpu_ids)
        self._live: tuple[str, CurveFollower, float] | None = None  # the run in progress: its job, its curve so far, its start

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
            **self._containment(),
            **({"curve": {"job": live[0], "since": live[2], "points": live[1].curve(LIVE_CURVE_POINTS)}}
               if (live := self._live) else {}),
        }

    def _containment(self) -> dict[str, Any]:
        """The layers this node's runs would lack (the placement refuses a node the config did not
        accept: the pre-flight probed only the machine the farm was started on), and why."""
        if not self.settings.view:
            return {"containment_missing": []}
        support = sandbox.view_support()
        return {"containment_missing": support.missing(), "containment_why": support.why}

    def _env(self) -> dict[str, str]:
        s = self.settings
        env = {"AUTORESEARCH_TIME_BUDGET": str(s.budget), "PYTHONUNBUFFERED": "1", ORPHAN_MARKER: str(self.root)}
        env.update(s.env or {})
        if s.cache_dir:
            env["AUTORESEARCH_CACHE"] = str(Path(s.cache_dir).expanduser())
        # compile caches survive between runs, shared by the node's workers (warm start-up)
        env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(self.compile_cache / "inductor"))
        env.setdefault("TRITON_CACHE_DIR", str(self.compile_cache / "triton"))
        if s.device:
            env["AUTORESEARCH_DEVICE"] = s.device
        if s.cpu_threads:
            env["OMP_NUM_THREADS"] = str(int(s.cpu_threads))
        if self._gpu_ids:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self._gpu_ids)
        if self._layout.get("kernels"):  # an upstream harness's prepare fetches them (launch.prefetch)
            env[upstream.KERNELS_ENV] = os.pathsep.join(self._layout["kernels"])
        return env

    def prepare(self, files: dict[str, bytes], digest: str) -> dict[str, Any]:
        """Run the prepare command once per distinct frozen harness (a no-op when data is cached).
        A file lock serialises workers of one node that share a cache directory; cancel() ends the
        wait and the command (:func:`~worker.runner.run_prepare`). Its output goes to
        <root>/logs/prepare-<digest>.log. A failure raises :class:`~worker.contract.PrepareFailed`
        (the command, its exit code, the output's tail and the output): the frozen harness failed,
        not a candidate, so the controller ends the run with it instead of retrying an opaque error."""
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
        log_path = self.root / "logs" / f"prepare-{digest[:12]}.log"
        t0 = time.time()
        code, tail, output = run_prepare(  # the command is built under the lock: one that cannot be is its failure
            lambda: self._command(self.settings.prepare_command, host.HERE / "launch.py", prepare=True), where, env,
            log_path=log_path, lock_path=cache / ".farm-prepare.lock", cancel=self._cancel, max_bytes=MAX_LOG_BYTES)
        if code != 0:
            log.error("%s: the prepare command failed (exit %s); its log: %s", self.name, code, log_path)
            raise PrepareFailed(self.name, socket.gethostname(), list(self.settings.prepare_command), code,
                                tail, str(log_path), output)
        self._prepared_digest = digest
        return {"prepared": True, "seconds": time.time() - t0}

    def cache_dir(self) -> Path:
        """The data cache train.py reads. The farm's harness: resolved as its prepare.py resolves
        CACHE_DIR: the configured cache_dir, else $AUTORESEARCH_CACHE, else
        $XDG_CACHE_HOME/autoresearch-farm (~/.cache/autoresearch-farm). An upstream-style harness: its
        own CACHE_DIR (moved to the configured cache_dir by the launcher), as its prepare.py says."""
        if self.settings.harness == "upstream" and self._layout.get("cache_dir"):
            return Path(self._layout["cache_dir"])
        configured = self.settings.cache_dir or os.environ.get("AUTORESEARCH_CACHE", "").strip()
        if configured:
            return Path(configured).expanduser()
        return Path(os.environ.get("XDG_CACHE_HOME", "").strip() or "~/.cache").expanduser() / "autoresearch-farm"

    def _frozen_data(self) -> list[Path]:
        """The prepared files every score depends on, which no run may change: the farm's tokenized
        data; an upstream harness's whole cache (its shards and its tokenizer, token_bytes.pt included)."""
        if self.settings.harness == "upstream":
            return [p for p in [self.cache_dir()] if p.is_dir()]
        return [p for p in [self.cache_dir() / "tokenized"] if p.is_dir()]

    def data_state(self) -> dict[str, tuple[int, int, int, int]]:
        """(size, mtime, ctime, inode) of every prepared file: any write, even one that restores
        the mtime, changes the ctime."""
        out = {}
        for root in self._frozen_data():
            for path in sorted(root.glob("**/*")):
                if path.name.startswith(".farm-"):  # the prepare lock
                    continue
                st = path.stat()
                out[str(path)] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        return out

    def hidden_paths(self) -> list[Path]:
        """What a training process must not read. The farm's harness: every prepared validation
        split, and the raw data. An upstream harness: exactly its validation shard (its training
        shards lie beside it, in the same folder, and training reads them)."""
        if self.settings.harness == "upstream":
            return [Path(p) for p in [self._layout.get("val_path")] if p and Path(p).exists()]
        cache = self.cache_dir()
        return sorted(cache.glob("tokenized/*/val*")) + [p for p in [cache / "data"] if p.is_dir()]

    def _view(self, writable: Sequence[Path], readable: Sequence[Path] = ()) -> View | None:
        """What a run may see of this node (None: no view asked for): ``writable`` and the node's
        compile caches read-write; the data cache, the hub cache (the kernels the prepare step
        fetched; not the rest of ``~/.cache/huggingface``, which holds the hub token), ``readable``
        and train.visible read-only."""
        if not self.settings.view:
            return None
        caches = [self.compile_cache / "inductor", self.compile_cache / "triton"]
        for c in caches:
            c.mkdir(parents=True, exist_ok=True)
        extra = [Path(p).expanduser() for p in self.settings.visible]
        hub = host.hub_cache({**os.environ, **(self.settings.env or {})})
        return View(writable=[*writable, *caches],
                    readable=[self.cache_dir(), *([hub] if hub.is_dir() else []), *readable, *extra])

    def _command(self, cmd: Sequence[str], launcher: Path | None, *, prepare: bool = False) -> list[str]:
        """``cmd`` as run; an upstream-style harness's through ``launcher`` (which moves its cache to
        train.cache_dir; for the prepare step it also fetches the hub kernels train.py loads at import)."""
        cmd = python_command(cmd)
        return host.command(cmd, launcher, prepare=prepare) if launcher and self.settings.harness == "upstream" else cmd

    def _describe(self, files: dict[str, bytes], digest: str) -> None:
        """An upstream harness's layout, once per distinct harness (:func:`worker.upstream.host.describe`)."""
        if self.settings.harness != "upstream" or self._layout.get("digest") == digest:
            return
        layout = host.describe(self.root / "describe", files, self.settings.editable or "train.py",
                               {**os.environ, **self._env()}, worker=self.name)
        self._layout = {**layout, "digest": digest}
        if not layout.get("val_path"):
            log.warning("%s: the harness names no validation shard (DATA_DIR/VAL_FILENAME): it cannot be hidden",
                        self.name)

    def _trusted_verdict(self, job: dict[str, Any], files: dict[str, bytes], outcome: RunOutcome,
                         summary: dict[str, Any], weights: Path, log_path: Path,
                         launcher: Path | None = None) -> tuple[str, str, Any, str]:
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
        if missing := self._not_handed_over(weights, launcher):
            return RunStatus.NO_METRIC.value, missing, None, outcome.log_tail
        s = self.settings
        eval_dir = self.root / "eval" / f"{job['id']}-a{job['attempt']}"
        shutil.rmtree(eval_dir, ignore_errors=True)
        eval_dir.mkdir(parents=True)
        write_tree(eval_dir, files)  # the commit's files, not the run directory the candidate could write
        out = eval_dir / "verdict.json"
        if launcher is None:
            (eval_dir / EVAL_SCRIPT).write_bytes(TRUSTED_EVAL.read_bytes())
            cmd = ["python", EVAL_SCRIPT, "--weights", str(weights), "--out", str(out)]
        else:
            for name in host.SCRIPTS:
                (eval_dir / name).write_bytes((launcher / name).read_bytes())
            cmd = ["python", host.UPSTREAM_EVAL, "--handoff", str(weights), "--out", str(out)]
        ev = run_training(
            python_command(cmd), eval_dir,
            log_path=log_path, budget_s=0.0, grace_s=float(s.grace), env_extra={**self._env(), **self._offline()},
            isolate_network=bool(s.isolate_network), cancel=self._cancel, readonly=self._frozen_data(),
            view=self._view([eval_dir], [weights.parent]),
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

    @staticmethod
    def _not_handed_over(weights: Path, launcher: Path | None) -> str | None:
        """Why there is nothing for the trusted evaluator to score, or None."""
        if launcher is not None:
            return host.not_handed_over(weights)
        if weights.is_file():
            return None
        return "the trained weights were not handed over: train.py must score its model with prepare.evaluate_bpb(model, ...)"

    def _offline(self) -> dict[str, str]:
        """The switches that tell Hugging Face libraries there is no network (the sandbox has none)."""
        return dict(OFFLINE) if self.settings.isolate_network else {}

    def cancel(self) -> None:
        """Kill the run in progress (its process tree); it reports status crash, reason cancelled."""
        self._cancel.set()

    def run(self, job: dict[str, Any], files: dict[str, bytes], harness_digest: str) -> dict[str, Any]:
        s = self.settings
        self._cancel.clear()
        self._describe(files, harness_digest)  # first: an upstream harness's cache is where its prepare.py says
        self.prepare(files, harness_digest)
        launcher = host.launcher_dir(self.root) if s.harness == "upstream" else None
        run_dir = self.root / "runs" / f"{job['id']}-a{job['attempt']}"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        write_tree(run_dir, files)
        log_path = self.root / "logs" / f"{job['cand']}-{job['id']}-a{job['attempt']}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.time()
        trusted = bool(s.trusted_eval)
        editable = s.editable or "train.py"
        handoff = self.root / "handoff"
        # outside the run dir: the farm harness's weights file; an upstream harness's hand-off prefix
        weights = handoff / f"{job['id']}-a{job['attempt']}{'' if launcher else '.pt'}"
        report = handoff / f"{job['id']}-a{job['attempt']}.report.json"
        env = {**self._env(), **self._offline()}
        if job.get("seed") is not None:  # prepare.seed() reads it: a new draw for every measurement
            env[SEED_ENV] = str(int(job["seed"]))
        frozen_data = self._frozen_data()
        if launcher is not None:
            handoff.mkdir(parents=True, exist_ok=True)
            report.unlink(missing_ok=True)
            env.update(host.run_env(report, frozen_data))
        data_before = self.data_state()
        scan = s.tripwire and editable in files  # in every trust mode; tests turn it off to reach the layers behind
        warning = tripwire.check(files[editable].decode("utf-8", "replace")) if scan else None
        if warning:  # refused before it runs: no GPU time spent on it
            with open(log_path, "ab") as f:
                f.write(f"=== not run: the tripwire caught {warning} ===\n".encode())
            outcome = RunOutcome(status=RunStatus.CHEAT.value, exit_code=None, wall_seconds=0.0, summary=None,
                                 log_tail="", reason=f"tripwire: {warning}")
        else:
            if trusted:
                weights.parent.mkdir(parents=True, exist_ok=True)
                for stale in host.handoff_files(weights):
                    stale.unlink(missing_ok=True)
                env[HANDOFF_ENV] = str(weights)
            self._live = (job["id"], CurveFollower(float(s.budget)), time.time())  # info() (the heartbeat) shows it
            try:
                outcome = run_training(
                    self._command(s.command, launcher / host.LAUNCHER if launcher else None), run_dir,
                    log_path=log_path, budget_s=float(s.budget), grace_s=float(s.grace),
                    env_extra=env, isolate_network=bool(s.isolate_network), cancel=self._cancel,
                    hide=self.hidden_paths() if trusted else (), on_progress=self._live[1].feed,
                    disk_quota_bytes=int(s.disk_quota_gb * 2**30) if s.disk_quota_gb else None,
                    readonly=[*frozen_data, *([launcher] if launcher else [])],
                    view=self._view([run_dir, *([handoff] if trusted or launcher else [])]),
                )
            finally:
                self._live = None
        summary = dict(outcome.summary or {})
        status, reason, tail = outcome.status, outcome.reason, outcome.log_tail
        containment = ",".join(outcome.containment) if not isinstance(outcome.containment, str) else outcome.containment
        train_wall = outcome.wall_seconds
        seen = host.read_json(report) if launcher is not None else {}
        if seen.get("governed_seconds") is not None:  # the training the budget governs (launch.py)
            summary["farm_governed_seconds"] = train_wall = float(seen["governed_seconds"])
        tampered = frozen_tampering(run_dir, files, s.frozen or ())
        if tampered:  # whatever it printed, its number cannot be trusted
            status, reason = RunStatus.CHEAT.value, tampered
        elif seen.get("cheat") and outcome.exit_code == upstream.CHEAT_EXIT:  # the launcher ended it
            status, reason = RunStatus.CHEAT.value, str(seen["cheat"])
        elif trusted and status != RunStatus.CHEAT.value:
            status, reason, val, tail = self._trusted_verdict(job, files, outcome, summary, weights, log_path,
                                                              launcher)
            summary["val_bpb"] = val
            containment = ",".join(filter(None, [containment, "trusted-eval"]))
        elif launcher is not None and status == RunStatus.OK.value and (fake := host.unreturned(summary, seen)):
            status, reason = RunStatus.CHEAT.value, fake
        if not trusted and status != RunStatus.CHEAT.value:
            containment = ",".join(filter(None, [containment, "printed-metric"]))
        if scan:
            containment = ",".join(filter(None, [containment, "tripwire"]))
        for done in (report, *host.handoff_files(weights)):
            done.unlink(missing_ok=True)
        if (changed := sorted({k for k, _ in self.data_state().items() ^ data_before.items()})):
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
            seed=job.get("seed"), denied=list(outcome.denied),
        )
        if trusted:  # the phases' own end lines judge each process alone; this is what the farm records
            with open(log_path, "ab") as f:
                f.write(f"=== farm verdict: {status} val_bpb={result.val_bpb} (trusted evaluation) "
                        f"{reason!r} ===\n".encode())
        with open(log_path, "rb") as f:
            f.seek(max(0, log_path.stat().st_size - MAX_LOG_BYTES))
            log_text = f.read().decode("utf-8", "replace")
        result.loss_curve = parse_curve(log_text, float(s.budget))  # the whole log, not the live curve's sampled lines
        shutil.rmtree(run_dir, ignore_errors=True)
        out = {"result": result.to_dict(), "log": log_text}
        if outcome.status == RunStatus.CRASH.value and outcome.reason == "killed by signal SIGKILL":
            # not the runner's kill (timeout, cancel, log limit) nor the cgroup's OOM kill: the host's OOM
            # killer, an operator, or the run itself; the controller re-runs it, up to workers.max_lost times
            out["lost"] = f"the training process on {self.name} was killed (SIGKILL) from outside the worker"
        return out
