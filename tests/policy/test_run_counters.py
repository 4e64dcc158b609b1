"""The run's counters, and how a run's end and a failed worker call are said: pure functions.

The baseline is a candidate but no experiment, so every count of experiments takes it off, and only
from the state it is in: a baseline that failed (its prepare, its worker) is no merge, and no count
of the progress line or the experiment budget goes below zero before anything is judged.
"""

from __future__ import annotations

import pytest

from cluster.loop.progress import experiments
from cluster.records import experiment_count
from cluster.report.status import format_status


@pytest.mark.parametrize("counts, baseline, expected", [
    ({}, "", (0, 0)),  # nothing yet
    ({"queued": 1}, "", (0, 0)),  # the baseline being measured
    ({"merged": 1}, "merged", (0, 0)),  # the baseline judged: the main line's own measurement
    ({"merged": 3, "discarded": 4}, "merged", (2, 6)),
    ({"failed": 1}, "failed", (0, 0)),  # the baseline failed: it was `merged -1`
    ({"failed": 3, "queued": 2}, "failed", (0, 2)),
    ({"merged": 1, "failed": 1, "invalid": 2}, "failed", (1, 1)),  # a refused patch is no experiment
])
def test_merged_and_done_count_experiments_only_and_never_go_below_zero(counts, baseline, expected):
    assert experiments(counts, baseline) == expected


def test_the_experiment_budget_counts_nothing_before_the_baseline_exists():
    assert experiment_count({}) == 0
    assert experiment_count({"queued": 1}) == 0
    assert experiment_count({"merged": 1, "queued": 2, "invalid": 1}) == 2


def status(why: str, state: str = "failed") -> dict:
    return {"tag": "T", "status": state, "why_ended": why, "best_bpb": None, "baseline_bpb": None, "main": "0" * 40,
            "candidates": {"queued": 1}, "queued": 3, "controller": None, "running": [], "workers": {}, "noise": {},
            "merged": [], "cost": {"gpu_hours": 0.0, "worker_hours": 0.0, "prompt_tokens": 0, "completion_tokens": 0,
                                    "usd": 0.0, "per_experiment": None, "per_merged": None}}


def test_status_says_a_run_level_error_in_full_with_its_output_tail():
    why = ("the prepare command `python prepare.py` failed on worker 10.0.0.1:gpu0 (exit 1), so the run stopped\n"
           "    Tokenizer: need at least 2 data shards (1 train + 1 val). Download more data first.\n"
           "The whole output: /runs/T/logs/prepare-10.0.0.1_gpu0.log")
    lines = format_status(status(why)).splitlines()
    assert lines[0] == "run T: failed"
    assert lines[1:4] == [f"  {ln}" for ln in why.splitlines()], "every line of it, none cut"


def test_status_keeps_a_one_line_ending_on_its_first_line():
    assert format_status(status("3 experiments done", "done")).splitlines()[0] == "run T: done (3 experiments done)"


def test_a_failed_worker_call_is_said_by_the_error_it_raised_not_by_rays_traceback():
    import ray

    from cluster.loop.fleet import ERROR_CHARS, failure

    trace = "ray::Worker.run() (pid=1, ip=10.0.0.1, actor_id=ab, repr=<worker.actor.Worker object>)\n" + "  File x\n" * 40
    e = ray.exceptions.RayTaskError("run", trace, ValueError("no space left on device"))
    assert failure(e) == "ValueError: no space left on device"
    long = failure(ray.exceptions.RayTaskError("run", trace, OSError("x" * 5000 + " the end")))
    assert long.startswith("OSError: ...") and long.endswith(" the end") and len(long) < ERROR_CHARS + 20
    assert failure(ray.exceptions.RayActorError()).startswith("RayActorError: ")
