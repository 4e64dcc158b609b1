"""The farm end to end on real parts: a local Ray with logical GPUs, an embedded redis-server, real
git repositories and real worker subprocesses. Only the training command is scripted
(tests/fixtures/scripted_train.py) so each test can plant the outcome it checks."""

from __future__ import annotations

import os
import time

import pytest
import ray

from cluster.actors import placement
from cluster.records import State
from tests.farmkit import Farm, farm_config, git, training_process

pytestmark = pytest.mark.slow


def finals(farm):
    return {c.description: c.state for c in farm.store.candidates() if c.origin != "baseline"}


def test_one_worker_per_logical_gpu_each_with_its_own_device(ray_local, repo):
    cfg = farm_config(repo, **{"workers.count": 0})
    slots = placement.start_workers(cfg, "pin", str(repo / "w"))
    try:
        devices = [s.info["cuda_visible_devices"] for s in slots]
        assert len(slots) == 4
        assert sorted(devices) == ["0", "1", "2", "3"]
    finally:
        placement.kill_actors([s.handle for s in slots])


def test_planted_improvement_is_confirmed_merged_and_pending_candidates_rebased(ray_local, repo):
    edits = [
        ("win", {"BONUS": "0.05"}),
        # (values whose fixed seed-1 draws are not near the margin: the fixture's noise is a fixed function
        # of the file's text and the seed, and UNUSED = 2 happens to draw -2 sigma)
        ("neutral a", {"UNUSED": "12"}),
        ("neutral b", {"UNUSED": "13"}),
        ("conflicts with win", {"BONUS": "0.01"}),
    ]
    farm = Farm(farm_config(repo, **{"workers.count": 1, "proposer.queue_margin": 4}), edits)
    try:
        why = farm.run()
        assert why == "the proposer has nothing new to try"
        cands = farm.by_description()
        win = cands["win"]
        assert win.state == State.MERGED.value
        assert win.decision["numbers"]["n_cand"] == 2, "a winner is measured again before it merges"
        purposes = sorted(r.purpose for r in farm.store.results(win.id))
        # then measured as the main line on new seeds: as many times as the baseline, and once more
        # beside each later confirmation
        assert [p for p in purposes if p != "baseline"] == ["confirm", "measure"], purposes
        assert purposes.count("baseline") >= 3, purposes
        main = farm.repo.main_line("t1")
        assert main == win.commit, "the main line is exactly the measured tree"
        for name in ("neutral a", "neutral b"):
            c = cands[name]
            assert c.base == win.commit, f"{name} was rebased onto the new main line"
            assert git(repo, "rev-parse", f"{c.commit}^") == win.commit + "\n"
            assert c.state == State.DISCARDED.value
            assert all(r.commit == c.commit for r in farm.store.results(c.id)), "measured only after the rebase"
        assert cands["conflicts with win"].state == State.STALE.value
        assert git(repo, "rev-parse", "HEAD").strip() != main, "the user's HEAD did not move"
    finally:
        farm.close()


def test_two_compatible_wins_found_in_one_round_end_as_one_merged_combination(ray_local, repo):
    """Two independent planted gains proposed in one round: the farm measures their combination (the
    3-way merge of both changes), which beats each alone, and merges it; both wins are recorded as
    merged with it, and the main line is exactly the combination's measured tree."""
    edits = [("win one", {"BONUS": "0.02"}), ("win two", {"BONUS2": "0.02"}), ("neutral", {"UNUSED": "4"})]
    # three workers: the baseline's three runs, then the three candidates side by side, so both wins are
    # measured before either's confirmation is in (with two, the first can merge before the second runs)
    # (near misses off: the neutral one may not join the window by luck)
    farm = Farm(farm_config(repo, **{"workers.count": 3, "search.near_miss": 0.0}), edits)
    try:
        assert farm.run() == "the proposer has nothing new to try"
        cands = farm.by_description()
        combo = next(c for c in cands.values() if c.origin == "combine")
        one, two = cands["win one"], cands["win two"]
        assert sorted(combo.meta["combination"]) == sorted([one.id, two.id])
        assert combo.state == State.MERGED.value, combo.decision
        main = farm.repo.main_line("t1")
        assert main == combo.commit, "the main line is exactly the measured tree"
        source = farm.repo.read_file(main, "train.py")
        assert "BONUS = 0.02" in source and "BONUS2 = 0.02" in source, "both changes are in it"
        for win in (one, two):
            assert win.state == State.MERGED.value and win.decision["action"] == "combined", win.decision
            assert win.decision["numbers"]["combination"] == combo.id
        purposes = sorted(r.purpose for r in farm.store.results(combo.id) if r.purpose != "baseline")
        assert purposes == ["confirm", "measure"], "measured with its replication (then as the main line)"
        assert cands["neutral"].state != State.MERGED.value
        assert any(e["kind"] == "combination" for e in farm.store.events(1000)), "the event says so"
    finally:
        farm.close()


def test_pure_noise_is_never_merged(ray_local, repo):
    edits = [(f"neutral {i}", {"UNUSED": str(i + 20)}) for i in range(8)]
    farm = Farm(farm_config(repo), edits)
    try:
        farm.run()
        states = finals(farm)
        assert len(states) == 8
        assert all(s == State.DISCARDED.value for s in states.values()), states
        assert farm.repo.main_line("t1") == git(repo, "rev-parse", "HEAD").strip()
    finally:
        farm.close()


@pytest.mark.faults
def test_crash_timeout_and_missing_metric_are_recorded_and_the_farm_goes_on(ray_local, repo):
    edits = [
        ("crashes", {"MODE": '"crash"'}),
        ("hangs", {"MODE": '"hang"'}),
        ("no metric", {"MODE": '"no-metric"'}),
        ("fine", {"UNUSED": "5"}),
    ]
    farm = Farm(farm_config(repo, **{"train.grace": 3.0}), edits)
    try:
        farm.run()
        by = farm.by_description()
        status = {d: [r.status for r in farm.store.results(c.id)] for d, c in by.items() if c.origin != "baseline"}
        fine = status.pop("fine")
        assert status == {"crashes": ["crash"], "hangs": ["timeout"], "no metric": ["no-metric"]}
        assert fine and set(fine) == {"ok"}, "a healthy candidate after three broken ones still runs"
        assert "planted crash" in farm.store.results(by["crashes"].id)[0].log_tail
        assert all(by[d].state == State.DISCARDED.value for d in ("crashes", "hangs", "no metric"))
    finally:
        farm.close()


def test_user_working_tree_index_and_head_are_untouched(ray_local, repo):
    (repo / "train.py").write_text((repo / "train.py").read_text() + "# local edit\n")
    (repo / "notes.txt").write_text("untracked\n")
    before = (git(repo, "status", "--porcelain"), git(repo, "rev-parse", "HEAD"),
              (repo / ".git" / "index").read_bytes(), (repo / "train.py").read_bytes())
    farm = Farm(farm_config(repo), [("win", {"BONUS": "0.05"})])
    try:
        farm.run()
    finally:
        farm.close()
    after = (git(repo, "status", "--porcelain"), git(repo, "rev-parse", "HEAD"),
             (repo / ".git" / "index").read_bytes(), (repo / "train.py").read_bytes())
    assert after == before
    branches = git(repo, "branch", "--list", "--format=%(refname:short)").split()
    assert "autoresearch/t1" in branches and "candidates/t1/c0002" in branches


def test_budget_reaches_the_training_process(ray_local, repo):
    farm = Farm(farm_config(repo, **{"train.budget": 7.0, "judge.baseline_runs": 1}), [])
    try:
        farm.run()
        (r,) = farm.store.results()
        assert r.summary["budget_seen"] == 7.0
        assert os.path.exists(r.log_path)
    finally:
        farm.close()


def _state_snapshot(store):
    """Every candidate id with the states whose index holds it, read in one MULTI/EXEC."""
    from cluster.records import State as S

    pipe = store.r.pipeline(transaction=True)
    pipe.zrange(store.key("cands"), 0, -1)
    for s in S:
        pipe.zrange(store.key("cands", "state", s.value), 0, -1)
    ids, *per_state = pipe.execute()
    where = {i: [] for i in ids}
    for s, members in zip(S, per_state):
        for m in members:
            where.setdefault(m, []).append(s.value)
    return where


def test_states_stay_exclusive_and_the_main_line_only_moves_forward_to_measured_commits(ray_local, repo):
    import threading

    edits = [("win", {"BONUS": "0.05"}), ("noise", {"UNUSED": "30"}), ("win 2", {"BONUS2": "0.05"}),
             ("noise 2", {"UNUSED": "31"})]
    farm = Farm(farm_config(repo), edits)
    bad, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            for cid, states in _state_snapshot(farm.store).items():
                if len(states) != 1:
                    bad.append((cid, states))
            stop.wait(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        farm.run()
    finally:
        stop.set()
        watcher.join()
    try:
        assert not bad, bad
        by = farm.by_description()
        assert by["win"].state == by["win 2"].state == State.MERGED.value
        moves = git(repo, "reflog", "show", "--format=%H", "autoresearch/t1").split()[::-1]
        merges = [c for c in farm.store.candidates() if c.decision and c.decision.get("action") == "merge"]
        assert len(moves) == 1 + len(merges) and len(merges) in (1, 2), \
            "created, then one move per merge (the two wins alone, or one combination of both)"
        measured = {r.commit for r in farm.store.results() if r.status == "ok"}
        for old, new in zip(moves, moves[1:]):
            assert git(repo, "merge-base", "--is-ancestor", old, new) == "", "only fast-forwards"
            assert new in measured, "every main-line commit was measured before it became the main line"
    finally:
        farm.close()


@pytest.mark.faults
def test_a_worker_killed_mid_run_has_its_candidate_run_again_with_one_result(ray_local, repo):
    import signal
    import threading

    farm = Farm(farm_config(repo, **{"judge.baseline_runs": 1}), [("slow", {"SLEEP": "4.0"})])
    pids = {s.name: s.info["pid"] for s in farm.workers}
    killed = []

    def kill_when_running():
        deadline = time.time() + 60
        while time.time() < deadline and not killed:
            for job in farm.store.running_jobs():
                cand = farm.store.get_candidate(job.cand)
                if cand.description == "slow" and training_process(job):  # its training under way
                    os.kill(pids[job.worker], signal.SIGKILL)
                    killed.append(job)
                    return
            time.sleep(0.05)

    t = threading.Thread(target=kill_when_running)
    t.start()
    try:
        farm.run()
        t.join()
        assert killed, "the slow candidate never ran"
        slow = farm.by_description()["slow"]
        # the killed job's results (a measurement that beat the baseline by noise also gets a confirmation job)
        results = [r for r in farm.store.results(slow.id) if r.job == killed[0].id]
        assert len(results) == 1 and results[0].status == "ok", farm.lines
        assert results[0].attempt == killed[0].attempt + 1, "the crashed worker got no job until it was back"
        assert farm.store.job_record(killed[0].id)["lost"] == 1
        assert slow.state in (State.DISCARDED.value, State.MERGED.value)
    finally:
        farm.close()


def test_the_queue_never_runs_dry_while_workers_are_idle(ray_local, repo):
    edits = [(f"neutral {i}", {"UNUSED": str(i + 40)}) for i in range(10)]
    farm = Farm(farm_config(repo, **{"judge.baseline_runs": 2}), edits)
    ctrl = farm.ctrl
    starved, step = [], ctrl.step

    def checked_step():
        step()
        idle = [w for w in ctrl.fleet.names if w not in ctrl.fleet.inflight]
        depth = farm.store.queue_depth()
        if idle and depth:
            starved.append(("idle worker beside a non-empty queue", idle, depth))
        left = ray.get(farm.proposer.left.remote())
        if left and depth + ctrl.intake.proposer.asking == 0:
            starved.append(("the queue ran dry with proposals left and none asked for", left))

    ctrl.step = checked_step
    try:
        farm.run()
        assert not starved, starved[:3]
        purposes = [r.purpose for r in farm.store.results()]
        assert purposes.count("baseline") >= 2 and purposes.count("measure") == 10, "every candidate ran"
    finally:
        farm.close()


def test_more_workers_than_the_cluster_holds_is_a_clear_error(ray_local, repo):
    from cluster.errors import FarmError

    with pytest.raises(FarmError, match="8 workers need 8 GPUs.*has 4"):
        placement.start_workers(farm_config(repo, **{"workers.count": 8}), "big", str(repo / "w"))


@pytest.mark.faults
def test_a_killed_redis_server_is_restarted_and_the_run_goes_on_with_nothing_lost(ray_local, repo):
    import signal
    import threading

    edits = [(f"neutral {i}", {"UNUSED": str(i + 60)}) for i in range(6)]
    farm = Farm(farm_config(repo, **{"judge.baseline_runs": 2}), edits)
    seen_before: list[set[str]] = []

    def kill_redis_midway():
        deadline = time.time() + 60
        while time.time() < deadline:
            results = farm.store.results()
            if len(results) >= 4:
                seen_before.append({r.job for r in results})
                pid = int(farm.store.r.info("server")["process_id"])
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.1)

    t = threading.Thread(target=kill_redis_midway)
    t.start()
    try:
        why = farm.run()
        t.join()
        assert seen_before, "the run ended before the kill"
        results = farm.store.results()
        jobs = [r.job for r in results]
        assert seen_before[0] <= set(jobs), "every acknowledged result survived the restart"
        assert len(jobs) == len(set(jobs)), "no job recorded twice"
        # a neutral candidate that looks lucky earns a confirmation run: those are extra jobs
        assert len([r for r in results if r.purpose != "confirm"]) == 2 + 6
        assert why == "the proposer has nothing new to try"
        assert all(State(c.state).final for c in farm.store.candidates())
    finally:
        farm.close()


@pytest.mark.faults
def test_a_worker_stopped_past_its_lease_loses_its_job_and_its_late_result_is_refused(ray_local, repo):
    import signal
    import threading

    cfg = farm_config(repo, **{"judge.baseline_runs": 1, "train.grace": 5.0, "workers.lease_slack": 1.0})
    assert cfg.workers.silent_after > 10, "this test exercises the lease, not the heartbeat"
    farm = Farm(cfg, [("slow", {"SLEEP": "3.0"})])
    pids = {s.name: s.info["pid"] for s in farm.workers}
    events = []

    def stop_then_continue():
        deadline = time.time() + 90
        stopped = None
        while time.time() < deadline:
            if stopped is None:
                for job in farm.store.running_jobs():
                    if farm.store.get_candidate(job.cand).description == "slow" and training_process(job):
                        stopped = pids[job.worker]
                        os.kill(stopped, signal.SIGSTOP)
                        events.append(("stopped", job.worker, job.attempt))
                        break
            elif any(r.attempt == 2 for r in farm.store.results()):
                os.kill(stopped, signal.SIGCONT)
                events.append(("continued",))
                return
            time.sleep(0.05)
        if stopped:
            os.kill(stopped, signal.SIGCONT)

    t = threading.Thread(target=stop_then_continue)
    t.start()
    try:
        farm.run()
        t.join()
        assert [e[0] for e in events] == ["stopped", "continued"], events
        slow = farm.by_description()["slow"]
        (result,) = [r for r in farm.store.results(slow.id) if r.purpose == "measure"]  # (noise may add a confirm)
        assert result.attempt == 2 and result.worker != events[0][1], "re-run elsewhere"
        refused = farm.store.refused()
        assert len(refused) == 1 and refused[0]["attempt"] == 1 and refused[0]["reason"] == "stale attempt"
    finally:
        farm.close()



@pytest.mark.faults
def test_a_worker_that_answers_no_heartbeat_loses_its_job_long_before_its_lease(ray_local, repo):
    import signal
    import threading

    cfg = farm_config(repo, **{"judge.baseline_runs": 1, "train.grace": 60.0, "workers.lease_slack": 60.0,
                               "workers.heartbeat_seconds": 0.5, "workers.silent_after": 3.0})
    farm = Farm(cfg, [("slow", {"SLEEP": "3.0"})])
    pids = {s.name: s.info["pid"] for s in farm.workers}
    stopped: list[tuple[int, float]] = []

    def stop_the_slow_one():
        deadline = time.time() + 60
        while time.time() < deadline and not stopped:
            for job in farm.store.running_jobs():
                if farm.store.get_candidate(job.cand).description == "slow" and training_process(job):
                    os.kill(pids[job.worker], signal.SIGSTOP)
                    stopped.append((pids[job.worker], time.time(), job.worker))
                    return
            time.sleep(0.05)

    t = threading.Thread(target=stop_the_slow_one)
    t.start()
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            farm.ctrl.step()
            slow = farm.by_description().get("slow")
            done = [r for r in farm.store.results() if slow and r.cand == slow.id]
            if done:
                break
        t.join()
        assert stopped, "the slow candidate never ran"
        (result,) = done
        assert result.attempt == 2 and result.finished_at - stopped[0][1] < 30, "re-run well inside the 124 s lease"
        live = farm.store.live_workers()
        assert stopped[0][2] not in live, "the stopped worker's heartbeat expired"
        assert len(live) == 1, "the other one keeps answering"
    finally:
        for pid, _, _ in stopped:
            os.kill(pid, signal.SIGCONT)
        farm.ctrl.stop_requested = True
        farm.ctrl.shutdown()
        farm.close()
