"""Helpers for the farm's end-to-end tests: a target repository, a scripted proposer, a farm.

The farm parts are all real (Ray actors on a local Ray with logical GPUs, an embedded
redis-server, git through GitPython). The one scripted part is the training command
(tests/fixtures/scripted_train.py), so a test can plant a known improvement, crash or hang.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
from contextlib import ExitStack
from pathlib import Path

import psutil
import ray

from cluster.actors import placement, proposer as proposer_actor
from cluster.config import FarmConfig
from cluster.loop.controller import Controller
from cluster.loop.fleet import Fleet, ProposerCalls
from cluster.launch import open_run
from proposer.base import Proposal

FIXTURES = Path(__file__).parent / "fixtures"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def make_repo(path: Path, train_source: str | None = None) -> Path:
    """A git repository shaped like an autoresearch target: train.py + a frozen prepare.py."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    (path / "train.py").write_text(train_source or (FIXTURES / "scripted_train.py").read_text())
    (path / "prepare.py").write_text('"""frozen harness stand-in"""\n')
    git(path, "add", "train.py", "prepare.py")
    git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "baseline")
    return path


def set_constants(source: str, changes: dict[str, str]) -> str:
    """Replace the literal of `NAME = literal  # comment` lines."""
    for name, value in changes.items():
        source, n = re.subn(rf"^({name} = )([^#\n]*?)(\s*#.*)?$", lambda m: m.group(1) + value + (m.group(3) or ""),
                            source, count=1, flags=re.M)
        assert n == 1, f"no constant {name}"
    return source


class ScriptedProposer:
    """Proposes a fixed list of edits, in order, then nothing (the test's planted candidates)."""

    def __init__(self, edits: list[tuple[str, dict[str, str]]]):
        self.edits = list(edits)

    def propose(self, n, history):
        out = []
        while self.edits and len(out) < n:
            desc, changes = self.edits.pop(0)
            out.append(Proposal(desc, set_constants(history.base_source, changes), "human", {"changes": changes}))
        return out

    def left(self) -> int:
        return len(self.edits)


def farm_config(repo: Path, **overrides) -> FarmConfig:
    base = {
        "run.repo": str(repo), "run.tag": "t1", "train.budget": 1.0, "train.grace": 20.0,
        "train.prepare_command": [], "train.trusted_eval": False, "workers.count": 2, "judge.baseline_runs": 3,
        "proposer.queue_margin": 1,
    }
    base.update(overrides)
    return FarmConfig().with_overrides(base)


class Farm:
    """A controller wired to real services, for one test."""

    def __init__(self, cfg: FarmConfig, edits=None, resume: bool = False, program: str = ""):
        """edits: the scripted proposer's list; None = the proposer the config names (real)."""
        self.stack = ExitStack()
        self.cfg = cfg
        self.ctx = open_run(cfg, self.stack, keep_alive=True)
        if not resume:
            self.ctx.store.create_run({"tag": self.ctx.tag, "status": "running"})
        self.workers = placement.start_workers(cfg, self.ctx.tag, str(self.ctx.run_dir / "workers"))
        self.stack.callback(placement.stop_workers, self.workers)
        if edits is None:
            self.proposer = proposer_actor.start_proposer(cfg, self.ctx.tag, "cpu", program)
        else:
            self.proposer = ray.remote(ScriptedProposer).options(num_cpus=0).remote(edits)
        self.stack.callback(placement.kill_actors, [self.proposer])
        self.lines: list[str] = []
        self.ctrl = Controller(cfg, self.ctx.tag, self.ctx.store, self.ctx.repo, Fleet(self.workers),
                               ProposerCalls(self.proposer), self.ctx.run_dir, report=self.lines.append)
        self.ctrl.start(resume)

    @property
    def store(self):
        return self.ctx.store

    @property
    def repo(self):
        return self.ctx.repo

    def run(self) -> str:
        try:
            return self.ctrl.run()
        finally:
            self.ctrl.shutdown()

    def close(self):
        self.ctx.store.update_run(status="done")
        self.stack.close()

    def by_description(self):
        return {c.description: c for c in self.store.candidates()}


def training_process(job) -> psutil.Process | None:
    """The scripted train.py process of this attempt of ``job`` once its training is under way
    (it has written ``training.started`` in its run directory), else None."""
    for p in psutil.process_iter(["cmdline", "cwd"]):
        cmd, cwd = p.info["cmdline"] or [], p.info["cwd"] or ""
        if cmd[-1:] == ["train.py"] and cwd.endswith(f"/runs/{job.id}-a{job.attempt}") \
                and (Path(cwd) / "training.started").exists():
            return p
    return None


class WorkerKiller:
    """Kills the Ray worker of every scripted run that asks for it (``kill-worker.please`` in its run
    directory): a run in its own view and PID namespace cannot reach its worker, so a candidate that
    kills its worker is modelled from outside, as the farm sees it: the worker dies with the run."""

    def __init__(self) -> None:
        self.stop, self.killed = threading.Event(), 0
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        done: set[int] = set()
        while not self.stop.wait(0.1):
            for p in psutil.process_iter(["cmdline", "cwd"]):
                cwd = p.info["cwd"] or ""
                if p.pid in done or (p.info["cmdline"] or [])[-1:] != ["train.py"] \
                        or not (Path(cwd) / "kill-worker.please").exists():
                    continue
                done.add(p.pid)
                try:
                    for parent in p.parents():
                        if parent.cmdline()[:1] and parent.cmdline()[0].startswith("ray::"):
                            parent.kill()
                            self.killed += 1
                            break
                except psutil.Error:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def copy_fixture(name: str, dest: Path) -> Path:
    shutil.copy(FIXTURES / name, dest)
    return dest


# a farm config for the scripted training command: short runs, no data preparation, 2 CPU workers
SCRIPTED_CONFIG = """
[train]
budget = 1.0
grace = 20.0
prepare_command = []
trusted_eval = false  # the scripted train.py prints its own val_bpb
[workers]
count = 2
gpus_per_worker = 0.0
[judge]
baseline_runs = 2
[proposer]
exclude = ["SEED", "MODE", "SLEEP", "NOISE", "JITTER"]
"""


def http_get(url: str) -> tuple[int, str]:
    """A GET's status and body, an HTTP error's too."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shutdown_redis(url: str) -> None:
    """SHUTDOWN a Redis server the test started (flushing its AOF); it may close the connection first."""
    import redis

    r = redis.Redis.from_url(url)
    try:
        r.shutdown(nosave=False)
    except redis.ConnectionError:
        pass
    r.close()
