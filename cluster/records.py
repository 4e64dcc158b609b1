"""The control plane's records and its one state vocabulary, as stored in Redis (JSON, never
pickle). The records a worker produces (Job, Result, RunStatus, Purpose) are the worker's
contract, in :mod:`worker.contract`; they are re-exported here for the control plane.

A *candidate* is one proposed commit of the target repository: a change of the editable file
on top of a main-line commit (its *base*). Its life cycle (every transition is atomic in the
store)::

    queued -> running -> finished -> merged | discarded
      ^          |           |
      |          +-(lost)----+-> queued (new attempt, or a confirmation run)
      +-- rebased onto a new main line as a worker takes it (stale on conflict)
    any pending state -> stale (rebase conflict) ; running -> failed (poison: too many lost attempts)
    refused before any GPU time -> invalid

A *job* (one measurement) is queued -> running -> done, or failed (lost too many times), or
removed (dropped from the queue, e.g. when its candidate went stale).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from worker.contract import Job, Purpose, Record, Result, RunStatus

__all__ = ["Candidate", "State", "PENDING_STATES", "FINAL_STATES", "values", "experiment_count", "JobState", "Requeue", "Origin",
           "Job", "Purpose", "Record", "Result", "RunStatus"]


class State(str, Enum):
    QUEUED = "queued"  # waiting for a worker (a measurement or a confirmation)
    RUNNING = "running"  # leased to a worker
    FINISHED = "finished"  # measured, waiting for the judge
    MERGED = "merged"  # its commit is on the main line
    DISCARDED = "discarded"  # judged: no real improvement (or crashed)
    STALE = "stale"  # could not be rebased onto the new main line
    FAILED = "failed"  # the infrastructure lost it too many times (poison candidate)
    INVALID = "invalid"  # the patch was refused before any GPU time was spent

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


# not yet judged: in the queue, on a worker, or measured and waiting for the judge
PENDING_STATES = frozenset({State.QUEUED, State.RUNNING, State.FINISHED})
# judged or given up on: never leaves these (INVALID included: refused before it ran)
FINAL_STATES = frozenset({State.MERGED, State.DISCARDED, State.STALE, State.FAILED, State.INVALID})


def values(states: frozenset[State] | tuple[State, ...]) -> tuple[str, ...]:
    """The stored spellings of ``states``, in a stable order."""
    return tuple(s.value for s in State if s in states)


def experiment_count(counts: dict[str, int]) -> int:
    """Candidates proposed, from the counts by state: the experiment budget's unit (the baseline
    and patches refused before they ran are not experiments; before the baseline exists, none)."""
    return max(sum(counts.values()) - counts.get(State.INVALID.value, 0) - 1, 0)


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"  # its result is recorded
    FAILED = "failed"  # lost with its worker max_lost times
    REMOVED = "removed"  # taken out of the queue (its candidate went stale)


class Requeue(str, Enum):
    """What taking back a lost running attempt did."""

    REQUEUED = "requeued"  # back at the front of the queue
    FAILED = "failed"  # lost max_lost times: the job (and its candidate) failed
    FENCED = "fenced"  # not running, or a newer attempt runs: nothing done


class Origin(str, Enum):
    """Where a candidate came from."""

    BASELINE = "baseline"  # the main line's starting commit
    MUTATE = "mutate"  # the offline search
    LLM = "llm"
    AGENT = "agent"  # a coding-agent CLI
    HUMAN = "human"  # `autoresearch-farm submit`


@dataclass
class Candidate(Record):
    id: str  # "c0001"; the baseline is "c0000"
    commit: str  # sha of the tree to measure
    base: str  # main-line sha this commit sits on
    branch: str  # e.g. "candidates/<tag>/c0001"
    description: str
    origin: str  # an Origin value
    state: str = State.QUEUED.value
    parent: str | None = None  # the crashed candidate a repair was derived from
    lines_added: int = 0
    lines_removed: int = 0
    created_at: float = 0.0
    decision: dict[str, Any] | None = None  # the judge's last decision, with reason and numbers
    meta: dict[str, Any] = field(default_factory=dict)  # proposer-specific (mutation, tokens, ...)
