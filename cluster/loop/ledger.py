"""The loop's ledgers, kept in memory so a step costs the same whatever the number of workers.

The controller is the only writer of jobs and results, so it can count instead of asking Redis:

- :class:`OpenJobs` counts the open (queued or running) jobs per candidate and per commit, and
  remembers the base each candidate with open jobs was last written on. It is rebuilt from the
  store on start and on resume, and every job the loop queues goes through :meth:`OpenJobs.enqueue`.
- :class:`Measurements` indexes every accepted result by the commit it measured, loaded once.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from cluster.records import Candidate, Job, Purpose, Result
from cluster.store import Store


class OpenJobs:
    def __init__(self, store: Store):
        self.store = store
        self.open: dict[str, tuple[str, str]] = {}  # job id -> (candidate, commit)
        self.by_cand: Counter[str] = Counter()
        self.by_commit: Counter[str] = Counter()
        self.bases: dict[str, str] = {}  # candidate with open jobs -> its base, as last written
        self.rebuild()

    def rebuild(self) -> None:
        """Count the open jobs from the store (on start and resume; the loop keeps the counts after)."""
        self.open.clear()
        self.by_cand.clear()
        self.by_commit.clear()
        for job in self.store.queued_jobs() + self.store.running_jobs():
            self.opened(job)
        self.bases = {c.id: c.base for c in self.store.get_candidates(sorted(self.by_cand))}

    def enqueue(self, cand: Candidate, purpose: Purpose, front: bool = False, *, job_id: str | None = None,
                pipeline: Any = None) -> None:
        """Queue a job for ``cand`` (on ``pipeline``, with ``job_id``, when the caller batches)."""
        job = Job(id=job_id or self.store.next_id("j", 6), cand=cand.id, commit=cand.commit, purpose=purpose.value)
        self.store.enqueue(job, front=front, pipeline=pipeline)
        self.opened(job)
        self.bases[cand.id] = cand.base

    def opened(self, job: Job) -> None:
        """``job`` is open (again: a job retargeted onto another commit is counted under the new one)."""
        if job.id in self.open:
            self.closed(job.id)
        self.open[job.id] = (job.cand, job.commit)
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

    def measuring(self, commit: str) -> bool:
        """Whether a measurement of ``commit`` is queued or running."""
        return self.by_commit[commit] > 0


class Measurements:
    def __init__(self, store: Store):
        self.by_commit: dict[str, list[Result]] = {}
        for r in store.results():
            self.add(r)

    def add(self, result: Result) -> None:
        self.by_commit.setdefault(result.commit, []).append(result)

    def of(self, commit: str) -> list[Result]:
        """Every accepted result of ``commit`` (any candidate, any purpose), in finish order."""
        return self.by_commit.get(commit, [])

    def of_candidate(self, cand: Candidate) -> list[Result]:
        """The results of ``cand``'s own runs of its current commit."""
        return [r for r in self.of(cand.commit) if r.cand == cand.id]

    def values(self, commit: str) -> list[float]:
        """The val_bpb of every run of ``commit`` that gave one."""
        return [r.val_bpb for r in self.of(commit) if r.val_bpb is not None]
