"""The controller: the one loop that executes. It asks the proposer, dispatches jobs to idle
workers, records results, asks the judge, and moves the main line.

The proposer and the judge are pure policies; only this loop talks to git (FarmRepo), Ray (the
worker and proposer actors) and Redis (Store). Everything the loop decides is written to the
store before it acts on it, so a controller killed at any point can be resumed from Redis:
jobs that were running are re-queued (their late results are refused by the attempt fence),
finished candidates are judged, and the main-line ref in git is the source of truth for merges.

One step:
  1. collect finished worker calls: record each result (fenced by its attempt), or re-queue the
     job of a worker that died;
  2. re-queue jobs whose lease expired (a hung or stopped worker);
  3. judge finished candidates once the main line's own measurements are in;
  4. keep the queue at one pending candidate per worker plus a margin (ask the proposer);
  5. hand the next job to every idle worker; a queued candidate proposed on an older main line is
     rebased onto the current one as a worker takes it (a merge itself rebases nothing).

The loop's cost per experiment does not grow with the number of workers: open jobs are counted
in memory (rebuilt from Redis on start and resume), a proposal round's git work is batched
(Intake.admit_round), and the proposer's history and the progress line are read incrementally.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import ray

from cluster.loop import judge as judge_policy
from cluster.config import FarmConfig
from cluster.errors import FencedWrite
from cluster.loop.metrics import FarmMetrics
from cluster.loop.intake import Intake
from cluster.records import FINAL_STATES, PENDING_STATES, Candidate, Job, Purpose, Result, RunStatus, State, values
from cluster.loop.fleet import WorkerSlot
from cluster.repo import FarmRepo, RebaseStatus
from cluster.store import Store

log = logging.getLogger(__name__)

PENDING = values(PENDING_STATES)
JUDGED = values(FINAL_STATES - {State.INVALID})  # experiments that ended (a refused patch never ran)
POLL_S = 0.2
REPORT_S = 10.0  # seconds between progress lines
GAUGES_S = 2.0  # seconds between refreshes of the metric gauges
CANCEL_WAIT_S = 30.0  # a cancelled run needs a moment to kill its tree and remove its cgroup
LEASES_S = 1.0  # seconds between scans for expired leases (leases last minutes)


@dataclass
class InFlight:
    job: Job
    ref: Any
    started: float
    lost_at: float | None = None  # its lease expired and the job was re-queued; the slot waits for the ref
    killed: bool = False  # the silent worker was restarted


@dataclass
class Stats:
    started: float = field(default_factory=time.time)
    busy_seconds: float = 0.0
    dispatch_gaps: list[float] = field(default_factory=list)


class Controller:
    def __init__(self, cfg: FarmConfig, tag: str, store: Store, repo: FarmRepo, workers: list[WorkerSlot],
                 proposer: Any, run_dir: Path, report: Callable[[str], None] | None = None):
        self.cfg, self.tag, self.store, self.repo = cfg, tag, store, repo
        self.workers = {w.name: w for w in workers}
        self.proposer = proposer
        self.run_dir = run_dir
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.report = report or (lambda line: log.info("%s", line))
        self.jcfg = judge_policy.JudgeConfig(
            baseline_runs=cfg.judge.baseline_runs, confirm=cfg.judge.confirm, noise_k=cfg.judge.noise_k,
            default_noise=cfg.judge.default_noise, min_noise=cfg.judge.min_noise,
            bpb_per_line=cfg.judge.bpb_per_line, simplify_merges=cfg.judge.simplify_merges,
            max_vram_mb=cfg.judge.max_vram_mb or None, max_overtime=cfg.judge.max_overtime,
        )
        self.inflight: dict[str, InFlight] = {}
        self.restarting: dict[str, Any] = {}  # worker -> pending probe of a worker Ray is restarting
        self.pings: dict[str, tuple[Any, float]] = {}  # worker -> (pending heartbeat ping, sent at)
        self.last_ping: dict[str, float] = {}
        self.idle_since: dict[str, float] = {name: time.time() for name in self.workers}
        self.intake = Intake(self)
        self.metrics = FarmMetrics(tag)
        self.stop_requested = False
        self.stats = Stats()
        # the runner kills a run at budget + grace itself, so a healthy worker always answers in time
        self.lease_s = cfg.train.budget + cfg.train.grace + cfg.workers.lease_slack
        self._file_refs: dict[str, tuple[Any, str]] = {}  # commit -> (object ref of its files, harness digest)
        self._last_report = self._last_gauges = self._last_leases = 0.0
        # the controller is the only writer of results: index them in memory, loaded once
        self._by_commit: dict[str, list[Result]] = {}
        for r in store.results():
            self._by_commit.setdefault(r.commit, []).append(r)
        self._dirty = True  # something the judge should look at changed
        # the controller is also the only writer of jobs: the open (queued or running) ones are
        # counted in memory, per candidate and per commit, instead of scanning Redis each step
        self._open: dict[str, tuple[str, str]] = {}  # job id -> (candidate, commit)
        self._open_by_cand: Counter[str] = Counter()
        self._open_by_commit: Counter[str] = Counter()
        self._bases: dict[str, str] = {}  # candidate with open jobs -> its base, as last written
        self._rebuild_open()
        self.main: str = (store.run_meta() or {}).get("main", "")  # the main line's sha, kept with run meta
        self._baseline_judged = False

    # ------------------------------------------------------------------ start and resume

    def start(self, resume: bool) -> None:
        meta = self.store.run_meta()
        if resume:
            requeued = self.store.requeue_all_running("controller restarted", self.cfg.workers.max_lost)
            for job_id, outcome in requeued:
                cand = self.store.get_job(job_id).cand
                if outcome == "failed":
                    self._fail_candidate(cand, "lost with its worker too many times")
                else:
                    self.store.transition(cand, {State.RUNNING.value}, State.QUEUED.value)
            self._rebuild_open()
            self.report(f"resumed run {self.tag}: main line {meta['main'][:8]}, {len(requeued)} running job(s) re-queued")
            return
        main = self.repo.start_main_line(self.tag)
        base = Candidate(id=self.store.next_id("c", 4), commit=main, base=main, branch=f"autoresearch/{self.tag}",
                         description="baseline", origin="baseline", state=State.QUEUED.value, created_at=time.time())
        self.store.add_candidate(base)
        for _ in range(self.cfg.judge.baseline_runs):
            self._enqueue(base, Purpose.BASELINE)
        self.store.update_run(main=main, baseline=main, baseline_cand=base.id)
        self.main = main
        self.report(f"run {self.tag}: main line autoresearch/{self.tag} at {main[:8]}; "
                    f"measuring the baseline {self.cfg.judge.baseline_runs}x on {len(self.workers)} worker(s)")

    # ------------------------------------------------------------------ the loop

    def run(self) -> str:
        """Step until done, stopped or out of time; returns why it ended."""
        deadline = self.stats.started + self.cfg.run.hours * 3600 if self.cfg.run.hours else None
        while True:
            if self.stop_requested:
                return "stopped"
            if deadline and time.time() > deadline:
                return "time limit reached"
            why = self.finished()
            if why:
                return why
            self.step()

    def step(self) -> None:
        self._collect(POLL_S)
        self._collect_probes()
        self._heartbeats()
        self._reap_leases()
        self._judge_finished()
        self.intake.step()
        self._dispatch()
        now = time.time()
        if now - self._last_report > REPORT_S:
            self.report(self.progress_line())
            self._last_report = self._last_gauges = now
        elif now - self._last_gauges > GAUGES_S:
            self.gauges()
            self._last_gauges = now

    def finished(self) -> str | None:
        if self.inflight:
            return None  # both endings below need every worker idle: no need to ask Redis
        counts = self.store.count_by_state()
        pending = sum(counts.get(s, 0) for s in PENDING)
        limit = self.cfg.run.max_experiments
        if limit and self._experiments(counts) >= limit and pending == 0 and not self.inflight:
            return f"{limit} experiments done"
        if self.intake.exhausted and pending == 0 and not self.inflight:
            return "the proposer has nothing new to try"  # (or only proposals that failed validation)
        return None

    def _experiments(self, counts: dict[str, int] | None = None) -> int:
        """Candidates proposed (the baseline and refused patches excluded): the experiment budget."""
        counts = counts if counts is not None else self.store.count_by_state()
        return sum(counts.values()) - counts.get(State.INVALID.value, 0) - 1

    def measured(self, commit: str) -> list[Result]:
        return self._by_commit.get(commit, [])

    # ------------------------------------------------------------------ results

    def _collect(self, timeout: float) -> None:
        if not self.inflight:
            time.sleep(timeout)
            return
        refs = {f.ref: name for name, f in self.inflight.items()}
        # wake on the first finished run, then take every other one already done
        ready, rest = ray.wait(list(refs), num_returns=1, timeout=timeout)
        if ready and rest:
            ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        for ref in ready:
            name = refs[ref]
            flight = self.inflight.pop(name)
            now = time.time()
            self.idle_since[name] = now
            self.stats.busy_seconds += now - flight.started
            try:
                out = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.TaskCancelledError,
                    ray.exceptions.RayTaskError) as e:
                self._lost(flight.job, f"worker {name} failed: {type(e).__name__}: {str(e)[:300]}")
                self._probe(name)  # Ray restarts it; no work goes to it until it answers
                continue
            if out.get("lost"):  # its training process was killed from outside: not the candidate's result
                self._lost(flight.job, out["lost"])
                continue
            self._record(name, flight.job, out)

    def _record(self, worker: str, job: Job, out: dict[str, Any]) -> None:
        result = Result.from_dict(out["result"])
        log_file = self.run_dir / "logs" / f"{job.cand}-{job.id}-a{job.attempt}.log"
        log_file.write_text(out.get("log", ""))
        result.log_path = str(log_file)
        try:
            accepted = self.store.record_result(result)
        except FencedWrite:
            accepted = False
        if not accepted:
            self.report(f"refused a late result of {job.cand} (job {job.id} attempt {job.attempt}) from {worker}")
            return
        self._by_commit.setdefault(result.commit, []).append(result)
        self._closed(job.id)
        self._dirty = True
        self.metrics.result(result.status)
        self.store.add_event("result", cand=job.cand, job=job.id, status=result.status, val_bpb=result.val_bpb,
                             worker=worker)
        if not self._open_by_cand[job.cand]:
            self.store.transition(job.cand, {State.RUNNING.value, State.QUEUED.value}, State.FINISHED.value)
        bpb = f"{result.val_bpb:.6f}" if result.val_bpb is not None else result.status
        cand = self.store.get_candidate(job.cand)
        self.report(f"{job.cand} [{job.purpose}] {bpb} on {worker} in {result.wall_seconds:.0f}s: {cand.description}"
                    + (f" ({result.reason})" if result.reason and result.status != RunStatus.OK.value else ""))

    def _probe(self, name: str) -> None:
        self.restarting[name] = self.workers[name].handle.info.remote()

    def _collect_probes(self) -> None:
        """Workers that crashed come back into service once they answer (Ray restarts them)."""
        if not self.restarting:
            return
        refs = {ref: name for name, ref in self.restarting.items()}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        for ref in ready:
            name = refs[ref]
            try:
                self.workers[name].info = ray.get(ref)
            except ray.exceptions.RayActorError:
                self._probe(name)  # still restarting: ask again
                continue
            del self.restarting[name]
            self.idle_since[name] = time.time()
            self.report(f"{name} is back")

    def _lost(self, job: Job, reason: str) -> None:
        """Re-queue a job its worker did not finish (it counts towards the poison limit)."""
        outcome = self.store.requeue(job.id, job.attempt, reason, self.cfg.workers.max_lost)
        self.store.add_event("lost", job=job.id, cand=job.cand, reason=reason, outcome=outcome)
        if outcome == "failed":
            self._closed(job.id)
            self._fail_candidate(job.cand, f"{reason}; lost {self.cfg.workers.max_lost} times")
        elif outcome == "requeued":
            self.report(f"{job.cand}: {reason}; re-queued")

    def _fail_candidate(self, cid: str, reason: str) -> None:
        self.metrics.decision("fail")
        self.store.transition(cid, PENDING, State.FAILED.value,
                              decision={"action": "fail", "reason": reason})
        self.report(f"{cid} failed: {reason}")

    def _heartbeats(self) -> None:
        """Ping every worker each heartbeat_seconds (a thread of its own answers, even mid-run); an
        answer records it live for `status`; a running worker silent for silent_after loses its job
        to the queue at once, without waiting for its lease (a stopped or wedged process)."""
        w, now = self.cfg.workers, time.time()
        if self.pings:
            refs = {ref: name for name, (ref, _) in self.pings.items()}
            for ref in ray.wait(list(refs), num_returns=len(refs), timeout=0)[0]:
                name = refs[ref]
                del self.pings[name]
                try:
                    self.store.heartbeat(name, 3 * w.heartbeat_seconds, ray.get(ref))
                except ray.exceptions.RayError:
                    pass  # it died: its run's call fails too, and _collect re-queues the job
        for name, slot in self.workers.items():
            if name not in self.pings and name not in self.restarting and \
                    now - self.last_ping.get(name, 0.0) >= w.heartbeat_seconds:
                self.pings[name] = (slot.handle.info.remote(), now)
                self.last_ping[name] = now
        for name, flight in self.inflight.items():
            ping = self.pings.get(name)
            if flight.lost_at is None and ping and now - ping[1] > w.silent_after:
                self._lost(flight.job, f"{name} answered no heartbeat for {w.silent_after:.0f}s")
                flight.lost_at = now

    def _reap_leases(self) -> None:
        """A worker silent past its lease (stopped, hung, cut off) loses its job to the queue. Its
        slot waits one more lease for the call to come back (a late result is refused by the
        attempt fence), then the worker is restarted."""
        now = time.time()
        if now - self._last_leases < LEASES_S:
            return
        self._last_leases = now
        for job in self.store.expired(now):
            self._lost(job, f"lease expired on {job.worker}")
            flight = self.inflight.get(job.worker or "")
            if flight and flight.job.id == job.id and flight.lost_at is None:
                flight.lost_at = now
        for name, flight in self.inflight.items():
            if flight.lost_at is not None and not flight.killed and now - flight.lost_at > self.lease_s:
                flight.killed = True
                self.report(f"{name} is still silent; restarting it")
                ray.kill(self.workers[name].handle, no_restart=False)

    # ------------------------------------------------------------------ open jobs, counted in memory

    def _rebuild_open(self) -> None:
        """Count the open jobs from the store (on start and resume; the loop keeps the counts after)."""
        self._open.clear()
        self._open_by_cand.clear()
        self._open_by_commit.clear()
        for job in self.store.queued_jobs() + self.store.running_jobs():
            self._opened(job)
        self._bases = {c.id: c.base for c in self.store.get_candidates(sorted(self._open_by_cand))}

    def _opened(self, job: Job) -> None:
        if job.id in self._open:
            self._closed(job.id)
        self._open[job.id] = (job.cand, job.commit)
        self._open_by_cand[job.cand] += 1
        self._open_by_commit[job.commit] += 1

    def _closed(self, job_id: str) -> None:
        """The job is done, failed or removed: no longer open."""
        found = self._open.pop(job_id, None)
        if found is None:
            return
        for counter, key in zip((self._open_by_cand, self._open_by_commit), found):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]
        if found[0] not in self._open_by_cand:
            self._bases.pop(found[0], None)

    # ------------------------------------------------------------------ judging

    def line(self) -> judge_policy.Line:
        return judge_policy.Line(commit=self.main, results=list(self.measured(self.main)))

    def _line_measuring(self, main: str) -> bool:
        return self._open_by_commit[main] > 0

    def _judge_finished(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        line = self.line()
        if self._line_measuring(line.commit):
            return  # wait for the main line's own numbers
        decisions: list[tuple[Candidate, judge_policy.Decision]] = []
        for cand in self.store.candidates({State.FINISHED.value}):
            if cand.origin == "baseline" or cand.commit == line.commit:
                self.store.transition(cand.id, {State.FINISHED.value}, State.MERGED.value,
                                      decision={"action": "baseline", "reason": "the main line's own measurement"})
                continue
            results = [r for r in self.measured(cand.commit) if r.cand == cand.id]
            base_results = list(self.measured(cand.base))
            d = judge_policy.decide(cand, results, line, self.jcfg, base_results=base_results)
            decisions.append((cand, d))
        merges = [(c, d) for c, d in decisions if d.action == "merge"]
        winner = judge_policy.pick_merge([d for _, d in merges])
        for cand, d in decisions:
            if d.action == "merge" and cand.id != winner:
                continue  # judged again on the new main line, next step
            if d.action == "measure_line":
                if not self._line_measuring(line.commit):
                    main_cand = self._main_candidate(line.commit)
                    for _ in range(int(d.numbers.get("line_runs_needed", 1))):
                        self._enqueue(main_cand, Purpose.BASELINE, front=True)
                continue  # judged once the main line's numbers are in
            self._apply(cand, d, line)

    def _apply(self, cand: Candidate, d: judge_policy.Decision, line: judge_policy.Line) -> None:
        decision = {"action": d.action, "reason": d.reason, "numbers": d.numbers, "at": time.time()}
        self.metrics.decision(d.action)
        self.store.add_event("decision", cand=cand.id, **{k: v for k, v in decision.items() if k != "numbers"})
        if d.action == "merge":
            self._dirty = True  # the rest are judged again against the new main line
            if not self.repo.advance_main_line(self.tag, line.commit, cand.commit):
                self.report(f"{cand.id}: main line moved under us; judged again next step")
                return
            self.store.transition(cand.id, {State.FINISHED.value}, State.MERGED.value, decision=decision)
            self.store.update_run(main=cand.commit)
            self.main = cand.commit
            self.intake.main_moved()
            self.report(f"MERGED {cand.id}: {cand.description} | {d.reason}")
            # the queued candidates move onto the new main line one by one, as workers take them
            # (_take): no stall here, however long the queue
        elif d.action == "confirm":
            self.store.transition(cand.id, {State.FINISHED.value}, State.QUEUED.value, decision=decision)
            self._enqueue(cand, Purpose.CONFIRM, front=True)
            self.report(f"{cand.id} looks better; confirming: {d.reason}")
        elif d.action == "rebase":
            if cand.meta.get("rebased_after_win"):
                self._discard(cand, decision | {"reason": d.reason + "; already re-tested once on a newer main line"})
            else:
                self._rebase(cand, line.commit, decision, retest=True)
        elif d.action == "discard":
            self._discard(cand, decision)

    def _discard(self, cand: Candidate, decision: dict[str, Any]) -> None:
        self.store.transition(cand.id, {State.FINISHED.value}, State.DISCARDED.value, decision=decision)
        runs = [r for r in self.measured(cand.commit) if r.cand == cand.id]
        if runs and all(r.status == RunStatus.CRASH.value for r in runs):
            self.intake.crashed(cand, runs[-1].log_tail)

    def _main_candidate(self, commit: str) -> Candidate:
        for c in self.store.candidates({State.MERGED.value}):
            if c.commit == commit:
                return c
        raise RuntimeError(f"no merged candidate holds the main-line commit {commit}")

    def _rebase(self, cand: Candidate, new_base: str, decision: dict[str, Any] | None, retest: bool) -> None:
        src_state = State.FINISHED.value if retest else State.QUEUED.value
        outcome = self.repo.rebase_candidate(cand.commit, new_base, cand.branch)
        if outcome.status != RebaseStatus.REBASED:
            why = "conflicts with the new main line" if outcome.status == RebaseStatus.CONFLICT else "already in the main line"
            self.store.transition(cand.id, {src_state}, State.STALE.value,
                                  decision={"action": "stale", "reason": why, "at": time.time()})
            self.store.add_event("stale", cand=cand.id, reason=why)
            self.metrics.decision("stale")
            self.report(f"{cand.id} is stale: {why}")
            return
        new = outcome.commit
        meta = dict(cand.meta, rebased_from=cand.commit)
        if retest:
            meta["rebased_after_win"] = True
        self.store.transition(cand.id, {src_state}, State.QUEUED.value, commit=new.sha, base=new_base, meta=meta,
                              lines_added=new.lines_added, lines_removed=new.lines_removed,
                              **({"decision": decision} if decision else {}))
        self.intake.moved(cand.id)
        self._bases[cand.id] = new_base
        if retest:
            self._enqueue(Candidate.from_dict(cand.to_dict() | {"commit": new.sha}), Purpose.MEASURE)
            self.report(f"{cand.id} beat its base; re-testing it on the new main line")

    def _take(self, worker: str) -> Job | None:
        """Lease the next job to ``worker``. A queued candidate proposed on an older main line is
        first moved onto the current one (so no worker measures it on a stale base), or goes stale
        (its job is dropped and the next one taken) if its change conflicts or is already in."""
        while True:
            job = self.store.dispatch(worker, self.lease_s)
            if job is None or job.purpose != Purpose.MEASURE.value:
                return job
            if self._bases.get(job.cand) == self.main:
                return job  # (known without reading the candidate: the common case)
            cand = self.store.get_candidate(job.cand)
            self._bases[cand.id] = cand.base
            if cand.state != State.QUEUED.value or cand.base == self.main:
                return job  # (a re-queued run of a candidate already taken is measured on its base)
            outcome = self.repo.rebase_candidate(cand.commit, self.main, cand.branch)
            if outcome.status == RebaseStatus.REBASED:
                new = outcome.commit
                # the job first: a controller killed in between re-queues a job that still names a
                # commit of the candidate, which is then rebased again when it is taken
                if self.store.retarget(job.id, job.attempt, new.sha):
                    self.store.transition(cand.id, {State.QUEUED.value}, State.QUEUED.value, commit=new.sha,
                                          base=self.main, meta=dict(cand.meta, rebased_from=cand.commit),
                                          lines_added=new.lines_added, lines_removed=new.lines_removed)
                    job.commit = new.sha
                    self._opened(job)
                    self._bases[cand.id] = self.main
                    self.intake.moved(cand.id)
                    return job
                continue  # (not reached: the job was leased a moment ago)
            why = "conflicts with the new main line" if outcome.status == RebaseStatus.CONFLICT else "already in the main line"
            self.store.drop(job.id, job.attempt)
            self._closed(job.id)
            self.store.transition(cand.id, {State.QUEUED.value}, State.STALE.value,
                                  decision={"action": "stale", "reason": why, "at": time.time()})
            self.store.add_event("stale", cand=cand.id, reason=why)
            self.metrics.decision("stale")
            self.report(f"{cand.id} is stale: {why}")

    # ------------------------------------------------------------------ proposing

    def _enqueue(self, cand: Candidate, purpose: Purpose, front: bool = False, *, job_id: str | None = None,
                 pipeline: Any = None) -> None:
        """Queue a job for ``cand`` (on ``pipeline``, with ``job_id``, when the caller batches)."""
        job = Job(id=job_id or self.store.next_id("j", 6), cand=cand.id, commit=cand.commit, purpose=purpose.value)
        self.store.enqueue(job, front=front, pipeline=pipeline)
        self._opened(job)
        self._bases[cand.id] = cand.base

    # ------------------------------------------------------------------ dispatching

    def _files(self, commit: str) -> tuple[Any, str]:
        if commit not in self._file_refs:
            files = self.repo.tree_files(commit)
            digest = hashlib.sha256()
            for path in sorted(self.cfg.run.frozen):
                digest.update(path.encode() + b"\0" + files.get(path, b"") + b"\0")
            if len(self._file_refs) > 64:
                self._file_refs.clear()
            self._file_refs[commit] = (ray.put(files), digest.hexdigest())
        return self._file_refs[commit]

    def _dispatch(self) -> None:
        if self.stop_requested:
            return
        for name, slot in self.workers.items():
            if name in self.inflight or name in self.restarting:
                continue
            job = self._take(name)
            if job is None:
                return
            self.store.transition(job.cand, {State.QUEUED.value, State.RUNNING.value}, State.RUNNING.value)
            files_ref, digest = self._files(job.commit)
            ref = slot.handle.run.remote(job.to_dict(), files_ref, digest)
            now = time.time()
            gap = now - self.idle_since.get(name, now)
            self.stats.dispatch_gaps.append(gap)
            self.metrics.dispatch_gap(gap)
            self.inflight[name] = InFlight(job, ref, now)

    # ------------------------------------------------------------------ stopping and progress

    def shutdown(self) -> None:
        """Stop cleanly: running candidates go back to the queue; nothing is lost."""
        for name in self.inflight:
            self.workers[name].handle.cancel.remote()
        # let the cancelled runs kill their process trees and clean up before the actors go away
        refs = [f.ref for f in self.inflight.values()]
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=CANCEL_WAIT_S)
        requeued = self.store.requeue_all_running("farm stopped", self.cfg.workers.max_lost, count_lost=False)
        for job_id, _ in requeued:
            job = self.store.get_job(job_id)
            self.store.transition(job.cand, {State.RUNNING.value}, State.QUEUED.value)
        self.inflight.clear()
        if requeued:
            self.report(f"{len(requeued)} running job(s) went back to the queue; `--resume` continues them")

    def gauges(self) -> dict[str, Any]:
        """The loop's state in numbers, from memory and two cheap reads; refreshes the metric gauges."""
        meta = self.store.run_meta() or {}
        line = [r.val_bpb for r in self.measured(meta.get("main", "")) if r.val_bpb]
        base = [r.val_bpb for r in self.measured(meta.get("baseline", "")) if r.val_bpb]
        elapsed = max(time.time() - self.stats.started, 1e-9)
        busy = self.stats.busy_seconds + sum(time.time() - f.started for f in self.inflight.values())
        g = {"best": sum(line) / len(line) if line else None, "baseline": sum(base) / len(base) if base else None,
             "queued": self.store.queue_depth(), "running": len(self.inflight), "elapsed": elapsed,
             "busy": busy / (elapsed * max(len(self.workers), 1))}
        self.metrics.snapshot(g["best"], g["baseline"], g["queued"], g["running"], g["busy"],
                              workers=len(self.workers))
        return g

    def progress_line(self) -> str:
        g = self.gauges()
        # from the state counts (one round trip), not by loading every judged candidate: the baseline
        # candidate is the one merged candidate of origin "baseline", once its runs are judged
        counts = self.store.count_by_state()
        if not self._baseline_judged:
            cid = (self.store.run_meta() or {}).get("baseline_cand")
            self._baseline_judged = bool(cid) and self.store.get_candidate(cid).state in JUDGED
        merged = counts.get(State.MERGED.value, 0) - self._baseline_judged
        done = sum(counts.get(s, 0) for s in JUDGED) - self._baseline_judged
        best, base = g["best"], g["baseline"]
        best_s = f"best {best:.6f}" if best else "best -"
        if best and base:
            best_s += f" ({best - base:+.6f} vs baseline {base:.6f})"
        return (f"[{time.strftime('%H:%M:%S')}] {best_s} | done {done} (merged {merged}) "
                f"| running {g['running']} | queued {g['queued']} "
                f"| {done / g['elapsed'] * 3600:.1f} exp/h | workers busy {100 * g['busy']:.0f}%")
