"""Opening a run and running the farm: what `autoresearch-farm run` (and every local look) starts.

Opening a run (`open_run`): the target repository (`open_repo`), the Redis that holds its records
(the one `store.redis` names, else an embedded server under the repository's .git directory,
`repo_farm_dir`, so the user's working tree never sees a file of ours), the run's store on it, and
its run directory for the logs. Running the farm (`run_farm`): Ray (joined or started), the
pre-flight (:mod:`cluster.preflight`: what the target is, or every reason it cannot run), the worker
actors (one per GPU), the proposer actor and the controller actor, whose loop runs the run; this
process prints what the controller reports, passes a Ctrl-C / SIGTERM on as a stop, and records how
the run ended.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import signal
import subprocess
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from cluster.config import FarmConfig
from cluster.errors import ConfigError, FarmError, RepoError, RunFailed
from cluster.preflight import PreflightRefused, preflight
from cluster.store.server import EmbeddedRedis, check_exposure, connect
from cluster.repo import FarmRepo, main_branch
from cluster.store import Store

log = logging.getLogger(__name__)


def default_tag(today: dt.date | None = None) -> str:
    """Today's date as autoresearch names its runs, e.g. nov25."""
    d = today or dt.date.today()
    return d.strftime("%b").lower() + str(d.day)


def repo_farm_dir(repo: Path) -> Path:
    """<repo>/.git/autoresearch-farm: the run dirs and the embedded Redis (worktrees share it)."""
    try:
        common = subprocess.run(["git", "rev-parse", "--git-common-dir"], cwd=repo, capture_output=True,
                                text=True, check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        raise RepoError(f"{repo} is not a git repository; pass --repo PATH of one whose train.py the farm researches") from None
    return (repo / common).resolve() / "autoresearch-farm"


def _stop_if_idle(server: EmbeddedRedis, url: str, prefix: str) -> None:
    """Stop the embedded server unless a run in it is still marked running (another farm
    process using the same repository) or another process is connected to it: a run starting
    (not marked running yet), a dashboard, a `status` in another terminal. The last one out
    stops it. Its AOF keeps everything for `--resume`."""
    r = connect(url, retry_seconds=2)
    try:
        busy = [t for t in Store.list_runs(r, prefix) if (Store(r, t, prefix).run_meta() or {}).get("status") == "running"]
        others = len(r.client_list()) - 1  # (this connection is one)
    finally:
        r.close()
    if busy:
        log.info("leaving the embedded Redis running: run(s) %s still use it", ", ".join(busy))
    elif others > 0:
        log.info("leaving the embedded Redis running: %d other client(s) are connected", others)
    else:
        server.stop()


@dataclass
class RunContext:
    cfg: FarmConfig
    tag: str
    repo: FarmRepo
    store: Store
    run_dir: Path
    redis_url: str
    repo_path: Path


def open_repo(cfg: FarmConfig, stack: ExitStack) -> FarmRepo:
    repo = FarmRepo(Path(cfg.run.repo).expanduser().resolve(), editable=cfg.run.editable,
                    frozen=tuple(cfg.run.frozen))
    stack.callback(repo.close)
    return repo


def open_run(cfg: FarmConfig, stack: ExitStack, *, tag: str | None = None, keep_alive: bool = False) -> RunContext:
    """Open the repository and the store of a run (starting the embedded Redis when needed)."""
    repo_path = Path(cfg.run.repo).expanduser().resolve()
    farm_dir = repo_farm_dir(repo_path)
    tag = tag or cfg.run.tag or default_tag()
    repo = open_repo(cfg, stack)
    if cfg.store.redis:
        url = cfg.store.redis
        check_exposure(url)
    else:
        server = EmbeddedRedis(farm_dir / "redis", appendfsync=cfg.store.appendfsync)
        url = server.start()
        stack.callback(_stop_if_idle, server, url, cfg.store.prefix)
        if keep_alive:
            stack.callback(server.keep_alive())  # a killed server is restarted from its AOF
    r = connect(url)
    stack.callback(r.close)
    run_dir = Path(cfg.run.run_dir).expanduser() if cfg.run.run_dir else farm_dir / "runs" / tag
    run_dir.mkdir(parents=True, exist_ok=True)
    return RunContext(cfg, tag, repo, Store(r, tag, prefix=cfg.store.prefix), run_dir, url, repo_path)


def _proposer_inputs(cfg: FarmConfig, ctx: RunContext, report: Callable[[str], None]) -> tuple[str, dict[str, str]]:
    """The research program and the files an LLM or agent reads, from the run's start commit."""
    if cfg.proposer.kind == "mutate" and not set(cfg.proposer.mix) - {"mutate"}:  # a mix may bring in an llm or agent
        return "", {}
    start = ctx.repo.resolve("HEAD")
    try:
        program = ctx.repo.read_file(start, cfg.proposer.program)
    except RepoError:
        report(f"warning: {cfg.proposer.program} is not in the repository; the {cfg.proposer.kind} proposer "
               "works without a research program")
        program = ""
    files = {}
    for path in cfg.proposer.agent_files:
        try:
            files[path] = ctx.repo.read_file(start, path)
        except RepoError:
            report(f"warning: proposer.agent_files names {path}, which is not in the repository")
    if "agent" in (cfg.proposer.kind, *cfg.proposer.mix):
        from proposer.agent import start_notes

        try:
            notes = start_notes(dataclasses.asdict(cfg.proposer))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        for note in notes:
            report(f"warning: {note}")
    return program, files


WHY_CHARS = 8000  # of a run-level error's message in the run's record: its output's tail is in it
LINES_WAIT_S = 1.0  # how long one call for the controller's lines waits for one
STOP_POLL_S = 0.1  # how soon a Ctrl-C / SIGTERM reaches the controller


def _gpus_before_ray(cfg: FarmConfig, ray_address: str) -> float | None:
    """The GPUs the workers will have, where that is known before Ray starts: none for CPU workers;
    this machine's for a local Ray (it is started here, with them); None (unknown) for a cluster."""
    import os

    if cfg.workers.gpus_per_worker <= 0:
        return 0.0
    if ray_address or os.environ.get("RAY_ADDRESS", "").strip():
        return None
    import torch

    return float(torch.cuda.device_count())


def run_farm(cfg: FarmConfig, *, resume: bool = False, report: Callable[[str], None] = print,
             ray_address: str = "", dashboard: bool = True, metrics_port: int | None = None) -> str:
    """Run the farm until it is done, stopped (Ctrl-C / SIGTERM) or out of time. Returns why it ended.

    The controller loop runs in the actor `<tag>:controller` on this node (see cluster.actors); this
    process starts the run's services and actors, prints what the controller reports, passes a
    stop on, and records how the run ended."""
    import ray

    from cluster.actors import controller as controller_actor, placement, proposer as proposer_actor
    from cluster.loop.fleet import cause_of

    with ExitStack() as stack:
        ctx = open_run(cfg, stack, keep_alive=True)
        meta = ctx.store.run_meta()
        if resume and meta is None:
            raise FarmError(f"no run {ctx.tag} to resume in this store; start it without --resume")
        if not resume:
            try:
                ctx.repo.main_line(ctx.tag)
            except RepoError:
                pass  # no such branch yet: a new run
            else:
                raise RepoError(f"run tag {ctx.tag} already exists (branch {main_branch(ctx.tag)}); "
                                f"pass --resume to continue it or choose another --tag")
        commit = _start_commit(ctx, resume)
        try:  # what can be refused without the cluster's GPU count is refused before Ray starts: at once
            preflight(cfg, ctx.repo, _gpus_before_ray(cfg, ray_address), commit=commit, report=lambda line: None)
        except PreflightRefused as e:
            for line in e.lines:
                report(line)
            raise
        started_ray = placement.init_ray(ray_address, dashboard=dashboard, metrics_port=metrics_port)
        if started_ray:
            stack.callback(ray.shutdown)
        # what the target is, said before any worker starts; a refusal raises here, before the run exists
        pre = preflight(cfg, ctx.repo, ray.cluster_resources().get("GPU", 0), commit=commit, report=report)
        cfg = pre.cfg  # train.harness resolved, an upstream harness's budget set
        ctx = replace(ctx, cfg=cfg)
        gpu = placement.uses_gpus(cfg)
        profile = cfg.proposer.profile if cfg.proposer.profile != "auto" else ("gpu" if gpu else "cpu")
        workers = placement.start_workers(cfg, ctx.tag, str(ctx.run_dir.resolve() / "workers"))
        stack.callback(placement.stop_workers, workers)
        proposer = proposer_actor.start_proposer(cfg, ctx.tag, profile, *_proposer_inputs(cfg, ctx, report),
                                                 watch=(str(ctx.repo_path), os.getcwd()))
        stack.callback(placement.kill_actors, [proposer])
        ctrl, where = controller_actor.start_controller(cfg, ctx.tag, str(ctx.repo_path), ctx.redis_url,
                                                str(ctx.run_dir.resolve()), workers, proposer)
        stack.callback(placement.kill_actors, [ctrl])
        stops: list[int] = []

        def request_stop(signum, frame):
            stops.append(signum)
            if len(stops) > 1:
                raise KeyboardInterrupt

        old = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        stack.callback(lambda: [signal.signal(s, h) for s, h in old.items()])
        if not resume:  # recorded only once everything is up: a failed start leaves no half run behind
            pinned = cfg.with_overrides({"run.repo": str(ctx.repo_path), "run.tag": ctx.tag})
            ctx.store.create_run({"tag": ctx.tag, "repo": str(ctx.repo_path), "created": time.time(),
                                  "config": pinned.to_dict(), "status": "running"})
        ctx.store.update_run(status="running", redis=ctx.redis_url, run_dir=str(ctx.run_dir), harness=pre.meta(),
                             controller={"actor": f"{ctx.tag}:controller", **where},
                             workers={w.name: f"{ctx.tag}:{w.name}" for w in workers})
        try:
            why = _wait_for(ctrl, ctrl.run.remote(resume), stops, report)
        except ray.exceptions.RayActorError as e:  # its process died: nothing re-queued its running jobs
            ctx.store.update_run(status="crashed", ended=time.time(), why=f"the controller died: {e}"[:500])
            raise FarmError(f"the controller of run {ctx.tag} (actor {ctx.tag}:controller, pid {where['pid']}) "
                            f"died; `--resume` continues the run") from None
        except BaseException as e:  # recorded, so `status` says so and the embedded Redis is not kept for it
            cause = cause_of(e)
            if isinstance(cause, RunFailed):  # a run-level error: its message is the record, whole (`status` shows it)
                ctx.store.update_run(status="failed", ended=time.time(), why=str(cause)[:WHY_CHARS])
                raise cause from None
            ctx.store.update_run(status="crashed", ended=time.time(), why=f"{type(cause).__name__}: {cause}"[:500])
            if isinstance(cause, FarmError):
                raise cause from None  # the controller's own error, said as it said it
            raise
        ctx.store.update_run(status="stopped" if why == "stopped" else "done", ended=time.time(), why=why)
        report(f"run {ctx.tag} ended: {why}. Results: autoresearch-farm results --tag {ctx.tag}")
        return why


def _start_commit(ctx: RunContext, resume: bool) -> str:
    """The commit whose harness the run uses: a resumed run's main line, else HEAD (never the work tree)."""
    if resume:
        try:
            return ctx.repo.main_line(ctx.tag)
        except RepoError:
            pass
    return "HEAD"


def _wait_for(ctrl, run_ref, stops: list[int], report: Callable[[str], None]) -> str:
    """Print the controller's lines as they come until its run ends; pass the first Ctrl-C /
    SIGTERM on as a stop (a second one aborts here, with KeyboardInterrupt)."""
    import ray

    asked = False
    lines = ctrl.lines.remote(LINES_WAIT_S)
    while True:
        ready, _ = ray.wait([lines, run_ref], num_returns=1, timeout=STOP_POLL_S)
        if stops and not asked:
            report("stopping: running candidates go back to the queue (Ctrl-C again to abort)")
            ctrl.stop.remote()
            asked = True
        if lines in ready:
            for line in ray.get(lines):
                report(line)
            lines = ctrl.lines.remote(LINES_WAIT_S)
        if ray.wait([run_ref], timeout=0)[0]:
            for line in ray.get(lines) + ray.get(ctrl.lines.remote()):  # the last ones
                report(line)
            return ray.get(run_ref)
