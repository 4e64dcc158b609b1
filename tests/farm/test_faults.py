"""Faults injected at a chosen moment into a real farm, with exact counts (`pytest -m faults`).

A local Ray with logical GPUs, an embedded redis-server, real git and real worker subprocesses;
only the training command is scripted (tests/fixtures/scripted_train.py). The farm-level faults
not here are in tests/farm/test_farm.py (a worker killed once, stopped past its lease, silent; a killed
Redis) and tests/farm/test_cli.py (the farm killed, Ctrl-C, resume).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest

from cluster.records import State
from tests.farmkit import Farm, WorkerKiller, farm_config, training_process

pytestmark = [pytest.mark.slow, pytest.mark.faults]


def worker_process(farm, job) -> psutil.Process | None:
    """The Ray worker process running this attempt (the one whose actor the job went to)."""
    pid = {s.name: s.info["pid"] for s in farm.workers}.get(job.worker)
    return psutil.Process(pid) if pid else None


@pytest.mark.parametrize("target", ["training process", "worker"])
def test_processes_killed_mid_run_twice_have_their_candidate_run_again_with_one_result(ray_local, repo, target):
    edits = [("slow", {"SLEEP": "3.0"}), ("neutral a", {"UNUSED": "11"}), ("neutral b", {"UNUSED": "12"})]
    farm = Farm(farm_config(repo, **{"judge.baseline_runs": 1, "workers.max_lost": 3}), edits)
    find = training_process if target == "training process" else (
        lambda job: worker_process(farm, job) if training_process(job) else None)
    killed = []  # attempts of the slow candidate's measurement job that were killed
    job_id = []

    def kill_twice():  # kill the slow candidate's training process in its first two attempts
        deadline = time.time() + 90
        while time.time() < deadline and len(killed) < 2:
            for job in farm.store.running_jobs():
                if farm.store.get_candidate(job.cand).description == "slow" and job.attempt > len(killed):
                    proc = find(job)  # once its training is under way
                    if proc is not None:
                        os.kill(proc.pid, signal.SIGKILL)
                        killed.append(job.attempt)
                        job_id.append(job.id)
            time.sleep(0.05)

    t = threading.Thread(target=kill_twice)
    t.start()
    try:
        farm.run()
        t.join()
        assert killed == [1, 2]
        by = farm.by_description()
        assert len(set(job_id)) == 1, "both kills hit the same job"
        # (a candidate that looks lucky also earns a confirmation job: only the killed job is counted)
        slow = [r for r in farm.store.results(by["slow"].id) if r.job == job_id[0]]
        assert len(slow) == 1 and slow[0].status == "ok" and slow[0].attempt == 3, [r.to_dict() for r in slow]
        job = farm.store.job_record(job_id[0])
        assert job["lost"] == 2
        assert ("killed (SIGKILL) from outside the worker" if target == "training process" else "failed") \
            in job["last_lost_reason"]
        for d in ("neutral a", "neutral b"):
            assert len([r for r in farm.store.results(by[d].id) if r.purpose == "measure"]) == 1
        assert all(c.state in (State.DISCARDED.value, State.MERGED.value) for c in by.values() if c.origin != "baseline")
    finally:
        farm.close()


def test_a_poison_candidate_is_failed_after_max_lost_and_the_others_keep_flowing(ray_local, repo):
    edits = [("kills its worker", {"MODE": '"kill-worker"'}), ("kills itself", {"MODE": '"kill-self"'}),
             ("neutral a", {"UNUSED": "11"}), ("neutral b", {"UNUSED": "12"}), ("neutral c", {"UNUSED": "13"})]
    farm = Farm(farm_config(repo, **{"judge.baseline_runs": 1, "workers.max_lost": 2}), edits)
    killer = WorkerKiller()
    try:
        farm.run()
        assert killer.killed == 2, killer.killed
        by = farm.by_description()
        for poison in ("kills its worker", "kills itself"):
            cand = by[poison]
            assert cand.state == State.FAILED.value, (poison, cand.state)
            assert farm.store.results(cand.id) == [], "a lost attempt records no result"
            lost = [e["data"] for e in farm.store.events(1000) if e["kind"] == "lost" and e["data"]["cand"] == cand.id]
            # (a dead worker may be noticed twice, by Ray's error and by its silence: the second is fenced)
            assert [e["outcome"] for e in lost if e["outcome"] != "fenced"] == ["requeued", "failed"], lost
            assert len({e["job"] for e in lost}) == 1 and farm.store.job_record(lost[0]["job"])["lost"] == 2
        for d in ("neutral a", "neutral b", "neutral c"):
            results = [r for r in farm.store.results(by[d].id) if r.purpose == "measure"]
            assert len(results) == 1 and results[0].status == "ok"
            assert by[d].state in (State.DISCARDED.value, State.MERGED.value)
    finally:
        killer.close()
        farm.close()
