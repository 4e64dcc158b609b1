"""The loop's ledgers, kept in memory so a step costs the same whatever the number of workers.

The controller is the only writer of jobs and results, so it can count instead of asking Redis:

- :class:`OpenJobs` counts the open (queued or running) jobs per candidate and per commit,
  remembers the base each candidate with open jobs was last written on, and hands out the seeds of
  each commit's code in order (keyed by ``code_of``, the commit's tree: a revert to code measured
  before, under another commit, goes on with new seeds instead of repeating its old draws). It is rebuilt from the
  store on start and on resume, and every job the loop queues goes through :meth:`OpenJobs.enqueue`.
- :class:`Measurements` indexes every accepted result by the commit it measured, loaded once.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from cluster.records import Candidate, Job, Purpose, Result
from cluster.store import Store


class OpenJobs:
    def __init__(self, store: Store, measured: Measurements, code_of: Callable[[str], str] | None = None):
        self.store, self.measured = store, measured
        self._code_of = code_of or (lambda commit: commit)
        self._codes: dict[str, str] = {}  # commit -> its code key, as code_of gave it
        self.open: dict[str, tuple[str, str]] = {}  # job id -> (candidate, commit)
        self.by_cand: Counter[str] = Counter()
        self.by_commit: Counter[str] = Counter()
        self.bases: dict[str, str] = {}  # candidate with open jobs -> its base, as last written
        self.seeds: Counter[str] = Counter()  # code (tree) -> seeds handed out so far (the next is this + 1)
        self.rebuild()

    def rebuild(self) -> None:
        """Count the open jobs from the store (on start and resume; the loop keeps the counts after),
        and the seeds each commit has used (of its open jobs, and of its results: ``measured``, the
        results index the loop keeps, read from the store once)."""
        self.open.clear()
        self.by_cand.clear()
        self.by_commit.clear()
        self.seeds.clear()
        jobs = self.store.queued_jobs() + self.store.running_jobs()
        for job in jobs:
            self.opened(job)
        self.bases = {c.id: c.base for c in self.store.get_candidates(sorted(self.by_cand))}
        # (a run recorded before the farm assigned seeds used an unknown one: it counts as one more)
        for commit, results in self.measured.by_commit.items():
            code = self.code(commit)
            for r in results:
                self.seeds[code] = max(self.seeds[code], r.seed) if r.seed else self.seeds[code] + 1

    def code(self, commit: str) -> str:
        """The key ``commit``'s seeds are counted under: its code (tree), read once."""
        if commit not in self._codes:
            self._codes[commit] = self._code_of(commit)
        return self._codes[commit]

    def enqueue(self, cand: Candidate, purpose: Purpose, front: bool = False, *, job_id: str | None = None,
                pipeline: Any = None) -> Job:
        """Queue a job for ``cand`` (on ``pipeline``, with ``job_id``, when the caller batches), with the
        next seed of its code: the k-th measurement of every commit's code runs on seed k + 1, so repeats
        of one commit are new draws and a candidate's first run shares seed 1 with the baseline's first."""
        code = self.code(cand.commit)
        self.seeds[code] += 1
        job = Job(id=job_id or self.store.next_id("j", 6), cand=cand.id, commit=cand.commit, purpose=purpose.value,
                  seed=self.seeds[code])
        self.store.enqueue(job, front=front, pipeline=pipeline)
        self.opened(job)
        self.bases[cand.id] = cand.base
        return job

    def enqueue_front(self, items: list[tuple[Candidate, Purpose]]) -> list[Job]:
        """Queue ``items`` at the front of the queue, in this order (the first is taken first), their
        seeds handed out in this order too (a confirmation keeps seed 2 whatever runs beside it)."""
        jobs = []
        for cand, purpose in items:
            code = self.code(cand.commit)
            self.seeds[code] += 1
            jobs.append(Job(id=self.store.next_id("j", 6), cand=cand.id, commit=cand.commit, purpose=purpose.value,
                            seed=self.seeds[code]))
            self.bases[cand.id] = cand.base
        for job in reversed(jobs):  # (the front of the queue is last in)
            self.store.enqueue(job, front=True)
            self.opened(job)
        return jobs

    def opened(self, job: Job) -> None:
        """``job`` is open (again: a job retargeted onto another commit is counted under the new one)."""
        if job.id in self.open:
            self.closed(job.id)
        self.open[job.id] = (job.cand, job.commit)
        code = self.code(job.commit)
        self.seeds[code] = max(self.seeds[code], job.seed or 0)  # (a job moved onto a new commit keeps its seed)
        self.by_cand[job.cand] += 1
        self.by_commit[job.commit] += 1

    def closed(self, job_id: str) -> None:
        """The job is done, failed or removed: no longer open."""
        found = self.open.pop(job_id, None)
        if found is None:
            return
        for counter, key in zip((self.by_cand, self.by_commit), found):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]
        if found[0] not in self.by_cand:
            self.bases.pop(found[0], None)

    def unqueue(self, cand: str) -> None:
        """Take ``cand``'s queued jobs out of the queue (its running ones finish; their results are kept)."""
        for job_id, (owner, _) in list(self.open.items()):
            if owner == cand and self.store.remove_from_queue(job_id):
                self.closed(job_id)

    def measuring(self, commit: str) -> bool:
        """Whether a measurement of ``commit`` is queued or running."""
        return self.by_commit[commit] > 0


class Measurements:
    def __init__(self, store: Store):
        self.by_commit: dict[str, list[Result]] = {}
        self._line_commits: dict[str, None] = {}  # commits with line runs, in order (a dict as an ordered set)
        for r in store.results():
            self.add(r)

    def add(self, result: Result) -> None:
        self.by_commit.setdefault(result.commit, []).append(result)
        if result.purpose == Purpose.BASELINE.value:
            self._line_commits[result.commit] = None

    def of(self, commit: str) -> list[Result]:
        """Every accepted result of ``commit`` (any candidate, any purpose), in finish order."""
        return self.by_commit.get(commit, [])

    def of_candidate(self, cand: Candidate) -> list[Result]:
        """The results of ``cand``'s own runs of its current commit."""
        return [r for r in self.of(cand.commit) if r.cand == cand.id]

    def line_runs(self, commit: str) -> list[Result]:
        """``commit``'s runs as a main line: those queued to measure the line itself (purpose
        baseline), not the runs it made as a candidate, which were selected for looking good."""
        return [r for r in self.of(commit) if r.purpose == Purpose.BASELINE.value]

    def line_commits(self) -> list[str]:
        """Every commit measured as a main line (with line runs): the main lines so far, and winners
        whose own line runs started beside their confirmation, merged or not."""
        return list(self._line_commits)

    def line_values(self, commit: str) -> list[float]:
        """The val_bpb of every line run of ``commit`` that gave one: its honest estimate."""
        return [r.val_bpb for r in self.line_runs(commit) if r.val_bpb is not None]
