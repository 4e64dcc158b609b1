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
               train_source: str | None = None, fleet: Fleet | None = None, **overrides) -> Controller:
    repo_path = tmp_path / name
    if not repo_path.exists():
        make_repo(repo_path, train_source)
        redis_client.flushall()
    cfg = farm_config(repo_path, **{"workers.count": n, **overrides})
    store = Store(redis_client, "t1")
    if not resume:
        store.create_run({"tag": "t1", "status": "running"})
    fleet = fleet or RecordingFleet([WorkerSlot(f"w{i}", FakeHandle(), {}) for i in range(n)])
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
    seeds = again.jobs.seeds
    assert seeds[again.jobs.code(win.commit)] == 2 and seeds[again.jobs.code(baseline)] == 4, "seeds used, rebuilt on resume"
    for val in (0.951, 1.0):  # the confirmation (a new draw: not the very same number), then the line's fourth run
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


# -- near-duplicates are refused before they cost GPU time -------------------------------------
BONUS_UP = [{"name": "BONUS", "old": 0.001, "new": 0.05, "direction": "+"}]  # as the search records it


def refusal(ctrl: Controller, description: str) -> str | None:
    """The reason candidate ``description`` was refused for (None: admitted), after checking that a
    refused one has no job and an admitted one a queued one."""
    cand = next(c for c in ctrl.store.candidates() if c.description == description)
    jobs = [j for j in ctrl.store.queued_jobs() if j.cand == cand.id]
    if cand.state == State.INVALID.value:
        assert not jobs and not cand.commit, "no GPU time for it"
        return cand.decision["reason"]
    assert cand.state == State.QUEUED.value and len(jobs) == 1
    return None


def test_an_llm_proposal_identical_in_effect_to_a_queued_one_is_refused_and_a_different_one_admitted(
        tmp_path, redis_client):
    ctrl = controller(tmp_path, redis_client, 1)
    src = ctrl.repo.read_file(ctrl.main, "train.py")
    queued = set_constants(src, {"BONUS": "0.05"})
    assert ctrl.intake.admit_round([Proposal("BONUS 0.001 -> 0.05", queued, "mutate", {"changes": BONUS_UP})]) == 1
    depth = ctrl.store.queue_depth()
    llm = [
        ("same text", queued.replace("a planted improvement", "raised, as program.md suggests")),  # a comment
        ("same values", set_constants(src, {"BONUS": "5e-2"})),  # the same value, spelt otherwise
        ("another value", set_constants(src, {"BONUS": "0.06"})),
        ("same values and code", queued + "\nprint('and a line of its own')\n"),  # more than the constant
        ("UNUSED 11", set_constants(src, {"UNUSED": "11"})),
        ("UNUSED 11 again", set_constants(src, {"UNUSED": "0x0B"})),  # its twin in the same round
        ("comments only", src.replace("a planted improvement", "a planted gain")),
    ]
    admitted = ctrl.intake.admit_round([Proposal(d, s, "llm", {}) for d, s in llm])
    assert admitted == 3 and ctrl.store.queue_depth() == depth + 3
    assert refusal(ctrl, "same values") == ("near-duplicate of c0002, queued (same constants to the same values: "
                                            "BONUS 0.001 -> 0.05)")
    assert refusal(ctrl, "same text") == "near-duplicate of c0002, queued (the same train.py up to comments and layout)"
    assert refusal(ctrl, "UNUSED 11 again") == ("near-duplicate of c0007, proposed with it (same constants to the "
                                                "same values: UNUSED 10 -> 11)")
    assert refusal(ctrl, "comments only").startswith("near-duplicate of its base: only comments or layout")
    assert [refusal(ctrl, d) for d in ("another value", "same values and code", "UNUSED 11")] == [None] * 3
    # the search dedupes itself (its own history), so its proposals are not held to this
    assert ctrl.intake.admit_round([Proposal("BONUS 0.001 -> 0.05 (search)", set_constants(src, {"BONUS": "5e-2"}),
                                             "mutate", {"changes": BONUS_UP})]) == 1


def test_a_human_patch_repeating_a_measured_change_is_refused_and_a_moved_main_line_is_another_experiment(
        tmp_path, redis_client):
    ctrl = controller(tmp_path, redis_client, 1)
    store, src = ctrl.store, ctrl.repo.read_file(ctrl.main, "train.py")
    ctrl.intake.admit_round(proposals(ctrl, [{"UNUSED": "2"}, {"BONUS": "0.05"}, {"UNUSED": "3"}]))
    measured, win, waits = (store.get_candidate(f"c{i:04d}") for i in (2, 3, 4))
    for cand, action in ((measured, "discard"), (win, "merge")):
        job = next(j for j in store.queued_jobs() if j.cand == cand.id)
        assert store.remove_from_queue(job.id)
        ctrl.jobs.closed(job.id)
        store.transition(cand.id, {State.QUEUED.value}, State.FINISHED.value)
        if action == "discard":
            ctrl.apply(store.get_candidate(cand.id), judge_policy.Decision("discard", "planted"), ctrl.line())
            assert store.get_candidate(cand.id).state == State.DISCARDED.value
            # on the same main line, a human patch repeating it (spelt otherwise) is refused
            assert not ctrl.intake.admit(Proposal("again", set_constants(src, {"UNUSED": "0b10"}), "human", {}))
            assert refusal(ctrl, "again") == ("near-duplicate of c0002, discarded (same constants to the same "
                                              "values: UNUSED 10 -> 2)")
    ctrl.apply(store.get_candidate(win.id), judge_policy.Decision("merge", "planted"), ctrl.line())
    assert ctrl.main == win.commit
    new_src = ctrl.repo.read_file(ctrl.main, "train.py")
    # c0002 was measured on the old main line: on the new one the same move is another experiment ...
    assert ctrl.intake.admit(Proposal("UNUSED 2 on the new line", set_constants(new_src, {"UNUSED": "2"}), "human", {}))
    # ... but a candidate still queued on the old one moves onto the new one before it runs
    assert ctrl.intake.admit_round([Proposal("UNUSED 3 on the new line", set_constants(new_src, {"UNUSED": "3"}),
                                             "llm", {})]) == 0
    assert refusal(ctrl, "UNUSED 3 on the new line") == (f"near-duplicate of {waits.id}, queued (same constants to "
                                                         "the same values: UNUSED 10 -> 3)")


def test_the_history_lists_what_each_pending_candidate_moves(tmp_path, redis_client):
    from proposer.mutate import MutateProposer, constant_changes

    ctrl = controller(tmp_path, redis_client, 2)
    src = ctrl.repo.read_file(ctrl.main, "train.py")
    with_code = set_constants(src, {"UNUSED": "8"}) + "\nprint('and a line of its own')\n"
    ctrl.intake.admit_round([
        Proposal("BONUS 0.001 -> 0.05", set_constants(src, {"BONUS": "0.05"}), "mutate", {"changes": BONUS_UP}),
        Proposal("UNUSED and code", with_code, "llm", {}),
        Proposal("code only", src + "\nprint('only code')\n", "agent", {}),
        Proposal("crash", set_constants(src, {"MODE": '"crash"', "SLEEP": "0.2"}), "human", {"changes": {"MODE": "x"}}),
    ])
    h = ctrl.intake.history(ctrl.main)
    assert h.pending_descriptions == ["baseline", "BONUS 0.001 -> 0.05", "UNUSED and code", "code only", "crash"]
    assert h.pending_changes == [
        [], BONUS_UP, [{"name": "UNUSED", "old": 10, "new": 8, "direction": "-"}], [],
        [{"name": "MODE", "old": "ok", "new": "crash", "direction": "+"},
         {"name": "SLEEP", "old": 0.3, "new": 0.2, "direction": "-"}]]
    # the offline search, told so, moves the constants with nothing in flight first (NOISE, JITTER: MODE is
    # left out), then a direction not in flight (nor moved by the round so far)
    props = MutateProposer(seed=1, exclude=("MODE",), two_change_prob=0.0).propose(3, h)
    moved = [(c["name"], c["direction"]) for p in props for c in p.meta["changes"]]
    assert {n for n, _ in moved[:2]} == {"NOISE", "JITTER"}, moved
    assert moved[2] not in {("BONUS", "+"), ("UNUSED", "-"), ("SLEEP", "-"), *moved[:2]}, moved
    # a merge; the candidates taken next are rebased onto the new main line: their changes are read again
    win = ctrl.store.get_candidate("c0002")
    job = next(j for j in ctrl.store.queued_jobs() if j.cand == win.id)
    assert ctrl.store.remove_from_queue(job.id)
    ctrl.jobs.closed(job.id)
    ctrl.store.transition(win.id, {State.QUEUED.value}, State.FINISHED.value)
    ctrl.apply(ctrl.store.get_candidate(win.id), judge_policy.Decision("merge", "planted"), ctrl.line())
    for _ in range(5):
        ctrl.take("w0")
    h = ctrl.intake.history(ctrl.main)
    pending = [c for c in ctrl.store.candidates() if c.state in ("queued", "running", "finished")]
    assert h.pending_descriptions == [c.description for c in pending]
    expect = [c.meta["changes"] if c.origin == "mutate" else
              constant_changes(ctrl.repo.read_file(c.base, "train.py"), ctrl.repo.read_file(c.commit, "train.py"))[0]
              for c in pending]
    assert h.pending_changes == expect
    assert any(c.meta.get("rebased_from") for c in pending), "the test rebased something"
