"""What a worker is given and what it gives back: the records that cross the wire between the
control plane and a worker, stored in Redis as JSON (never pickle) so any tool can read them.

A *job* is one measurement of one candidate's commit by one worker (the baseline and
confirmations are measured several times). A *result* is what a worker reports for one attempt of
a job. The worker imports nothing of the control plane: these records are its whole contract.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class RunStatus(str, Enum):
    """Outcome of one training run, as the worker saw it."""

    OK = "ok"  # exited 0 and printed a finite val_bpb in its summary block
    CRASH = "crash"  # non-zero exit (the log tail is kept)
    TIMEOUT = "timeout"  # killed at the wall-clock deadline
    NO_METRIC = "no-metric"  # exited 0 without a usable summary block
    CHEAT = "cheat"  # caught faking its metric or touching what it must not


class Purpose(str, Enum):
    BASELINE = "baseline"  # the main line measured again, for the noise floor
    MEASURE = "measure"  # a candidate's first measurement
    CONFIRM = "confirm"  # a re-run of an apparent winner before it merges


class Record:
    """A dataclass stored as JSON: enums as their values, unknown keys ignored on load (so a
    record written by a newer farm still reads)."""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)  # type: ignore[call-overload]
        for k, v in d.items():
            if isinstance(v, Enum):
                d[k] = v.value
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_json(cls, s: str | bytes):
        return cls.from_dict(json.loads(s))


@dataclass
class Job(Record):
    id: str  # "j000123"
    cand: str
    commit: str
    purpose: str = Purpose.MEASURE.value
    containment: str = ""  # sandbox layers the run was under, e.g. "cgroup,netns"
    attempt: int = 0  # bumped on every dispatch; results are fenced by it
    lost: int = 0  # attempts lost with their worker (poison detection)
    worker: str | None = None
    lease_deadline: float | None = None
    seed: int | None = None  # AUTORESEARCH_SEED of its run: the k-th job of a commit gets seed k + 1


@dataclass
class Result(Record):
    job: str
    cand: str
    commit: str
    attempt: int
    status: str  # a RunStatus value
    val_bpb: float | None = None
    peak_vram_mb: float | None = None
    training_seconds: float | None = None
    total_seconds: float | None = None  # as the run reported it
    wall_seconds: float = 0.0  # as the worker measured it
    train_wall_seconds: float | None = None  # the training process alone (trusted evaluation: before the evaluator)
    exit_code: int | None = None
    worker: str = ""
    node: str = ""
    accelerator: str = "cpu"  # e.g. "NVIDIA H100 80GB HBM3"; the judge compares like with like
    started_at: float = 0.0
    finished_at: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)  # every key of the summary block
    log_path: str = ""
    log_tail: str = ""
    reason: str = ""  # why a non-ok status was given
    purpose: str = Purpose.MEASURE.value
    containment: str = ""  # sandbox layers the run was under, e.g. "cgroup,netns"
    seed: int | None = None  # the seed the run was handed (None: recorded before the farm assigned seeds)
    # the training-loss curve: [progress 0..1 of the budget, loss] pairs, at most ~200 (worker.curve);
    # [] where the output had no step line it reads (and in records from before it was kept)
    loss_curve: list[list[float]] = field(default_factory=list)
    denied: list[str] = field(default_factory=list)  # credential paths outside its view the run listed or opened


class PrepareFailed(Exception):
    """The prepare command failed on a worker: raised by ``Worker.run`` before any training.

    The frozen harness failed, not a candidate: no candidate's code is at fault and every job would
    fail the same way, so the controller ends the run with it (a run-level error) instead of
    re-running or failing jobs. It carries what a user needs to fix it without logging in to the
    worker's node: the command, its exit code (None: it did not start), the tail of its output, and
    the output itself (its last MAX_LOG_BYTES), which the controller copies into the run's logs
    folder; ``log_path`` is the full log on the worker's node. The fields are the exception's args,
    in order, so it pickles as it is (Ray hands it to the controller as ``RayTaskError.cause``).
    """

    def __init__(self, worker: str, node: str, command: list[str], exit_code: int | None, tail: str,
                 log_path: str, log: str = ""):
        super().__init__(worker, node, command, exit_code, tail, log_path, log)
        self.worker, self.node, self.command, self.exit_code = worker, node, list(command), exit_code
        self.tail, self.log_path, self.log = tail, log_path, log

    @property
    def how(self) -> str:
        """How it ended, in words: `exit 1`, `killed by signal 9`, `did not start`."""
        if self.exit_code is None:
            return "did not start"
        return f"killed by signal {-self.exit_code}" if self.exit_code < 0 else f"exit {self.exit_code}"

    def __str__(self) -> str:
        return (f"the prepare command `{shlex.join(self.command)}` failed on {self.worker} ({self.how}); "
                f"its output ends:\n{self.tail}")
