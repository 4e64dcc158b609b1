"""bench/train_throughput.py: the log clock, the steady rate, and the worker it drives outside Ray."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


from bench import train_throughput as tt

REPO = Path(__file__).resolve().parents[2]


def test_line_clock_times_step_lines_as_they_are_written(tmp_path):
    log = tmp_path / "run.log"
    log.write_text("=== autoresearch run start ===\ndevice: cpu | params: 1.8M\n")
    with tt.LineClock(log, poll_s=0.02) as clock:
        time.sleep(0.15)
        before_steps = time.time()
        with open(log, "a") as f:
            f.write("step 00001 | loss 9.0 | smooth 9.0 | lr x1.000 | 900 ms | 7,000 tok/s | epoch 1 | 0.0/10s\n")
            f.flush()
            time.sleep(0.2)
            f.write("step 00002 | loss 8.0 | smooth 8.9 | lr x1.000 | 800 ms | 8,000 tok/s | epoch 1 | 0.8/10s\n"
                    "step 00003 | loss 7.0 | smooth 8.7 | lr x1.000 | 700 ms | 9,000 tok/s | epoch 1 | 1.5/10s\nval")
    assert clock.tok_per_s == [7000.0, 8000.0, 9000.0], "a partial last line is not a step"
    assert before_steps <= clock.first_step < clock.last_step
    assert clock.last_step - clock.first_step >= 0.15


def test_steady_rate_is_the_median_of_the_second_half():
    assert tt.steady_rate([10.0, 1000.0, 1000.0, 10.0, 30.0, 20.0]) == 20.0
    assert tt.steady_rate([5.0]) == 5.0
    assert tt.steady_rate([]) is None


def test_rows_and_headline_report_overhead_against_the_budget():
    rows = [{"run": 1, "worker": "bench", "view": True, "cache": "cold", "budget": 300.0, "val_bpb": 0.7781,
             "overhead_seconds": 47.48, "overhead_fraction": 0.1583, "tok_per_s": 1169685.0}]
    assert "| 1 | bench | True | cold | 300 | 0.7781 |" in tt.format_rows(rows)
    assert tt.headline(rows) == ("headline: cold run: overhead 47.5 s around a 300 s budget (15.8 %), "
                                 "val_bpb 0.7781")


def test_view_ratio_compares_the_warm_runs_with_and_without_the_view():
    rows = [{"run": 1, "view": True, "cache": "cold", "tok_per_s": 1.0},  # the cold starts: left out
            {"run": 2, "view": False, "cache": "cold", "tok_per_s": 2.0},
            {"run": 3, "view": True, "cache": "warm", "tok_per_s": 90.0},
            {"run": 4, "view": False, "cache": "warm", "tok_per_s": 100.0},
            {"run": 5, "view": True, "cache": "warm", "tok_per_s": 99.0},
            {"run": 6, "view": False, "cache": "warm", "tok_per_s": 110.0}]
    assert tt.view_ratio(rows) == "view: warm tok/s with / without = 0.900 (2 and 2 runs)"
    assert tt.view_ratio([r for r in rows if r["view"]]) is None


def test_worker_runs_outside_ray_without_importing_it(tmp_path):
    # the GPU machines the benchmark runs on may have no Ray: the Worker must not need it
    code = ("import sys; from worker.actor import Worker; from worker.settings import WorkerSettings; "
            "w = Worker(WorkerSettings(name='w', work_root=sys.argv[1], command=[], budget=1, grace=1)); "
            "print(w.info()['gpu_ids'], 'ray' in sys.modules)")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "1,3"}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["['1',", "'3']", "False"]
