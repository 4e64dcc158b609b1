"""What one worker is told at its start: :class:`WorkerSettings`.

`cluster/actors/placement.py` builds it from the farm's configuration (`worker_settings`); tests and
benchmarks build it directly. The defaults are the worker's own, for a worker built by hand: the
farm passes every field of its configuration explicitly (its defaults are in `cluster/config.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class WorkerSettings:
    """Every knob the worker reads, fixed for its lifetime (a run with another budget takes a new one:
    `dataclasses.replace`)."""

    name: str  # the worker's name (`<node-ip>:gpu<k>`); also its directory under work_root
    work_root: str  # where the worker keeps its runs, logs and compile caches (`~` expanded)
    command: Sequence[str]  # the training command, run in the candidate's tree; `python` = this interpreter
    budget: float  # training seconds per run (AUTORESEARCH_TIME_BUDGET)
    grace: float  # extra wall-clock seconds for start-up and evaluation before a kill
    prepare_command: Sequence[str] = ()  # run once per distinct frozen harness; () = none
    cache_dir: str = ""  # AUTORESEARCH_CACHE for prepare and train; "" = the worker's $AUTORESEARCH_CACHE, else
    # $XDG_CACHE_HOME/autoresearch-farm, else ~/.cache/autoresearch-farm, on its node (as prepare.py resolves
    # CACHE_DIR); an upstream-style harness: its own CACHE_DIR, moved here when set
    isolate_network: bool = False  # run candidates without network (an error where the OS cannot)
    env: Mapping[str, str] = field(default_factory=dict)  # extra environment for every run (train.env)
    cpu_threads: int = 0  # OMP_NUM_THREADS of a run; 0 = leave torch's default
    device: str = ""  # AUTORESEARCH_DEVICE of a run: "" = the harness's choice, "cpu" on a CPU worker
    frozen: Sequence[str] = ()  # the harness files a run must leave as shipped (else: cheat)
    editable: str = "train.py"  # the file candidates change; what the tripwire reads
    trusted_eval: bool = False  # val_bpb from the worker's own evaluation of the handed-over weights
    disk_quota_gb: float = 0.0  # a run whose directory grows past this is killed (crash); 0 = none
    harness: str = "farm"  # how the frozen harness is run: "farm" (the farm's own contract: the budget knob,
    # prepare.seed(), build_model and the weight hand-off) or "upstream" (karpathy/autoresearch's shape: a
    # TIME_BUDGET constant, module-level training, evaluate_bpb; run through worker/upstream_launch.py)
    view: bool = True  # a run sees only its directory, the data, the system and the interpreter (worker.sandbox.view)
    visible: Sequence[str] = ()  # more host paths a run may read (train.visible: a conda prefix, a data mount)
    tripwire: bool = True  # the static scan of a trusted run's editable file before it runs; tests and
    # benchmarks turn it off to reach the layers behind it; the farm never does
