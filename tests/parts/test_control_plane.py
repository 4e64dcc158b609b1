"""The controller's cost per experiment, on real parts without Ray: a real redis-server and a real git
repository, worker slots whose `run.remote` only records the call. These tests pin down that the
loop's Redis commands per result do not grow with the number of workers, that a merge leaves the
queue alone until a worker takes a candidate, and that the in-memory job counts survive a resume."""

from __future__ import annotations

import time
from types import SimpleNamespace

from cluster.loop import judge as judge_policy
from cluster.loop.controller import Controller
from cluster.loop.fleet import Fleet, ProposerCalls, WorkerSlot
from cluster.records import Purpose, Result, State
from cluster.repo import FarmRepo
from cluster.store import Store
from proposer.base import Proposal
from tests.farmkit import farm_config, git, make_repo, set_constants


class FakeHandle:
    """A worker actor's handle: `run.remote` and `cancel.remote` remember the call and return a token."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.run = SimpleNamespace(remote=lambda *a: self.calls.append(a) or ("ref", len(self.calls)))
        self.cancel = SimpleNamespace(remote=lambda *a: None)


class RecordingFleet(Fleet):
    """The fleet without Ray: nothing is shipped (`put`), runs are only recorded by the handles."""

    def put(self, files):
        return None


def controller(tmp_path, redis_client, n: int, *, resume: bool = False, name: str = "target",
               train_source: str | None = None, **overrides) -> Controller:
    repo_path = tmp_path / name
    if not repo_path.exists():
        make_repo(repo_path, train_source)
        redis_client.flushall()
    cfg = farm_config(repo_path, **{"workers.count": n, **overrides})
    store = Store(redis_client, "t1")
    if not resume:
        store.create_run({"tag": "t1", "status": "running"})
    fleet = RecordingFleet([WorkerSlot(f"w{i}", FakeHandle(), {}) for i in range(n)])
    ctrl = Controller(cfg, "t1", store, FarmRepo(repo_path), fleet, ProposerCalls(None),
                      run_dir=tmp_path / f"run-{name}", report=lambda line: None)
    ctrl.start(resume)
    return ctrl


def proposals(ctrl: Controller, changes: list[dict[str, str]]) -> list[Proposal]:
    src = ctrl.repo.read_file(ctrl.store.run_meta()["main"], "train.py")
    return [Proposal(f"edit {i}: {c}", set_constants(src, c), "human", {}) for i, c in enumerate(changes)]


def finish(ctrl: Controller, name: str, val_bpb: float = 1.0) -> None:
    """The worker `name` reports its run done; the controller records it."""
    job = ctrl.fleet.inflight.pop(name).job
    now = time.time()
    r = Result(job=job.id, cand=job.cand, commit=job.commit, attempt=job.attempt, status="ok", val_bpb=val_bpb,
               worker=name, started_at=now - 1, finished_at=now, purpose=job.purpose, seed=job.seed)
    ctrl.record(name, job, {"result": r.to_dict(), "log": ""})


def commands(ctrl: Controller) -> int:
    return ctrl.store.r.info("stats")["total_commands_processed"]


def cost_of_one_result(tmp_path, redis_client, n: int) -> tuple[int, int]:
    """Redis commands the controller spends on recording one result and judging after it, with n
    workers busy and n candidates queued."""
    ctrl = controller(tmp_path, redis_client, n, name=f"target-{n}")
    for p in proposals(ctrl, [{"UNUSED": str(100 + i)} for i in range(2 * n)]):
        ctrl.intake.admit(p)
    ctrl.dispatch()
    assert len(ctrl.fleet.inflight) == n and ctrl.store.queue_depth() == n + 3
    first, measure = [name for name, f in ctrl.fleet.inflight.items() if f.job.purpose == Purpose.MEASURE.value][:2]
    finish(ctrl, first)  # (the first use of a script on a server costs a NOSCRIPT round trip)
    cand = ctrl.fleet.inflight[measure].job.cand
    before = commands(ctrl)
    finish(ctrl, measure)
    recorded = commands(ctrl) - before - 1  # - the INFO itself
    before = commands(ctrl)
    ctrl.judge()
    judged = commands(ctrl) - before - 1
    assert ctrl.store.get_candidate(cand).state == State.FINISHED.value, "judged once the baseline is in"
    return recorded, judged


def test_redis_commands_per_result_do_not_grow_with_the_number_of_workers(tmp_path, redis_client):
    small = cost_of_one_result(tmp_path, redis_client, 6)
    large = cost_of_one_result(tmp_path, redis_client, 48)
    assert large == small, f"commands (record, judge) per result: {small} at N=6, {large} at N=48"
    assert small[0] < 20, small  # two scripts (record, transition), an event and a read, counted inside Lua too


def test_open_job_counts_follow_the_loop_and_are_rebuilt_on_resume(tmp_path, redis_client):
    ctrl = controller(tmp_path, redis_client, 3)
    ctrl.intake.admit_round(proposals(ctrl, [{"UNUSED": "41"}, {"UNUSED": "42"}]))
    ctrl.dispatch()
    finish(ctrl, "w0")
    lost = ctrl.fleet.inflight["w1"].job
    ctrl.lost(lost, "test: worker gone")  # back to the queue: still open
    store = ctrl.store
    truth = {j.id: (j.cand, j.commit) for j in store.queued_jobs() + store.running_jobs()}
    assert ctrl.jobs.open == truth and sum(ctrl.jobs.by_cand.values()) == len(truth) == 4
    again = controller(tmp_path, redis_client, 3, resume=True)  # re-queues the running ones
    assert again.jobs.open == truth
    assert again.jobs.by_cand == ctrl.jobs.by_cand and again.jobs.by_commit == ctrl.jobs.by_commit


def test_a_merge_leaves_the_queue_alone_and_a_taken_candidate_is_rebased_onto_the_main_line(tmp_path, redis_client):
    ctrl = controller(tmp_path, redis_client, 1)
    repo, store, old_main = ctrl.repo, ctrl.store, ctrl.main
    ctrl.intake.admit_round(proposals(ctrl, [{"BONUS": "0.05"}, {"UNUSED": "2"}, {"BONUS": "0.01"},
                                             {"UNUSED": "3"}]))
    win, a, clash, b = [store.get_candidate(f"c{i:04d}") for i in range(2, 6)]
    win_job = next(j for j in store.queued_jobs() if j.cand == win.id)
    assert store.remove_from_queue(win_job.id)
    ctrl.jobs.closed(win_job.id)
    store.transition(win.id, {State.QUEUED.value}, State.FINISHED.value)
    branches = repo.branches("candidates/t1")

    ctrl.apply(store.get_candidate(win.id), judge_policy.Decision("merge", "planted"), ctrl.line())

    assert repo.main_line("t1") == ctrl.main == store.run_meta()["main"] == win.commit
    assert repo.branches("candidates/t1") == branches, "no candidate was rebased by the merge itself"
    assert [store.get_candidate(c.id).base for c in (a, clash, b)] == [old_main] * 3
    taken = [ctrl.take("w0") for _ in range(4)]
    assert [j.purpose for j in taken] == ["baseline"] * 3 + ["measure"]
    job, now = taken[3], store.get_candidate(a.id)
    assert job.cand == a.id and job.commit == now.commit != a.commit
    assert now.base == win.commit and git(repo.path, "rev-parse", f"{job.commit}^").strip() == win.commit
    assert store.get_job(job.id).commit == job.commit, "the job's record names the rebased commit"
    assert now.meta["rebased_from"] == a.commit and ctrl.jobs.open[job.id] == (a.id, job.commit)
    assert repo.read_file(job.commit, "train.py") == set_constants(repo.read_file(win.commit, "train.py"),
                                                                   {"UNUSED": "2"})
    assert [store.get_candidate(c.id).base for c in (clash, b)] == [old_main] * 2, "only the taken one moved"
    clash_job = next(j for j in store.queued_jobs() if j.cand == clash.id)
    nxt = ctrl.take("w0")  # the clash goes stale as it is taken; the worker gets the next one
    assert store.get_candidate(clash.id).state == State.STALE.value
    assert store.job_state(clash_job.id) == "removed" and clash_job.id not in ctrl.jobs.open
    assert nxt.cand == b.id and store.get_candidate(b.id).base == win.commit
    assert ctrl.take("w0") is None and store.running_jobs() and not store.queued_jobs()


def reference_history(ctrl: Controller, main: str):
    """The proposer's history computed from scratch, from every candidate in the store."""
    from proposer.base import Outcome

    cands, outcomes = ctrl.store.candidates(), []
    for cand in cands:
        if cand.origin == "baseline" or not cand.decision or cand.state not in ("merged", "discarded"):
            continue
        runs = [r for r in ctrl.measured.of(cand.commit) if r.cand == cand.id]
        status = "ok" if any(r.status == "ok" for r in runs) else (runs[-1].status if runs else cand.state)
        tail = next((r.log_tail for r in reversed(runs) if r.status != "ok"), "")
        outcomes.append(Outcome(meta=dict(cand.meta, description=cand.description, candidate=cand.id, log_tail=tail),
                                status=status, delta=(cand.decision.get("numbers") or {}).get("delta"),
                                merged=cand.state == "merged"))
    tried = {x.meta.get("fingerprint") for x in cands if x.base == main and x.meta.get("fingerprint")}
    pending = [x.description for x in cands if x.state in ("queued", "running", "finished")]
    return tried, outcomes, pending


def hgetalls(ctrl: Controller) -> int:
    return ctrl.store.r.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0)


def test_the_proposers_history_is_incremental_and_equals_a_full_read(tmp_path, redis_client):
    ctrl = controller(tmp_path, redis_client, 4)

    def check():
        h = ctrl.intake.history(ctrl.main)
        assert (h.tried, h.outcomes, h.pending_descriptions) == reference_history(ctrl, ctrl.main)
        return h

    bad = Proposal("broken", "def (:\n", "human", {})
    check()
    ctrl.intake.admit_round(proposals(ctrl, [{"UNUSED": str(200 + i)} for i in range(6)] + [{"BONUS": "0.05"}])
                            + [bad])
    check()
    for _ in range(2):  # the baseline's three runs and five candidates' first
        ctrl.dispatch()
        for name in list(ctrl.fleet.inflight):
            finish(ctrl, name, 1.0)
        ctrl.judge()
        check()
    win = next(c for c in ctrl.store.candidates() if "BONUS" in c.description)
    assert ctrl.store.get_candidate(win.id).state in ("queued", "running", "finished")
    for state in ("queued", "running"):
        ctrl.store.transition(win.id, {state}, "finished")
    ctrl.apply(ctrl.store.get_candidate(win.id), judge_policy.Decision("merge", "planted"), ctrl.line())
    check()
    ctrl.dispatch()  # the next ones are rebased onto the new main line as they are taken
    h = check()
    assert h.outcomes and h.pending_descriptions and h.tried
    before = hgetalls(ctrl)
    check_again = ctrl.intake.history(ctrl.main)
    assert hgetalls(ctrl) - before <= 2, "nothing changed: the run record only (and INFO's own count)"
    assert check_again.outcomes == h.outcomes


def test_no_state_counts_are_read_once_the_experiment_budget_is_spent(tmp_path, redis_client):
    ctrl = controller(tmp_path, redis_client, 4, **{"run.max_experiments": 2})
    ctrl.intake.admit_round(proposals(ctrl, [{"UNUSED": "51"}, {"UNUSED": "52"}]))
    ctrl.dispatch()
    assert ctrl.store.queue_depth() < len(ctrl.fleet), "the queue has room for more"
    zcard = lambda: ctrl.store.r.info("commandstats").get("cmdstat_zcard", {}).get("calls", 0)
    ctrl.intake.ask()  # the queue has room, the budget none: counted once, then remembered
    assert not ctrl.intake.proposer.asking
    before = zcard()
    for _ in range(5):
        ctrl.intake.ask()
    assert zcard() == before


def test_a_merge_makes_a_proposer_that_ran_dry_worth_asking_again(tmp_path, redis_client):
    from cluster.loop.intake import DRY_ROUNDS

    ctrl = controller(tmp_path, redis_client, 1)
    store = ctrl.store
    ctrl.intake.admit_round(proposals(ctrl, [{"BONUS": "0.05"}]))
    win = store.get_candidate("c0002")
    ctrl.intake.dry = DRY_ROUNDS  # three rounds in a row without a sound proposal
    assert ctrl.intake.exhausted
    job = next(j for j in store.queued_jobs() if j.cand == win.id)
    assert store.remove_from_queue(job.id)
    ctrl.jobs.closed(job.id)
    store.transition(win.id, {State.QUEUED.value}, State.FINISHED.value)
    ctrl.apply(store.get_candidate(win.id), judge_policy.Decision("merge", "planted"), ctrl.line())
    assert ctrl.main == win.commit
    assert not ctrl.intake.exhausted and ctrl.intake.dry == 0, "new neighbours: the proposer is asked again"


def test_every_measurement_gets_the_next_seed_of_its_commit_and_resume_goes_on_from_there(tmp_path, redis_client):
    ctrl = controller(tmp_path, redis_client, 1)
    store, baseline = ctrl.store, ctrl.main
    assert sorted(j.seed for j in store.queued_jobs() if j.commit == baseline) == [1, 2, 3], "the baseline's repeats"
    ctrl.intake.admit_round(proposals(ctrl, [{"BONUS": "0.05"}, {"UNUSED": "2"}]))
    win, other = store.get_candidate("c0002"), store.get_candidate("c0003")
    firsts = {j.cand: j.seed for j in store.queued_jobs() if j.purpose == Purpose.MEASURE.value}
    assert firsts == {win.id: 1, other.id: 1}, "a candidate's first run shares seed 1 with the baseline's first"
    for _ in range(4):  # the baseline three times, then the winner's first measurement
        ctrl.dispatch()
        finish(ctrl, "w0", val_bpb=1.0 if ctrl.fleet.inflight["w0"].job.cand != win.id else 0.95)
    ctrl.judge()
    confirm = next(j for j in store.queued_jobs() if j.cand == win.id)
    assert (confirm.purpose, confirm.seed) == (Purpose.CONFIRM.value, 2), "a confirmation is a new draw"
    beside = [j for j in store.queued_jobs() if j.commit == baseline]
    assert [(j.purpose, j.seed) for j in beside] == [(Purpose.BASELINE.value, 4)], "the line is re-measured beside it"
    again = controller(tmp_path, redis_client, 1, resume=True)
    assert again.jobs.seeds[win.commit] == 2 and again.jobs.seeds[baseline] == 4, "seeds used, rebuilt on resume"
    for val in (1.0, 0.951):  # the line's fourth run, then the confirmation (a new draw: not the very same number)
        ctrl.dispatch()
        finish(ctrl, "w0", val_bpb=val)
    ctrl.judge()
    assert ctrl.main == win.commit, "merged"
    assert [r.seed for r in store.results(win.id)] == [1, 2]
    ctrl.dispatch()  # the other candidate, rebased onto the new line as it is taken
    assert ctrl.fleet.inflight["w0"].job.cand == other.id
    finish(ctrl, "w0", val_bpb=1.0)
    ctrl.judge()  # ... waits for the new line's own runs
    line_jobs = [j for j in store.queued_jobs() if j.commit == win.commit and j.purpose == Purpose.BASELINE.value]
    assert sorted(j.seed for j in line_jobs) == [3, 4, 5], "the new line is measured on new seeds, three times"
    assert ctrl.line().results == [], "the winner's own (selected) runs do not anchor the line"


def test_a_candidate_that_changes_how_train_py_seeds_is_refused_before_it_runs(tmp_path, redis_client):
    ctrl = controller(tmp_path, redis_client, 1)
    src = ctrl.repo.read_file(ctrl.main, "train.py")
    own_seed = set_constants(src, {"UNUSED": "5"}) + "\nrandom.seed(7)  # a seed of its own\n"
    honest = set_constants(src, {"UNUSED": "6"})
    admitted = ctrl.intake.admit_round([Proposal("own seed", own_seed, "llm", {}), Proposal("honest", honest, "llm", {})])
    assert admitted == 1
    refused, ok = ctrl.store.get_candidate("c0002"), ctrl.store.get_candidate("c0003")
    assert refused.state == State.INVALID.value and "seeds its random numbers" in refused.decision["reason"]
    assert ok.state == State.QUEUED.value
    assert not [j for j in ctrl.store.queued_jobs() if j.cand == refused.id], "no GPU time for it"


def test_a_target_that_seeds_itself_is_recorded_so_and_judged_on_the_prior(tmp_path, redis_client):
    """Upstream autoresearch calls torch.manual_seed(42): its repeats are one draw."""
    from tests.farmkit import FIXTURES

    own = (FIXTURES / "scripted_train.py").read_text().replace(
        'int(os.environ.get("AUTORESEARCH_SEED", "42"))', "42")
    assert own != (FIXTURES / "scripted_train.py").read_text()
    ctrl = controller(tmp_path, redis_client, 1, train_source=own)
    assert ctrl.same_seed and ctrl.store.run_meta()["seeding"] == "itself"
    assert ctrl.line().same_seed, "the judge is told: no measured floor, repeats are one draw"
    farm = controller(tmp_path, redis_client, 1, name="farm-seeded")
    assert not farm.same_seed and farm.store.run_meta()["seeding"] == "farm"
