"""The parallel-native search on the control plane (cluster/loop/plan.py's rules, cluster/loop/window.py's
bookkeeping): combinations, near misses, speculation on a frontier, early line runs, preemption, seeds
per tree, rounds committed on the base they were asked on, and the window across a resume.

Like tests/parts/test_control_plane.py these drive a real Controller with a real redis-server and a
real git repository, on worker slots that only record their calls (no Ray): a test finishes a run by
handing the controller the result the worker would have sent."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from cluster.loop import judge as judge_policy
from cluster.loop.controller import Controller
from cluster.loop.fleet import Finished, WorkerSlot
from cluster.records import Purpose, Result, State
from proposer.base import Proposal
from tests.farmkit import git, set_constants
from tests.parts.test_control_plane import FakeHandle, RecordingFleet, controller, finish

JITTER = 1e-5  # per seed: no candidate's runs on two seeds give the very same val_bpb (the judge calls that a cheat)


# ---------------------------------------------------------------------------------------------- kit


class CancelHandle(FakeHandle):
    """A worker handle whose `cancel.remote` is remembered too."""

    def __init__(self):
        super().__init__()
        self.cancels = 0

        def cancel(*a):
            self.cancels += 1

        self.cancel = SimpleNamespace(remote=cancel)


class ScriptedFleet(RecordingFleet):
    """The recording fleet, whose `collect` hands back the calls a test says came back (`came_back`)."""

    def __init__(self, slots):
        super().__init__(slots)
        self.back_next: list[tuple[str, dict]] = []

    def came_back(self, name: str, out: dict) -> None:
        self.back_next.append((name, out))

    def collect(self, timeout):
        done = [Finished(name, self.inflight.pop(name), out) for name, out in self.back_next]
        self.back_next = []
        return done


def make(tmp_path, redis_client, n: int, *, resume: bool = False, name: str = "target", **overrides) -> Controller:
    """A controller of n workers on tmp_path/name (a new repository and an empty Redis, unless resumed)."""
    fleet = ScriptedFleet([WorkerSlot(f"w{i}", CancelHandle(), {}) for i in range(n)])
    return controller(tmp_path, redis_client, n, resume=resume, name=name, fleet=fleet, **overrides)


def vals(table: dict[str, float] | None = None, default: float = 1.0):
    """val_bpb per candidate id (``default`` for the rest, the main line's runs among them), plus a
    little per seed."""
    table = table or {}
    return lambda job: table.get(job.cand, default) + JITTER * (job.seed or 0)


def finish_all(ctrl: Controller, val, only=None) -> list:
    """Every run in flight (or those ``only`` picks) comes back with ``val(job)``; returns their jobs."""
    done = []
    for name, flight in list(ctrl.fleet.inflight.items()):
        if only is None or only(flight.job):
            done.append(flight.job)
            finish(ctrl, name, val(flight.job))
    return done


def drain(ctrl: Controller, val, rounds: int = 30) -> None:
    """Dispatch and finish until nothing is queued or running (the judge is not asked)."""
    for _ in range(rounds):
        ctrl.dispatch()
        if not ctrl.fleet.inflight:
            return
        finish_all(ctrl, val)
    raise AssertionError("the queue did not drain")


def admit(ctrl: Controller, changes: list[dict[str, str]], base: str | None = None) -> list:
    """Admit one round of human proposals written on ``base`` (default: the main line); returns the
    candidates made of them."""
    base = base or ctrl.main
    src = ctrl.repo.read_file(base, "train.py")
    before = {c.id for c in ctrl.store.candidates()}
    props = [Proposal(f"edit {c}", set_constants(src, c), "human", {}) for c in changes]
    assert ctrl.intake.admit_round(props, base=base) == len(changes)
    return sorted((c for c in ctrl.store.candidates() if c.id not in before), key=lambda c: c.id)


def cand(ctrl: Controller, cid: str):
    return ctrl.store.get_candidate(cid)


def jobs_of(ctrl: Controller, cid: str, purpose: str | None = None) -> list:
    return [j for j in ctrl.store.queued_jobs() if j.cand == cid and purpose in (None, j.purpose)]


def parent(ctrl: Controller, commit: str) -> str:
    return git(ctrl.repo.path, "rev-parse", f"{commit}^").strip()


def combinations(ctrl: Controller) -> list:
    return [c for c in ctrl.store.candidates() if c.origin == "combine"]


def baseline_and_winners(ctrl: Controller, table: dict[str, float]) -> None:
    """Measure the queued work (the baseline's three runs, the first looks) and judge once."""
    drain(ctrl, vals(table))
    ctrl.judge()


# ------------------------------------------------------------------------------ 1. combinations


@pytest.mark.parametrize("n", [2, 4])
def test_two_compatible_winners_judged_in_one_pass_are_combined_and_the_combination_merges(tmp_path, redis_client, n):
    ctrl = make(tmp_path, redis_client, n)
    store, repo, line0 = ctrl.store, ctrl.repo, ctrl.main
    line_cand = store.run_meta()["baseline_cand"]
    a, b = admit(ctrl, [{"BONUS": "0.05"}, {"BONUS2": "0.05"}])
    drain(ctrl, vals({a.id: 0.95, b.id: 0.96}))
    (other,) = admit(ctrl, [{"UNUSED": "5"}])  # queued behind what the judge queues now
    ctrl.judge()

    (combo,) = combinations(ctrl)
    assert combo.meta["combination"] == [a.id, b.id] and combo.base == line0 and parent(ctrl, combo.commit) == line0
    src0 = repo.read_file(line0, "train.py")
    assert repo.read_file(combo.commit, "train.py") == set_constants(src0, {"BONUS": "0.05", "BONUS2": "0.05"})
    early = 3 if n >= 4 else 0  # its own line runs, from min_workers workers on
    queued = store.queued_jobs()
    head = sorted((j.cand, j.purpose) for j in queued[: 3 + early])
    assert head == sorted([(combo.id, "measure"), (combo.id, "confirm"), (line_cand, "baseline")]
                          + [(combo.id, "baseline")] * early), "measured twice at the front, the line beside it"
    assert [j.cand for j in queued[3 + early:]] == [other.id]
    assert all(j.commit == combo.commit for j in queued if j.cand == combo.id)
    for m in (a, b):  # held: not confirmed on their own while the combination is measured
        now = cand(ctrl, m.id)
        assert now.state == State.FINISHED.value and now.decision is None and not jobs_of(ctrl, m.id)
    assert combo.id in ctrl.window.confirming and ctrl.window.busy() == {a.id, b.id}

    drain(ctrl, vals({combo.id: 0.93}))  # better than either member
    ctrl.judge()
    combo = cand(ctrl, combo.id)
    assert combo.state == State.MERGED.value
    assert ctrl.main == repo.main_line("t1") == store.run_meta()["main"] == combo.commit
    assert {r.commit for r in store.results(combo.id)} == {combo.commit}, "the main line is the tree measured"
    for m in (a, b):
        now = cand(ctrl, m.id)
        assert now.state == State.MERGED.value and now.decision["action"] == "combined"
        assert now.decision["numbers"]["combination"] == combo.id and combo.id in now.decision["reason"]
    events = [e for e in store.events(10_000) if e["kind"] == "combination"]
    assert [(e["data"]["cand"], e["data"]["members"]) for e in events] == [(combo.id, [a.id, b.id])]


def _combination_measured(tmp_path, redis_client, combo_val: float):
    """Two winners (0.95, 0.96 against a line of 1.0) combined; the combination measured at combo_val
    and judged."""
    ctrl = make(tmp_path, redis_client, 2)
    a, b = admit(ctrl, [{"BONUS": "0.05"}, {"BONUS2": "0.05"}])
    baseline_and_winners(ctrl, {a.id: 0.95, b.id: 0.96})
    (combo,) = combinations(ctrl)
    drain(ctrl, vals({combo.id: combo_val}))
    line0 = ctrl.main
    ctrl.judge()
    return ctrl, a, b, cand(ctrl, combo.id), line0


@pytest.mark.parametrize("combo_val", [1.0, 0.97], ids=["loses-to-the-line", "beats-the-line-not-its-best-member"])
def test_a_combination_worse_than_its_best_member_is_discarded_and_the_members_go_on_alone(
        tmp_path, redis_client, combo_val):
    ctrl, a, b, combo, line0 = _combination_measured(tmp_path, redis_client, combo_val)
    assert combo.state == State.DISCARDED.value and ctrl.main == line0 == ctrl.repo.main_line("t1")
    assert combo.id not in ctrl.window.confirming and not ctrl.window.busy()
    ctrl.judge()  # (no new result: the members were waiting on the combination's verdict alone)
    for m in (a, b):
        now = cand(ctrl, m.id)
        assert now.state == State.QUEUED.value and now.decision["action"] == "confirm", (m.id, now.state, now.decision)
        assert [j.purpose for j in jobs_of(ctrl, m.id)] == [Purpose.CONFIRM.value]
    assert len(combinations(ctrl)) == 1, "the same members are not combined again"
    drain(ctrl, vals({a.id: 0.95, b.id: 0.96}))
    ctrl.judge()
    assert ctrl.main == cand(ctrl, a.id).commit, "the best member merges on its own"
    assert cand(ctrl, a.id).decision["action"] == "merge"


# ------------------------------------------------------------------------------ 3. near misses
# the line: three runs of 1.0 (+ jitter): sigma 0.00163 (the prior, 4 df, and 2 measured), a one-run
# candidate's margin 0.00377; a near miss is better by at least half of it (0.00189)
NEAR, FAR = 0.9975, 0.9995


@pytest.mark.parametrize("near_miss, with_winner", [(0.5, True), (0.5, False), (0.0, True)],
                         ids=["near-miss-and-winner", "two-near-misses", "near-miss-off"])
def test_near_misses_are_kept_for_a_combination_unless_switched_off(tmp_path, redis_client, near_miss, with_winner):
    ctrl = make(tmp_path, redis_client, 2, **{"search.near_miss": near_miss})
    first, near, far = admit(ctrl, [{"BONUS": "0.05"}, {"BONUS2": "0.05"}, {"UNUSED": "5"}])
    baseline_and_winners(ctrl, {first.id: 0.95 if with_winner else NEAR + 0.0002, near.id: NEAR, far.id: FAR})
    far_d = cand(ctrl, far.id).decision
    assert far_d["action"] == "discard" and cand(ctrl, far.id).state == State.DISCARDED.value
    margin = far_d["numbers"]["margin"]  # the same for every one-run candidate on this line
    assert -far_d["numbers"]["delta"] < 0.5 * margin, "the far miss: better than the line, but by too little"
    if near_miss == 0:
        d = cand(ctrl, near.id).decision
        assert d["action"] == "discard" and 0.5 * margin <= -d["numbers"]["delta"] < margin, d
        assert not combinations(ctrl) and cand(ctrl, near.id).state == State.DISCARDED.value
        assert cand(ctrl, first.id).decision["action"] == ("confirm" if with_winner else "discard")
        return
    (combo,) = combinations(ctrl)
    assert sorted(combo.meta["combination"]) == sorted([first.id, near.id]), "the far miss is left out"
    assert 0.5 * margin <= -combo.meta["member_deltas"][near.id] < margin, "a near miss: better, not by the margin"
    src0 = ctrl.repo.read_file(ctrl.main, "train.py")
    assert ctrl.repo.read_file(combo.commit, "train.py") == set_constants(src0, {"BONUS": "0.05", "BONUS2": "0.05"})
    assert ctrl.window.busy() == {first.id, near.id}, "both wait for the combination's verdict"
    drain(ctrl, vals({combo.id: 0.94}))
    ctrl.judge()
    assert ctrl.main == cand(ctrl, combo.id).commit
    assert cand(ctrl, near.id).state == State.MERGED.value and cand(ctrl, near.id).decision["action"] == "combined"
    assert cand(ctrl, far.id).state == State.DISCARDED.value


# ------------------------------------------------------------------------------ 4. speculation


def _winner_in_confirmation(tmp_path, redis_client, n: int = 4, **overrides):
    """n workers: the baseline measured, one winner W (BONUS) sent to confirmation, a candidate Q
    (UNUSED) queued on the main line behind it."""
    ctrl = make(tmp_path, redis_client, n, **overrides)
    (w,) = admit(ctrl, [{"BONUS": "0.05"}])
    drain(ctrl, vals({w.id: 0.95}))
    (q,) = admit(ctrl, [{"UNUSED": "5"}])
    ctrl.judge()
    assert cand(ctrl, w.id).decision["action"] == "confirm"
    return ctrl, cand(ctrl, w.id), q


def _speculated(tmp_path, redis_client):
    """W in confirmation on 4 workers; Q taken (onto the frontier), S proposed on the frontier; W's
    line runs and the line's in; Q and S measured; S2 proposed on the frontier, still queued."""
    ctrl, w, q = _winner_in_confirmation(tmp_path, redis_client)
    line0 = ctrl.main
    assert ctrl.window.front(ctrl.main) == w.commit
    own_line = jobs_of(ctrl, w.id, Purpose.BASELINE.value)
    assert len(own_line) == ctrl.cfg.judge.baseline_runs and {j.commit for j in own_line} == {w.commit}
    assert [j.purpose for j in jobs_of(ctrl, w.id, Purpose.CONFIRM.value)] == [Purpose.CONFIRM.value]
    ctrl.intake.front_moved(ctrl.window.front(ctrl.main))
    assert ctrl.intake.front == w.commit, "proposals go to the frontier"
    (s,) = admit(ctrl, [{"UNUSED": "7"}], base=ctrl.intake.front)
    assert s.base == w.commit and parent(ctrl, s.commit) == w.commit
    # W's confirmation first, then the line's run beside it and W's own line runs, then Q and S
    ctrl.dispatch()
    assert sorted(f.job.purpose for f in ctrl.fleet.inflight.values()) == ["baseline"] * 3 + ["confirm"]
    finish_all(ctrl, vals({w.id: 0.95}), only=lambda j: j.purpose != Purpose.CONFIRM.value)  # W's stays running
    ctrl.dispatch()
    taken = {f.job.cand: f.job for f in ctrl.fleet.inflight.values()}
    assert set(taken) == {w.id, q.id, s.id}
    q_now = cand(ctrl, q.id)
    assert q_now.base == w.commit and taken[q.id].commit == q_now.commit and parent(ctrl, q_now.commit) == w.commit
    assert ctrl.repo.read_file(q_now.commit, "train.py") == set_constants(
        ctrl.repo.read_file(w.commit, "train.py"), {"UNUSED": "5"}), "rebased onto W as it was taken"
    assert taken[s.id].commit == s.commit, "already on the frontier"
    finish_all(ctrl, vals({q.id: 0.99, s.id: 0.90}), only=lambda j: j.cand in (q.id, s.id))
    (s2,) = admit(ctrl, [{"UNUSED": "8"}], base=ctrl.intake.front)
    ctrl.judge()
    for x in (q, s):
        now = cand(ctrl, x.id)
        assert now.state == State.FINISHED.value and now.decision is None, "not judged while W is confirmed"
    return ctrl, w, q, s, s2, line0


def test_speculation_a_merged_frontier_counts_the_work_on_it_at_once_with_its_early_line_runs(tmp_path, redis_client):
    ctrl, w, q, s, _, _ = _speculated(tmp_path, redis_client)
    finish_all(ctrl, vals({w.id: 0.951}))  # W's confirmation
    ctrl.judge()
    assert ctrl.main == w.commit and cand(ctrl, w.id).state == State.MERGED.value
    line_jobs_before = [j.id for j in ctrl.store.queued_jobs() if j.purpose == Purpose.BASELINE.value]
    ctrl.judge()
    s_now, q_now = cand(ctrl, s.id), cand(ctrl, q.id)
    assert s_now.decision is not None and s_now.decision["action"] == "confirm", s_now.decision
    assert s_now.decision["numbers"]["n_line"] == ctrl.cfg.judge.baseline_runs, "against W's own early line runs"
    assert q_now.decision["action"] == "discard"
    line_jobs = [j for j in ctrl.store.queued_jobs() if j.purpose == Purpose.BASELINE.value
                 and j.id not in line_jobs_before]
    # only what runs beside S's confirmation: no round of line measurements was needed first
    assert [j.cand for j in line_jobs if j.cand == w.id] == [w.id], [(j.cand, j.purpose) for j in line_jobs]
    assert all(j.commit in (w.commit, s_now.commit) for j in line_jobs)


def test_speculation_a_discarded_frontier_merges_nothing_measured_on_it_and_its_queue_moves_back(
        tmp_path, redis_client):
    ctrl, w, q, s, s2, line0 = _speculated(tmp_path, redis_client)
    finish_all(ctrl, vals({w.id: 1.0}))  # W's confirmation does not replicate
    ctrl.judge()
    assert cand(ctrl, w.id).state == State.DISCARDED.value and ctrl.main == line0
    assert ctrl.window.front(ctrl.main) == line0
    ctrl.judge()  # (no new result: S and Q were waiting on W's verdict alone)
    s_now, q_now = cand(ctrl, s.id), cand(ctrl, q.id)
    assert s_now.state != State.MERGED.value and q_now.state != State.MERGED.value
    assert s_now.decision is not None and s_now.decision["action"] == "rebase", s_now.decision  # beat its base
    assert s_now.state == State.QUEUED.value and s_now.base == line0 and s_now.meta.get("rebased_after_win")
    assert ctrl.repo.read_file(s_now.commit, "train.py") == set_constants(
        ctrl.repo.read_file(line0, "train.py"), {"UNUSED": "7"}), "re-tested without W's change"
    assert q_now.decision["action"] == "discard", "worse than its base"
    assert ctrl.repo.main_line("t1") == line0
    job = ctrl.take("w3")  # S2, queued on W: moved back onto the main line as it is taken
    assert job.cand == s2.id
    s2_now = cand(ctrl, s2.id)
    assert s2_now.base == line0 and job.commit == s2_now.commit and parent(ctrl, job.commit) == line0
    assert ctrl.repo.read_file(job.commit, "train.py") == set_constants(
        ctrl.repo.read_file(line0, "train.py"), {"UNUSED": "8"})


# ------------------------------------------------------------------------------ 5. no speculation


@pytest.mark.parametrize("n, overrides", [
    (2, {}),  # fewer workers than min_workers (4)
    (4, {"search.min_workers": 8}),
    (4, {"search.speculate": False, "search.early_line_runs": False}),
], ids=["2-workers", "below-min-workers", "switched-off"])
def test_without_speculation_the_front_is_the_main_line_and_no_early_line_runs_are_queued(
        tmp_path, redis_client, n, overrides):
    ctrl, w, q = _winner_in_confirmation(tmp_path, redis_client, n, **overrides)
    assert w.id in ctrl.window.confirming
    assert ctrl.window.front(ctrl.main) == ctrl.main
    assert not jobs_of(ctrl, w.id, Purpose.BASELINE.value), "no early line runs"
    ctrl.intake.front_moved(ctrl.window.front(ctrl.main))
    assert ctrl.intake.front == ctrl.main
    taken = [ctrl.take("w0") for _ in range(len(ctrl.store.queued_jobs()))]
    assert q.id in [j.cand for j in taken]
    assert cand(ctrl, q.id).base == ctrl.main and cand(ctrl, q.id).commit == q.commit, "not moved"


def test_speculation_off_still_queues_early_line_runs_when_they_are_on(tmp_path, redis_client):
    """(the two are separate switches of [search])"""
    ctrl, w, _ = _winner_in_confirmation(tmp_path, redis_client, 4, **{"search.speculate": False})
    assert ctrl.window.front(ctrl.main) == ctrl.main
    assert len(jobs_of(ctrl, w.id, Purpose.BASELINE.value)) == ctrl.cfg.judge.baseline_runs


# ------------------------------------------------------------------------------ 6. preemption


def _first_looks_running(tmp_path, redis_client, k: int, **overrides):
    """4 workers: the baseline and a winner W measured (not judged yet), k first looks started."""
    ctrl = make(tmp_path, redis_client, 4, **overrides)
    (w,) = admit(ctrl, [{"BONUS": "0.05"}])
    drain(ctrl, vals({w.id: 0.95}))
    looks = admit(ctrl, [{"UNUSED": str(20 + i)} for i in range(k)])
    ctrl.dispatch()
    assert sorted(f.job.cand for f in ctrl.fleet.inflight.values()) == [c.id for c in looks]
    return ctrl, w, looks


def cancelled(job, worker: str) -> dict:
    now = time.time()
    r = Result(job=job.id, cand=job.cand, commit=job.commit, attempt=job.attempt, status="crash", reason="cancelled",
               worker=worker, started_at=now - 1, finished_at=now, purpose=job.purpose, seed=job.seed)
    return {"result": r.to_dict(), "log": ""}


def ok(job, worker: str, val: float = 1.0) -> dict:
    now = time.time()
    r = Result(job=job.id, cand=job.cand, commit=job.commit, attempt=job.attempt, status="ok", val_bpb=val,
               worker=worker, started_at=now - 1, finished_at=now, purpose=job.purpose, seed=job.seed)
    return {"result": r.to_dict(), "log": ""}


def test_preemption_the_youngest_first_looks_give_their_workers_to_a_waiting_confirmation(tmp_path, redis_client):
    # no frontier and no early line runs: what waits is W's confirmation and the line run beside it
    ctrl, _, _ = _first_looks_running(tmp_path, redis_client, 4, **{"search.speculate": False,
                                                                         "search.early_line_runs": False})
    store, fleet = ctrl.store, ctrl.fleet
    now = time.time()
    for name, age in (("w0", 40.0), ("w1", 20.0), ("w2", 10.0), ("w3", 5.0)):  # w0: older than preempt_seconds
        fleet.inflight[name].started = now - age
    ctrl.judge()
    assert [j.purpose for j in store.queued_jobs()][:2] == ["confirm", "baseline"] and not fleet.free()
    ctrl.preempt()
    cancels = {name: fleet.slots[name].handle.cancels for name in fleet.names}
    assert cancels == {"w0": 0, "w1": 0, "w2": 1, "w3": 1}, "the two youngest, for the two jobs that wait"
    assert [name for name, f in fleet.inflight.items() if f.preempted] == ["w2", "w3"]
    ctrl.preempt()  # asked again before they come back: nothing more
    assert {name: fleet.slots[name].handle.cancels for name in fleet.names} == cancels

    stopped, late = fleet.inflight["w3"].job, fleet.inflight["w2"].job
    lost_before = store.job_record(stopped.id).get("lost") or 0
    fleet.came_back("w3", cancelled(stopped, "w3"))
    fleet.came_back("w2", ok(late, "w2", 0.999))  # it finished before the cancel reached it
    ctrl.collect(0)
    queued = store.queued_jobs()
    assert queued[-1].id == stopped.id and store.job_state(stopped.id) == "queued", "at the back of the queue"
    assert (store.job_record(stopped.id).get("lost") or 0) == lost_before, "not counted as lost"
    assert cand(ctrl, stopped.cand).state == State.QUEUED.value
    assert not store.results(stopped.cand), "no result recorded for it"
    assert any(e["kind"] == "preempted" and e["data"]["job"] == stopped.id for e in store.events(10_000))
    assert [r.val_bpb for r in store.results(late.cand)] == [0.999], "a result that came back is recorded"
    assert store.job_state(late.id) == "done" and cand(ctrl, late.cand).state == State.FINISHED.value


@pytest.mark.parametrize("speculate", [True, False])
def test_preemption_of_first_looks_on_a_base_the_work_moved_on_from(tmp_path, redis_client, speculate):
    # two first looks on the main line, two free workers for the two jobs that wait: none is needed for them
    ctrl, w, looks = _first_looks_running(tmp_path, redis_client, 2, **{"search.speculate": speculate,
                                                                         "search.early_line_runs": False})
    ctrl.judge()
    assert len(ctrl.fleet.free()) == 2
    assert ctrl.window.front(ctrl.main) == (w.commit if speculate else ctrl.main)
    ctrl.preempt()
    preempted = sorted(f.job.cand for f in ctrl.fleet.inflight.values() if f.preempted)
    assert preempted == ([c.id for c in looks] if speculate else []), "the frontier moved on from the main line"


# ------------------------------------------------------------------------------ 7. seeds per tree


def test_a_candidate_whose_code_was_measured_before_gets_the_next_seed_of_that_code(tmp_path, redis_client):
    ctrl = make(tmp_path, redis_client, 1)
    store, repo, line0 = ctrl.store, ctrl.repo, ctrl.main
    (w,) = admit(ctrl, [{"BONUS": "0.05"}])
    drain(ctrl, vals({w.id: 0.95}))  # the baseline on seeds 1-3, W's first look on seed 1
    assert sorted(r.seed for r in store.results() if r.commit == line0) == [1, 2, 3]
    ctrl.apply(cand(ctrl, w.id), judge_policy.Decision("merge", "planted"), ctrl.line())
    assert ctrl.main == w.commit
    src0 = repo.read_file(line0, "train.py")
    revert = set_constants(repo.read_file(w.commit, "train.py"), {"BONUS": "0.001"})
    assert revert == src0
    (r,) = admit(ctrl, [{"BONUS": "0.001"}])  # a revert of W: the baseline's code under a new commit
    assert r.commit != line0 and repo.tree_of(r.commit) == repo.tree_of(line0)
    (job,) = jobs_of(ctrl, r.id)
    assert job.seed == 4, "the baseline's code ran on seeds 1-3: a new draw, not a repeat of seed 1"
    other = make(tmp_path, redis_client, 1, resume=True)
    assert other.jobs.seeds[other.jobs.code(r.commit)] == 4, "counted per tree on resume too"


# ------------------------------------------------------------------------------ 8. the asked base


class FakeProposer:
    """ProposerCalls without Ray: ask() remembers the history it was given, answer() gives ``reply``."""

    def __init__(self):
        self.asked: list = []
        self.reply: list | None = None
        self.repairs: dict = {}
        self.asking = False

    def ask(self, n, history):
        self.asked.append((n, history))
        self.asking = True

    def answer(self):
        if not self.asking or self.reply is None:
            return False, [], ""
        self.asking = False
        reply, self.reply = self.reply, None
        return True, reply, ""

    def status(self):
        return None

    def repaired(self):
        return []


def test_a_round_is_committed_on_the_base_it_was_asked_on_and_rebased_when_taken(tmp_path, redis_client):
    ctrl = make(tmp_path, redis_client, 1)
    store, repo, line0 = ctrl.store, ctrl.repo, ctrl.main
    drain(ctrl, vals())  # the baseline
    ctrl.judge()
    (w,) = admit(ctrl, [{"BONUS": "0.05"}])
    job = jobs_of(ctrl, w.id)[0]
    assert store.remove_from_queue(job.id)
    ctrl.jobs.closed(job.id)
    store.transition(w.id, {State.QUEUED.value}, State.FINISHED.value)
    fake = ctrl.intake.proposer = FakeProposer()
    ctrl.intake.step()
    assert len(fake.asked) == 1 and fake.asked[0][1].base_commit == line0, "asked on the main line"
    asked = fake.asked[0][1]
    ctrl.apply(cand(ctrl, w.id), judge_policy.Decision("merge", "planted"), ctrl.line())  # it moves meanwhile
    assert ctrl.main == w.commit
    fake.reply = [Proposal("UNUSED 7", set_constants(asked.base_source, {"UNUSED": "7"}), "human", {})]
    ctrl.intake.step()
    (p,) = [c for c in store.candidates() if c.description == "UNUSED 7"]
    assert p.state == State.QUEUED.value and p.base == line0 and parent(ctrl, p.commit) == line0
    taken = ctrl.take("w0")
    assert taken.cand == p.id
    now = cand(ctrl, p.id)
    assert now.base == w.commit and taken.commit == now.commit and parent(ctrl, now.commit) == w.commit
    assert repo.read_file(taken.commit, "train.py") == set_constants(repo.read_file(w.commit, "train.py"),
                                                                     {"UNUSED": "7"}), "W's change is kept"


# ------------------------------------------------------------------------------ 9. resume


def window_of(ctrl: Controller):
    w = ctrl.window
    busy = w.busy()  # (a near miss in a pending combination is not looked at until the combination is judged)
    near = {line: {c: d for c, d in got.items() if c not in busy} for line, got in w.near.items()}
    return (sorted(w.confirming), dict(w.expected), set(w.combined), {k: v for k, v in near.items() if v},
            busy, w.front(ctrl.main))


def test_a_resumed_controller_has_the_same_window(tmp_path, redis_client):
    ctrl = make(tmp_path, redis_client, 2)
    a, b, near = admit(ctrl, [{"BONUS": "0.05"}, {"BONUS2": "0.05"}, {"UNUSED": "5"}])
    baseline_and_winners(ctrl, {a.id: 0.95, b.id: 0.96, near.id: NEAR})
    (combo,) = combinations(ctrl)
    (d,) = admit(ctrl, [{"UNUSED": "6"}])
    ctrl.dispatch()  # the line run beside the combination, and its confirmation
    finish_all(ctrl, vals({combo.id: 0.93}))
    ctrl.dispatch()  # its measurement, still running, and d
    finish_all(ctrl, vals({d.id: 0.95}), only=lambda j: j.cand == d.id)
    ctrl.judge()  # d wins while the combination is pending: it goes to confirmation on its own
    assert cand(ctrl, d.id).decision["action"] == "confirm"
    assert set(ctrl.window.confirming) == {combo.id, d.id}
    assert combo.meta["combination"] == [a.id, b.id, near.id] and ctrl.window.busy() == {a.id, b.id, near.id}
    before = window_of(ctrl)
    again = make(tmp_path, redis_client, 2, resume=True)
    assert window_of(again) == before


def test_a_resumed_controller_remembers_the_parts_a_combination_left_out(tmp_path, redis_client):
    ctrl = make(tmp_path, redis_client, 2)
    # three winners; two change BONUS to different values: the second conflicts and is left out
    a, a2, b = admit(ctrl, [{"BONUS": "0.05"}, {"BONUS": "0.04"}, {"BONUS2": "0.05"}])
    baseline_and_winners(ctrl, {a.id: 0.95, a2.id: 0.955, b.id: 0.96})
    (combo,) = combinations(ctrl)
    assert combo.meta["combination"] == [a.id, b.id]
    before = set(ctrl.window.combined)
    assert frozenset({a.id, a2.id, b.id}) in before
    again = make(tmp_path, redis_client, 2, resume=True)
    assert set(again.window.combined) == before


@pytest.mark.parametrize("at", ["on-the-old-line", "re-tested"])
def test_a_candidate_that_left_the_window_stays_out_of_it_on_resume(tmp_path, redis_client, at):
    ctrl = make(tmp_path, redis_client, 2, **{"search.combine": False})
    a, b = admit(ctrl, [{"BONUS": "0.05"}, {"BONUS2": "0.05"}])
    baseline_and_winners(ctrl, {a.id: 0.95, b.id: 0.96})
    assert set(ctrl.window.confirming) == {a.id, b.id}
    drain(ctrl, vals({a.id: 0.95, b.id: 0.96}))
    ctrl.judge()  # both confirmed: the better merges, the other is on the old line now
    assert ctrl.main == cand(ctrl, a.id).commit
    assert cand(ctrl, b.id).state == State.FINISHED.value and not ctrl.window.confirming
    if at == "re-tested":
        ctrl.judge()  # b beat its base: re-tested on the new main line, a first look again, not a confirmation
        assert cand(ctrl, b.id).decision["action"] == "rebase" and cand(ctrl, b.id).state == State.QUEUED.value
        assert cand(ctrl, b.id).base == ctrl.main and not ctrl.window.confirming
    again = make(tmp_path, redis_client, 2, resume=True)
    assert sorted(again.window.confirming) == sorted(ctrl.window.confirming) == []
    assert window_of(again) == window_of(ctrl)
