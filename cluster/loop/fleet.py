"""The fleet: the loop's handles on its Ray actors, and every Ray call the loop makes.

:class:`Fleet` holds the workers: which runs are in flight, which workers Ray is restarting,
which heartbeats are out. :class:`ProposerCalls` holds the proposer actor's outstanding calls
(a round of proposals, repairs of crashed candidates). Both only move calls and answers; what to
do with an answer (record it, re-queue a job, admit a proposal) is the controller's and the
intake's. Tests that run the loop without Ray replace these two objects, not the loop's methods.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import ray

from cluster.records import Job
from worker.contract import PrepareFailed

# a worker call that failed because its actor died, was killed or was cancelled
WORKER_FAILURES = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                   ray.exceptions.TaskCancelledError, ray.exceptions.RayTaskError)


ERROR_CHARS = 600  # of a failed call's error, in the loop's lines and the job's record


def cause_of(e: BaseException) -> BaseException:
    """The error raised inside the actor, where Ray wrapped it (RayTaskError.cause); else ``e`` itself."""
    return e.cause if isinstance(e, ray.exceptions.RayTaskError) and e.cause is not None else e


def failure(e: BaseException) -> str:
    """A failed worker call in one line that ends in what went wrong. Ray's own text of an error
    raised inside the actor starts with the actor's repr and the remote traceback, so a cut of it
    keeps the noise and loses the message: the error the worker raised is said instead, and the end
    of a long message is kept, where Python puts the line that says what happened."""
    cause = cause_of(e)
    text = " ".join(str(cause).split())
    if len(text) > ERROR_CHARS:
        text = "..." + text[-ERROR_CHARS:]
    return f"{type(cause).__name__}: {text}"


@dataclass
class WorkerSlot:
    name: str  # where it runs, `<node-ip>:gpu<k>`; its actor is `<tag>:<name>`
    handle: Any  # ray.actor.ActorHandle
    info: dict[str, Any]


@dataclass
class InFlight:
    job: Job
    ref: Any
    started: float
    lost_at: float | None = None  # its lease expired and the job was re-queued; the slot waits for the ref
    killed: bool = False  # the silent worker was restarted
    preempted: bool = False  # cancelled to give the worker to the critical path: its job goes back to the queue


@dataclass
class Finished:
    """A worker call that came back: the worker's answer, or why the call failed."""

    name: str
    flight: InFlight
    out: dict[str, Any] | None
    error: str = ""
    prepare_failed: PrepareFailed | None = None  # the worker's prepare command failed: a run-level error


class Fleet:
    def __init__(self, slots: list[WorkerSlot]):
        self.slots = {s.name: s for s in slots}
        self.inflight: dict[str, InFlight] = {}
        self.restarting: dict[str, Any] = {}  # worker -> pending probe of a worker Ray is restarting
        self.pings: dict[str, tuple[Any, float]] = {}  # worker -> (pending heartbeat ping, sent at)
        self.last_ping: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self.slots)

    @property
    def names(self) -> list[str]:
        return list(self.slots)

    def free(self) -> list[str]:
        """Workers that can take a job now: neither running one nor being restarted."""
        return [n for n in self.slots if n not in self.inflight and n not in self.restarting]

    # ------------------------------------------------------------------ runs

    def put(self, files: dict[str, bytes]) -> Any:
        """Ship a commit's files to the object store once; every run of that commit reads them there."""
        return ray.put(files)

    def start(self, name: str, job: Job, files_ref: Any, digest: str) -> InFlight:
        ref = self.slots[name].handle.run.remote(job.to_dict(), files_ref, digest)
        flight = self.inflight[name] = InFlight(job, ref, time.time())
        return flight

    def collect(self, timeout: float) -> list[Finished]:
        """Wait up to ``timeout`` for the first run to come back, then take every other one done."""
        if not self.inflight:
            time.sleep(timeout)
            return []
        refs = {f.ref: name for name, f in self.inflight.items()}
        ready, rest = ray.wait(list(refs), num_returns=1, timeout=timeout)
        if ready and rest:
            ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        done = []
        for ref in ready:
            name = refs[ref]
            flight = self.inflight.pop(name)
            try:
                done.append(Finished(name, flight, ray.get(ref)))
            except WORKER_FAILURES as e:
                cause = cause_of(e)
                if isinstance(cause, PrepareFailed):
                    done.append(Finished(name, flight, None, str(cause), prepare_failed=cause))
                else:
                    done.append(Finished(name, flight, None, failure(e)))
        return done

    def preempt(self, name: str) -> None:
        """Cancel ``name``'s run so its job can go back to the queue (see Controller.preempt)."""
        self.inflight[name].preempted = True
        self.slots[name].handle.cancel.remote()

    def cancel_all(self, wait_s: float) -> None:
        """Cancel every run in flight and give them ``wait_s`` to kill their process trees."""
        for name in self.inflight:
            self.slots[name].handle.cancel.remote()
        refs = [f.ref for f in self.inflight.values()]
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=wait_s)
        self.inflight.clear()

    # ------------------------------------------------------------------ liveness

    def probe(self, name: str) -> None:
        """Ask a worker Ray is restarting whether it is back; no work goes to it until it answers."""
        self.restarting[name] = self.slots[name].handle.info.remote()

    def back(self) -> list[str]:
        """The workers that answered their probe since the last call (they are in service again)."""
        if not self.restarting:
            return []
        refs = {ref: name for name, ref in self.restarting.items()}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        back = []
        for ref in ready:
            name = refs[ref]
            try:
                self.slots[name].info = ray.get(ref)
            except ray.exceptions.RayActorError:
                self.probe(name)  # still restarting: ask again
                continue
            del self.restarting[name]
            back.append(name)
        return back

    def answered_pings(self) -> list[tuple[str, dict[str, Any]]]:
        """(worker, info) for each heartbeat answered since the last call; a dead worker's ping is
        dropped (its run's call fails too, and the controller re-queues the job)."""
        if not self.pings:
            return []
        refs = {ref: name for name, (ref, _) in self.pings.items()}
        answers = []
        for ref in ray.wait(list(refs), num_returns=len(refs), timeout=0)[0]:
            name = refs[ref]
            del self.pings[name]
            try:
                answers.append((name, ray.get(ref)))
            except ray.exceptions.RayError:
                pass
        return answers

    def ping(self, every_s: float, now: float) -> None:
        """Ping each worker in service whose last ping is ``every_s`` old (a thread of its own
        answers, even mid-run)."""
        for name, slot in self.slots.items():
            if name not in self.pings and name not in self.restarting and \
                    now - self.last_ping.get(name, 0.0) >= every_s:
                self.pings[name] = (slot.handle.info.remote(), now)
                self.last_ping[name] = now

    def silent(self, after_s: float, now: float) -> list[str]:
        """Workers running a job not yet given up on whose ping is unanswered for ``after_s``."""
        return [name for name, flight in self.inflight.items()
                if flight.lost_at is None and name in self.pings and now - self.pings[name][1] > after_s]

    def restart(self, name: str) -> None:
        """Kill a silent worker; Ray restarts it (its actor has unlimited restarts)."""
        ray.kill(self.slots[name].handle, no_restart=False)


class ProposerCalls:
    """The proposer actor's outstanding calls: at most one round of proposals, and repairs."""

    def __init__(self, handle: Any):
        self.handle = handle
        self.round: Any = None  # pending propose() call
        self.repairs: dict[Any, str] = {}  # pending repair ref -> crashed candidate id
        self._status: Any = None  # pending status() call, queued behind the round it reports on

    @property
    def asking(self) -> bool:
        return self.round is not None

    def ask(self, n: int, history: Any) -> None:
        self.round = self.handle.propose.remote(n, history)
        if self._status is None:
            try:  # the actor runs one call at a time: this one answers once the round is done
                self._status = self.handle.status.remote()
            except AttributeError:  # a proposer without status() (a test's scripted one)
                self._status = None

    def status(self) -> dict[str, Any] | None:
        """The proposer's status() (its last error, its usage) as of its latest round, once it has
        come back; None until then, or when it could not be had."""
        if self._status is None or not ray.wait([self._status], timeout=0)[0]:
            return None
        ref, self._status = self._status, None
        try:
            got = ray.get(ref)
        except ray.exceptions.RayError:
            return None
        return got if isinstance(got, dict) else None

    def answer(self) -> tuple[bool, list[Any], str]:
        """(whether the round came back, its proposals, why it failed)."""
        if self.round is None or not ray.wait([self.round], timeout=0)[0]:
            return False, [], ""
        ref, self.round = self.round, None
        try:
            return True, ray.get(ref), ""
        except ray.exceptions.RayError as e:
            return True, [], failure(e)

    def repair(self, cid: str, meta: dict[str, Any], source: str, log_tail: str, tried: set[str]) -> None:
        self.repairs[self.handle.repair.remote(meta, source, log_tail, tried)] = cid

    def repaired(self) -> list[tuple[str, Any, str]]:
        """(crashed candidate, its fix or None, why the call failed) for each repair that came back."""
        if not self.repairs:
            return []
        ready, _ = ray.wait(list(self.repairs), num_returns=len(self.repairs), timeout=0)
        out = []
        for ref in ready:
            cid = self.repairs.pop(ref)
            try:
                out.append((cid, ray.get(ref), ""))
            except ray.exceptions.RayError as e:
                out.append((cid, None, failure(e)))
        return out
