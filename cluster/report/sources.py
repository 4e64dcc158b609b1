"""Where the dashboard reads a run: the local store (as `status` opens it) or a cluster's head (as
`status --address` asks it: a short Ray job running `dashboard --snapshot` there).

Both give :func:`cluster.report.dashboard.run_view` and ``candidate_view`` dictionaries, so the
server (cluster/report/web.py) and the pages never know which one they have.
"""

from __future__ import annotations

import json
import logging
import threading
from contextlib import ExitStack
from typing import Any

from cluster.config import FarmConfig
from cluster.errors import FarmError
from cluster.report.dashboard import candidate_view, run_view

log = logging.getLogger(__name__)


class LocalSource:
    """A run in this repository's store: the embedded Redis (started from its AOF when no farm process
    has it running, and stopped again on close unless a run is running in it) or `--redis`. The run's own
    process stops an embedded server when the run ends; a read that finds it gone opens it again."""

    def __init__(self, cfg: FarmConfig) -> None:
        self.cfg, self.lock, self.stack, self.ctx = cfg, threading.Lock(), None, None

    def _open(self) -> Any:
        from cluster.launch import open_run
        from cluster.store import Store

        if self.ctx is None:
            self.stack = ExitStack()
            ctx = open_run(self.cfg, self.stack)
            if ctx.store.run_meta() is None:
                runs = Store.list_runs(ctx.store.r, self.cfg.store.prefix)
                self.close()
                hint = f"runs in this store: {', '.join(runs)}" if runs else "no runs in this store yet"
                raise FarmError(f"no run {ctx.tag!r} ({hint}); pass --tag")
            self.ctx = ctx
        return self.ctx

    def _read(self, fn: Any) -> dict[str, Any]:
        import redis

        with self.lock:  # one repository handle (a git process) and one store for every page
            for attempt in (1, 2):
                try:
                    return fn(self._open())
                except (redis.ConnectionError, redis.TimeoutError):
                    self.close()
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    def run(self) -> dict[str, Any]:
        return self._read(lambda ctx: run_view(ctx.store))

    def candidate(self, cand_id: str) -> dict[str, Any]:
        return self._read(lambda ctx: candidate_view(ctx.store, ctx.repo, cand_id))

    def close(self) -> None:
        stack, self.stack, self.ctx = self.stack, None, None
        if stack is not None:
            try:
                stack.close()
            except Exception:  # the server it had is gone already (the run's process stopped it): nothing to stop
                log.debug("closing the dashboard's store", exc_info=True)


class RemoteSource:
    """A run on a Ray cluster, read on its head through the Jobs API: each read is a short job (seconds),
    so the dashboard asks at most once per interval, whatever the number of open pages."""

    def __init__(self, address: str | None, repo: str, tag: str | None, *, token: str | None, head_home: str) -> None:
        self.address, self.repo, self.tag, self.token, self.home = address, repo, tag, token, head_home

    def _ask(self, extra: list[str]) -> dict[str, Any]:
        from cluster.remote import client as remote

        rc, out, err = remote.remote_cli(self.address, self.repo, ["dashboard", "--snapshot", *extra], tag=self.tag,
                                         token=self.token, head_home=self.home)
        if rc:
            raise FarmError(err.strip().removeprefix("autoresearch-farm: error: ") or "the cluster could not read the run")
        return json.loads(out)

    def run(self) -> dict[str, Any]:
        return self._ask([])

    def candidate(self, cand_id: str) -> dict[str, Any]:
        return self._ask(["--candidate", cand_id])

    def close(self) -> None:
        pass
