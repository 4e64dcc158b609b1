"""The controller actor, `<tag>:controller`: the controller loop in a process of its own."""

from __future__ import annotations

import os
import threading
from typing import Any

import ray

from cluster.actors.placement import NAMESPACE, node_here
from cluster.config import FarmConfig
from cluster.errors import FarmError
from cluster.loop.fleet import WorkerSlot


class ControllerActor:
    """The controller loop (dispatch, collect, judge, merge) in an actor of its own, `<tag>:controller`.

    It opens the run's repository, run directory and store itself, so it must run on the node that
    holds them: `start_controller` pins it to the driver's node. Its `run` call holds one thread for
    the whole run; `stop`, `lines` and `where` answer from others meanwhile. The driver prints the
    lines the loop reports as they come (a `lines` call waits for the next) and asks it to `stop`
    on Ctrl-C or SIGTERM."""

    def __init__(self, cfg: FarmConfig, tag: str, repo_path: str, redis_url: str, run_dir: str,
                 workers: list[WorkerSlot], proposer: Any):
        from pathlib import Path

        from cluster.loop.controller import Controller
        from cluster.loop.fleet import Fleet, ProposerCalls
        from cluster.repo import FarmRepo
        from cluster.store import Store
        from cluster.store.server import connect

        self._lines: list[str] = []
        self._new_line = threading.Condition()
        self.repo = FarmRepo(Path(repo_path), editable=cfg.run.editable, frozen=tuple(cfg.run.frozen))
        self.r = connect(redis_url)
        store = Store(self.r, tag, prefix=cfg.store.prefix)
        self.ctrl = Controller(cfg, tag, store, self.repo, Fleet(workers), ProposerCalls(proposer), Path(run_dir),
                               report=self._report)

    def _report(self, line: str) -> None:
        with self._new_line:
            self._lines.append(line)
            self._new_line.notify_all()

    def where(self) -> dict[str, Any]:
        return {**node_here(), "pid": os.getpid()}

    def run(self, resume: bool) -> str:
        """Start (or resume) the run, step until it ends, then stop cleanly; returns why it ended."""
        try:
            self.ctrl.start(resume)
            why = self.ctrl.run()
        finally:
            self.ctrl.shutdown()
        self._report(self.ctrl.progress_line())
        return why

    def stop(self) -> None:
        self.ctrl.stop_requested = True

    def lines(self, wait_s: float = 0.0) -> list[str]:
        """The lines reported since the last call, waiting up to wait_s for one when there are none."""
        with self._new_line:
            if not self._lines and wait_s > 0:
                self._new_line.wait(wait_s)
            out, self._lines = self._lines, []
        return out


def start_controller(cfg: FarmConfig, tag: str, repo_path: str, redis_url: str, run_dir: str,
                     workers: list[WorkerSlot], proposer: Any) -> tuple[Any, dict[str, Any]]:
    """The controller actor, on this (the driver's) node, and where it runs (node, pid)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    try:
        handle = ray.remote(ControllerActor).options(
            name=f"{tag}:controller", namespace=NAMESPACE, get_if_exists=False, num_cpus=0, max_restarts=0,
            max_concurrency=4, scheduling_strategy=here,
        ).remote(cfg, tag, repo_path, redis_url, run_dir, workers, proposer)
    except ValueError as e:  # the name is taken: this run's controller already runs on this cluster
        raise FarmError(f"run {tag} already has a controller on this Ray cluster ({e}); stop it first") from None
    return handle, ray.get(handle.where.remote(), timeout=120)
