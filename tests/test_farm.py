"""The farm end to end on real parts: a local Ray with logical GPUs, an embedded redis-server, real
git repositories and real worker subprocesses. Only the training command is scripted
(tests/fixtures/scripted_train.py) so each test can plant the outcome it checks."""

from __future__ import annotations

import os

import pytest
import ray

from cluster import ray_glue
from cluster.model import State
from tests.farmkit import Farm, farm_config, git, make_repo

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=4, num_gpus=4, include_dashboard=False, namespace=ray_glue.NAMESPACE,
             log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def repo(tmp_path):
    return make_repo(tmp_path / "target")


def finals(farm):
    return {c.description: c.state for c in farm.store.candidates() if c.origin != "baseline"}


def test_one_worker_per_logical_gpu_each_with_its_own_device(ray_local, repo):
    cfg = farm_config(repo, **{"workers.count": 0})
    slots = ray_glue.start_workers(cfg, "pin", str(repo / "w"))
    try:
        devices = [s.info["cuda_visible_devices"] for s in slots]
        assert len(slots) == 4
        assert sorted(devices) == ["0", "1", "2", "3"]
    finally:
        ray_glue.kill_actors([s.handle for s in slots])


def test_planted_improvement_is_confirmed_merged_and_pending_candidates_rebased(ray_local, repo):
    edits = [
        ("win", {"BONUS": "0.05"}),
        ("neutral a", {"UNUSED": "2"}),
        ("neutral b", {"UNUSED": "3"}),
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
        assert purposes == ["baseline", "confirm", "measure"], "then measured as the main line"
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


def test_pure_noise_is_never_merged(ray_local, repo):
    edits = [(f"neutral {i}", {"UNUSED": str(i + 10)}) for i in range(8)]
    farm = Farm(farm_config(repo), edits)
    try:
        farm.run()
        states = finals(farm)
        assert len(states) == 8
        assert all(s == State.DISCARDED.value for s in states.values()), states
        assert farm.repo.main_line("t1") == git(repo, "rev-parse", "HEAD").strip()
    finally:
        farm.close()


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
