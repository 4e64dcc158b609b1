"""The controller: the one loop that executes. It asks the proposer, dispatches jobs to idle
workers, records results, asks the judge, and moves the main line.

The proposer, the judge and the parallel search rules (:mod:`cluster.loop.plan`) are pure
policies; only this loop talks to git (FarmRepo), Ray (the fleet, :mod:`cluster.loop.fleet`) and
Redis (Store). Its parts: the intake (proposals into queued candidates), the ledgers (open jobs and
results, counted in memory), the window (what is in confirmation, combinations, the frontier), the
judge, and the progress report. Everything the loop decides is written to the store before it acts
on it, so a controller killed at any point can be resumed from Redis: jobs that were running are
re-queued (their late results are refused by the attempt fence), finished candidates are judged,
and the main-line ref in git is the source of truth for merges.

One step:
  1. collect finished worker calls: record each result (fenced by its attempt), or re-queue the
     job of a worker that died (or of one preempted);
  2. re-queue jobs whose lease expired (a hung or stopped worker);
  3. judge finished candidates (a confirmation once the line run beside it is in), combine the
     winners and near misses of the window, merge the best;
  4. keep the queue at one pending candidate per worker plus a margin (ask the proposer, on the front);
  5. preempt young first looks the critical path needs, then hand the next job to every idle
     worker; a queued candidate on another base than the front (the frontier, or the main line) is
     rebased onto it as a worker takes it (a merge itself rebases nothing).

A step's cost does not grow with the number of workers: open jobs are counted in memory (rebuilt
from Redis on start and resume), a proposal round's git work is batched, and the proposer's history
and the progress line are read incrementally.
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter
import logging
import time
from pathlib import Path
from typing import Any, Callable

from cluster.config import FarmConfig
from cluster.errors import FencedWrite, RunFailed
from cluster.loop import judge as judge_policy
from cluster.loop import plan
from cluster.loop.fleet import Fleet, ProposerCalls
from cluster.loop.intake import Intake
from cluster.loop.ledger import Measurements, OpenJobs
from cluster.loop.metrics import FarmMetrics
from cluster.loop.progress import Progress
from cluster.loop.window import Window
from cluster.records import (PENDING_STATES, Candidate, Job, Origin, Purpose, Requeue, Result, RunStatus, State,
                             experiment_count, values)
from cluster.repo import FarmRepo, main_branch
from cluster.store import Store
from worker import tripwire
from worker.contract import PrepareFailed

log = logging.getLogger(__name__)

PENDING = values(PENDING_STATES)
POLL_S = 0.2
REPORT_S = 10.0  # seconds between progress lines
GAUGES_S = 2.0  # seconds between refreshes of the metric gauges
CANCEL_WAIT_S = 30.0  # a cancelled run needs a moment to kill its tree and remove its cgroup
LEASES_S = 1.0  # seconds between scans for expired leases (leases last minutes)
FILE_REFS = 64  # commits whose shipped files are kept in the object store at once
SEEDED_BY_FARM, SEEDS_ITSELF = "farm", "itself"  # run meta "seeding": who seeds the target's runs


class Controller:
    def __init__(self, cfg: FarmConfig, tag: str, store: Store, repo: FarmRepo, fleet: Fleet,
                 proposer: ProposerCalls, run_dir: Path, report: Callable[[str], None] | None = None):
        self.cfg, self.tag, self.store, self.repo = cfg, tag, store, repo
        self.fleet = fleet
        self.run_dir = run_dir
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.report = report or (lambda line: log.info("%s", line))
        self.metrics = FarmMetrics(tag)
        self.stop_requested = False
        # the runner kills a run at budget + grace itself, so a healthy worker always answers in time
        self.lease_s = cfg.train.budget + cfg.train.grace + cfg.workers.lease_slack
        self._file_refs: dict[str, tuple[Any, str]] = {}  # commit -> (object ref of its files, harness digest)
        self._last_report = self._last_gauges = self._last_leases = 0.0
        # the controller is the only writer of results and jobs: both are counted in memory
        self.measured = Measurements(store)
        self.jobs = OpenJobs(store, self.measured, code_of=repo.tree_of)
        self._dirty = True  # something the judge should look at changed
        meta = store.run_meta() or {}
        self.main: str = meta.get("main", "")  # the main line's sha, kept with run meta
        self.same_seed = meta.get("seeding") == SEEDS_ITSELF  # the target's repeats are one draw
        self.progress = Progress(store, self.measured, fleet, self.metrics, noise=self.noise_now)
        self.intake = Intake(cfg, tag, store, repo, proposer, self.jobs, self.measured, self.metrics, self.report,
                             workers=len(fleet), main=self.main)
        # what is in confirmation, the combinations and the frontier (cluster/loop/plan.py)
        self.window = Window(cfg, tag, store, repo, self.jobs, self.measured, len(fleet), self.report, self.metrics,
                             moved=lambda cid: self.intake.moved(cid))
        self.window.rebuild(self.main)
        self._critical, self._pinned = set[str](), set[str]()  # jobs queued at the front, not yet taken (what
        # preemption serves); candidates measured on the main line because they conflict with the frontier

    # ------------------------------------------------------------------ start and resume

    def start(self, resume: bool) -> None:
        meta = self.store.run_meta()
        if resume:
            requeued = self.store.requeue_all_running("controller restarted", self.cfg.workers.max_lost)
            for job_id, outcome in requeued:
                cand = self.store.get_job(job_id).cand
                if outcome == Requeue.FAILED:
                    self._fail_candidate(cand, "lost with its worker too many times")
                else:
                    self.store.transition(cand, {State.RUNNING.value}, State.QUEUED.value)
            self.jobs.rebuild()
            self.report(f"resumed run {self.tag}: main line {meta['main'][:8]}, {len(requeued)} running job(s) re-queued")
            return
        main = self.repo.start_main_line(self.tag)
        self.same_seed = not tripwire.uses_farm_seed(self.repo.read_file(main, self.cfg.run.editable))
        if self.same_seed:
            self.report(f"{self.cfg.run.editable} seeds itself (it never reads prepare.seed()): repeats of a commit "
                        "are one draw, so the noise floor is the prior default_noise and no repeat counts as "
                        "independent")
        base = Candidate(id=self.store.next_id("c", 4), commit=main, base=main, branch=main_branch(self.tag),
                         description="baseline", origin=Origin.BASELINE.value, state=State.QUEUED.value,
                         created_at=time.time())
        self.store.add_candidate(base)
        for _ in range(self.cfg.judge.baseline_runs):
            self.jobs.enqueue(base, Purpose.BASELINE)
        self.store.update_run(main=main, baseline=main, baseline_cand=base.id,
                              seeding=SEEDS_ITSELF if self.same_seed else SEEDED_BY_FARM)
        self.main = main
        self.intake.main_moved(main)
        self.report(f"run {self.tag}: main line {main_branch(self.tag)} at {main[:8]}; "
                    f"measuring the baseline {self.cfg.judge.baseline_runs}x on {len(self.fleet)} worker(s)")

    # ------------------------------------------------------------------ the loop

    def run(self) -> str:
        """Step until done, stopped or out of time; returns why it ended."""
        deadline = self.progress.stats.started + self.cfg.run.hours * 3600 if self.cfg.run.hours else None
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
        self.collect(POLL_S)
        for name in self.fleet.back():
            self.progress.back(name)
            self.report(f"{name} is back")
        self._heartbeats()
        self._reap_leases()
        self.judge()
        self.intake.front_moved(self.window.front(self.main))
        self.intake.step(stopping=self.stop_requested)
        self.preempt()
        self.dispatch()
        now = time.time()
        if now - self._last_report > REPORT_S:
            self.report(self.progress_line())
            self._last_report = self._last_gauges = now
        elif now - self._last_gauges > GAUGES_S:
            self.progress.gauges()
            self._last_gauges = now

    def finished(self) -> str | None:
        if self.fleet.inflight:
            return None  # both endings below need every worker idle: no need to ask Redis
        counts = self.store.count_by_state()
        pending = sum(counts.get(s, 0) for s in PENDING)
        limit = self.cfg.run.max_experiments
        if limit and experiment_count(counts) >= limit and pending == 0:
            return f"{limit} experiments done"
        if self.intake.exhausted and pending == 0:
            return "the proposer has nothing new to try"  # (or only proposals that failed validation)
        return None

    # ------------------------------------------------------------------ results

    def collect(self, timeout: float) -> None:
        """Record what the workers sent back (waiting up to ``timeout`` for the first). A worker whose
        prepare command failed ends the run: the rest of the batch is recorded first, then
        :class:`RunFailed` is raised, before anything more is dispatched."""
        failed: RunFailed | None = None
        for done in self.fleet.collect(timeout):
            self.progress.idle(done.name, done.flight.started)
            job = done.flight.job
            if done.prepare_failed is not None:
                error = self._prepare_failed(done.name, job, done.prepare_failed)
                failed = failed or error
            elif done.out is None:
                self.lost(job, f"worker {done.name} failed: {done.error}")
                self.fleet.probe(done.name)  # Ray restarts it; no work goes to it until it answers
            elif done.out.get("lost"):  # its training process was killed from outside: not the candidate's result
                self.lost(job, done.out["lost"])
            elif done.flight.preempted and (done.out.get("result") or {}).get("reason") == "cancelled":
                self.store.requeue(job.id, job.attempt, f"preempted on {done.name}", self.cfg.workers.max_lost,
                                   count_lost=False, back=True)
                self.store.transition(job.cand, {State.RUNNING.value}, State.QUEUED.value)
                self.store.add_event("preempted", job=job.id, cand=job.cand, worker=done.name)
            else:
                self.record(done.name, job, done.out)
        if failed is not None:
            raise failed

    def _prepare_failed(self, worker: str, job: Job, err: PrepareFailed) -> RunFailed:
        """A worker's prepare command failed: the frozen harness is at fault, not ``job``'s candidate,
        and every job would fail the same way, so this is a run-level error, not a lost job. The job
        goes back to the front of the queue without counting as lost and its candidate is pending
        again (`--resume` picks both up once prepare is fixed); the command's output is copied into
        the run's logs folder (the worker may be on another node); the error that ends the run,
        which says all of it, is returned."""
        self.store.requeue(job.id, job.attempt, f"the prepare command failed on {worker}", self.cfg.workers.max_lost,
                           count_lost=False)
        self.store.transition(job.cand, {State.RUNNING.value}, State.QUEUED.value)
        log_file = self.run_dir / "logs" / f"prepare-{re.sub(r'[^A-Za-z0-9_.+-]', '_', worker)}.log"
        log_file.write_text(err.log or err.tail)
        self.store.add_event("prepare_failed", worker=worker, job=job.id, cand=job.cand, command=err.command,
                             exit_code=err.exit_code, log=str(log_file))
        return RunFailed.prepare(err, worker, log_file, self.tag)

    def record(self, worker: str, job: Job, out: dict[str, Any]) -> None:
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
        self.measured.add(result)
        self.jobs.closed(job.id)
        self._dirty = True
        self.metrics.result(result.status)
        self.store.add_event("result", cand=job.cand, job=job.id, status=result.status, val_bpb=result.val_bpb,
                             worker=worker)
        if not self.jobs.by_cand[job.cand]:
            self.store.transition(job.cand, {State.RUNNING.value, State.QUEUED.value}, State.FINISHED.value)
        bpb = f"{result.val_bpb:.6f}" if result.val_bpb is not None else result.status
        cand = self.store.get_candidate(job.cand)
        self.report(f"{job.cand} [{job.purpose}] {bpb} on {worker} in {result.wall_seconds:.0f}s: {cand.description}"
                    + (f" ({result.reason})" if result.reason and result.status != RunStatus.OK.value else ""))

    def lost(self, job: Job, reason: str) -> None:
        """Re-queue a job its worker did not finish (it counts towards the poison limit)."""
        outcome = self.store.requeue(job.id, job.attempt, reason, self.cfg.workers.max_lost)
        self.store.add_event("lost", job=job.id, cand=job.cand, reason=reason, outcome=outcome)
        if outcome == Requeue.FAILED:
            self.jobs.closed(job.id)
            self._fail_candidate(job.cand, f"{reason}; lost {self.cfg.workers.max_lost} times")
        elif outcome == Requeue.REQUEUED:
            self.report(f"{job.cand}: {reason}; re-queued")

    def _fail_candidate(self, cid: str, reason: str) -> None:
        """Fail ``cid`` for good; its other queued jobs are taken out of the queue (a failed candidate
        is never judged, so running them would spend a worker on nothing)."""
        self.metrics.decision("fail")
        self.store.transition(cid, PENDING, State.FAILED.value, decision={"action": "fail", "reason": reason})
        self.jobs.unqueue(cid)
        self.report(f"{cid} failed: {reason}")

    def _heartbeats(self) -> None:
        """Ping every worker each heartbeat_seconds; an answer records it live for `status`; a
        running worker silent for silent_after loses its job to the queue at once, without waiting
        for its lease (a stopped or wedged process)."""
        w, now = self.cfg.workers, time.time()
        for name, info in self.fleet.answered_pings():
            self.store.heartbeat(name, 3 * w.heartbeat_seconds, info)
        self.fleet.ping(w.heartbeat_seconds, now)
        for name in self.fleet.silent(w.silent_after, now):
            flight = self.fleet.inflight[name]
            self.lost(flight.job, f"{name} answered no heartbeat for {w.silent_after:.0f}s")
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
            self.lost(job, f"lease expired on {job.worker}")
            flight = self.fleet.inflight.get(job.worker or "")
            if flight and flight.job.id == job.id and flight.lost_at is None:
                flight.lost_at = now
        for name, flight in self.fleet.inflight.items():
            if flight.lost_at is not None and not flight.killed and now - flight.lost_at > self.lease_s:
                flight.killed = True
                self.report(f"{name} is still silent; restarting it")
                self.fleet.restart(name)

    # ------------------------------------------------------------------ judging

    def line(self) -> judge_policy.Line:
        """The main line as the judge sees it: its own runs, the pooled spread of the run's other
        commits measured as a line (earlier main lines; winners' own line runs, merged or not: none of
        them chosen by its spread), and whether the target's repeats are new draws at all."""
        others = (c for c in self.measured.line_commits() if c != self.main)
        history = judge_policy.repeats(self.measured.line_runs(c) for c in others)
        return judge_policy.Line(commit=self.main, results=self.measured.line_runs(self.main),
                                 history={acc: (h["ss"], h["df"]) for acc, h in history.items()},
                                 same_seed=self.same_seed)

    def noise_now(self) -> str:
        """The noise floor on the line's accelerator and the gain a one-run candidate must show now."""
        line = self.line()
        accs = Counter(r.accelerator for r in line.results if r.val_bpb is not None)
        if not accs:
            return ""
        acc = accs.most_common(1)[0][0]
        sigma = judge_policy.line_sigma(line, acc, self.cfg.judge)
        df = judge_policy.measured_df(line, acc)
        source = "the prior: the target seeds itself" if self.same_seed else f"measured, {df:.0f} df" if df else "the prior"
        return f"noise {sigma:.4f} ({source}): a win must clear {judge_policy.margin_now(line, acc, self.cfg.judge):.4f}"

    def judge(self) -> None:
        """Judge the finished candidates (cluster/loop/plan.py says what waits and what is combined)."""
        if not self._dirty:
            return
        self._dirty = False
        line, w = self.line(), self.window
        waiting_on, busy = w.waiting_on(), w.busy()
        decisions: list[tuple[Candidate, judge_policy.Decision]] = []
        for cand in self.store.candidates({State.FINISHED.value}):
            if cand.origin == Origin.BASELINE.value or cand.commit == line.commit:
                self.store.transition(cand.id, {State.FINISHED.value}, State.MERGED.value,
                                      decision={"action": "baseline", "reason": "the main line's own measurement"})
                continue
            if cand.base in waiting_on or cand.id in busy or w.line_behind(cand, self.main):
                continue  # work on a frontier, a combination's members, a confirmation: each waits for its verdict
            runs = [r for r in self.measured.of_candidate(cand) if r.purpose != Purpose.BASELINE.value]
            d = judge_policy.decide(cand, runs, line, self.cfg.judge, base_results=self.measured.line_runs(cand.base))
            decisions.append((cand, plan.verdict(cand, d)))
        w.judged(decisions, line)
        pool = w.pool(plan.winners(decisions, line.commit), line.commit)
        parts = plan.combination(pool, w.pending_combination(line.commit), w.combined, self.cfg.search)
        limit = self.cfg.run.max_experiments  # (a combination is an experiment too: none past the budget)
        parts = [] if parts and limit and experiment_count(self.store.count_by_state()) >= limit else parts
        deltas = {c.id: delta for c, delta in pool}
        combo = w.combine(parts, deltas, line) if parts else None
        if combo is not None:
            beside = self.window.beside(combo, line, self.main, self.window.main_candidate, None, deltas)
            self._enqueue([(combo, Purpose.MEASURE), (combo, Purpose.CONFIRM), *beside])
            busy = w.busy()
        judged_now = {c.id for c, _ in decisions}
        winner = judge_policy.pick_merge([d for c, d in decisions if d.action == "merge" and c.id not in busy
                                          and not w.held(c, d, judged_now)])
        for cand, d in decisions:
            if cand.id in busy or (d.action == "merge" and cand.id != winner):
                continue  # judged again once its combination is, or on the new main line
            if d.action == "measure_line":
                if not self.jobs.measuring(line.commit):
                    main_cand = self.window.main_candidate(line.commit)
                    self._enqueue([(main_cand, Purpose.BASELINE)] * int(d.numbers.get("line_runs_needed", 1)))
                continue  # judged once the main line's numbers are in
            self.apply(cand, d, line)

    def apply(self, cand: Candidate, d: judge_policy.Decision, line: judge_policy.Line) -> None:
        """Carry out the judge's decision ``d`` on ``cand`` (judged against ``line``)."""
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
            self.window.settled(cand, merged=True)
            self.window.merged_with(cand)
            self.window.line_moved(cand.commit)
            self.intake.main_moved(cand.commit)
            self.report(f"MERGED {cand.id}: {cand.description} | {d.reason}")
            # the queued candidates move onto the new main line one by one, as workers take them
            # (take): no stall here, however long the queue
        elif d.action == "confirm":
            self.store.transition(cand.id, {State.FINISHED.value}, State.QUEUED.value, decision=decision)
            beside = self.window.beside(cand, line, self.main, self.window.main_candidate, d)
            self._enqueue([(cand, Purpose.CONFIRM), *beside])
            self.report(f"{cand.id} looks better; confirming: {d.reason}")
        elif d.action == "rebase":
            self._dirty |= self.window.settled(cand)  # (what waited on its verdict is judged next step)
            if cand.meta.get("rebased_after_win"):
                self._discard(cand, decision | {"reason": d.reason + "; already re-tested once on a newer main line"})
            else:
                self.window.retest(cand, line.commit, decision)
        elif d.action == "discard":
            self._dirty |= self.window.settled(cand)
            self._discard(cand, decision)

    def _enqueue(self, items: list[tuple[Candidate, Purpose]]) -> None:
        """Queue jobs on the critical path of a merge, in this order, at the front (where a young first look
        gives way to them)."""
        self._critical.update(job.id for job in self.jobs.enqueue_front(items))

    def _discard(self, cand: Candidate, decision: dict[str, Any]) -> None:
        self.store.transition(cand.id, {State.FINISHED.value}, State.DISCARDED.value, decision=decision)
        runs = self.measured.of_candidate(cand)
        if runs and all(r.status == RunStatus.CRASH.value for r in runs):
            self.intake.crashed(cand, runs[-1].log_tail)

    # ------------------------------------------------------------------ dispatching

    def take(self, worker: str) -> Job | None:
        """Lease the next job to ``worker``. A queued candidate on another base than the front (the
        frontier while speculating, else the main line) is first moved onto it, so no worker measures
        it where the work has moved on from; one that conflicts with the frontier is measured on the
        main line instead, and one that fits neither goes stale (its job is dropped, the next taken)."""
        front = self.window.front(self.main)
        while True:
            job = self.store.dispatch(worker, self.lease_s)
            if job is not None:
                self._critical.discard(job.id)
            if job is None or job.purpose != Purpose.MEASURE.value or self.jobs.bases.get(job.cand) == front:
                return job  # (known without reading the candidate: the common case)
            cand = self.store.get_candidate(job.cand)
            self.jobs.bases[cand.id] = cand.base
            if cand.state != State.QUEUED.value or cand.base == front or cand.id in self.window.confirming:
                return job  # (a re-queued run of a candidate already taken, a combination: measured on its base)
            for target in dict.fromkeys([front, self.main]):
                if target == cand.base:
                    self._pinned.add(cand.id)  # (it conflicts with the frontier: measured on the main line)
                    return job
                moved = self.window.move(cand, target, State.QUEUED.value, job=job, stale_ok=target == self.main,
                                         frontier=target != self.main)
                if moved is not None:
                    job.commit = moved
                    self.jobs.opened(job)
                    return job
                if self.store.get_candidate(cand.id).state == State.STALE.value:
                    break
            self.store.drop(job.id, job.attempt)
            self.jobs.closed(job.id)

    def _files(self, commit: str) -> tuple[Any, str]:
        """The commit's files, shipped once, and the digest of its frozen harness files."""
        if commit not in self._file_refs:
            files = self.repo.tree_files(commit)
            digest = hashlib.sha256()
            for path in sorted(self.cfg.run.frozen):
                digest.update(path.encode() + b"\0" + files.get(path, b"") + b"\0")
            if len(self._file_refs) > FILE_REFS:
                self._file_refs.clear()
            self._file_refs[commit] = (self.fleet.put(files), digest.hexdigest())
        return self._file_refs[commit]

    def preempt(self) -> None:
        """Stop first looks younger than ``search.preempt_seconds`` that lost their point (plan.preemptions)
        to run them later: back of the queue, not counted as lost. From ``search.min_workers`` workers on."""
        window = self.cfg.search.preempt_seconds
        if window <= 0 or not self.window.parallel or self.stop_requested:
            return
        front, now = self.window.front(self.main), time.time()
        young = [(f.started, name, front if f.job.cand in self._pinned else self.jobs.bases.get(f.job.cand, front))
                 for name, f in self.fleet.inflight.items()
                 if f.job.purpose == Purpose.MEASURE.value and not f.preempted and f.lost_at is None and
                 f.job.id not in self._critical and f.job.cand not in self.window.confirming and now - f.started <= window]
        stopping = sum(f.preempted for f in self.fleet.inflight.values())  # (cancelled, not back yet)
        for name in plan.preemptions(young, len(self._critical) - len(self.fleet.free()) - stopping, front):
            self.report(f"preempting {self.fleet.inflight[name].job.cand} on {name} to run it later")
            self.fleet.preempt(name)

    def dispatch(self) -> None:
        """Hand the next job to every free worker."""
        if self.stop_requested:
            return
        for name in self.fleet.free():
            job = self.take(name)
            if job is None:
                return
            self.store.transition(job.cand, {State.QUEUED.value, State.RUNNING.value}, State.RUNNING.value)
            files_ref, digest = self._files(job.commit)
            self.fleet.start(name, job, files_ref, digest)
            self.progress.dispatched(name)

    # ------------------------------------------------------------------ stopping and progress
    def shutdown(self) -> None:
        """Stop cleanly: running candidates go back to the queue; nothing is lost."""
        # let the cancelled runs kill their process trees and clean up before the actors go away
        self.fleet.cancel_all(CANCEL_WAIT_S)
        requeued = self.store.requeue_all_running("farm stopped", self.cfg.workers.max_lost, count_lost=False)
        for job_id, _ in requeued:
            job = self.store.get_job(job_id)
            self.store.transition(job.cand, {State.RUNNING.value}, State.QUEUED.value)
        if requeued:
            self.report(f"{len(requeued)} running job(s) went back to the queue; `--resume` continues them")

    def progress_line(self) -> str:
        return self.progress.line()
