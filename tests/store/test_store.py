"""cluster.store against a real redis-server (EmbeddedRedis), one server per module, FLUSHALL per test."""

from __future__ import annotations

import random
import re
import time

import pytest
import redis

import cluster.store.keys as store_mod
from cluster.errors import StoreError
from cluster.records import Candidate, Job, Result, State
from cluster.store import KEY_TEMPLATES, NotFound, RunExists, Store

STATES = [s.value for s in State]



@pytest.fixture
def store(redis_client):
    redis_client.flushall()
    return Store(redis_client, "t1")


def cand(i: int, state: str = State.FINISHED.value, **kw) -> Candidate:
    return Candidate(id=f"c{i:04d}", commit=f"sha{i}", base="base0", branch=f"candidates/t1/c{i:04d}",
                     description=f"change {i}", origin="mutate", state=state, created_at=1000.0 + i, **kw)  # fmt: skip


def result(job: Job, status: str = "ok", val_bpb: float | None = 0.9971234567891234, **kw) -> Result:
    return Result(job=job.id, cand=job.cand, commit=job.commit, attempt=job.attempt, status=status,
                  val_bpb=val_bpb, worker=job.worker or "", **kw)  # fmt: skip


def check_state_indexes(st: Store) -> dict[str, int]:
    """Every candidate is in exactly one state index: the one its record names."""
    r = st.r
    members = {s: set(r.zrange(st.key("cands", "state", s), 0, -1)) for s in STATES}
    for c in st.candidates():
        holders = [s for s, ids in members.items() if c.id in ids]
        assert holders == [c.state], f"{c.id} (state {c.state}) is in indexes {holders}"
    assert sum(len(v) for v in members.values()) == r.zcard(st.key("cands"))
    return {s: len(v) for s, v in members.items()}


# -- schema -------------------------------------------------------------------------------------
def test_docstring_documents_every_key(store):
    doc = store_mod.__doc__
    for t in KEY_TEMPLATES:
        assert re.search(rf"^\s+P {re.escape(t)}\s", doc, re.MULTILINE), f"key {t} missing from the schema docstring"
    assert store.key("cand", "c0001") == "arf:{t1}:cand:c0001"
    store.add_candidate(cand(1))
    store.enqueue(Job(id="j1", cand="c0001", commit="sha1"))
    assert all(k.startswith("arf:{t1}:") for k in store.r.keys("*"))


def test_bad_tag_and_client(redis_client):
    with pytest.raises(StoreError, match="bad run tag"):
        Store(redis_client, "a b")
    with pytest.raises(StoreError, match="decode_responses=True"):
        Store(redis.Redis(unix_socket_path="/nonexistent.sock"), "x")


# -- run ----------------------------------------------------------------------------------------
def test_run_create_refuse_update_list(store, redis_client):
    assert store.run_meta() is None
    with pytest.raises(NotFound, match="does not exist"):
        store.update_run(main="x")
    store.create_run({"main": "abc", "config": {"workers": 4, "tags": []}})
    with pytest.raises(RunExists, match="run t1 already exists; use --resume or another --tag"):
        store.create_run({"main": "other"})
    store.update_run(main="def", status="running")
    meta = store.run_meta()
    assert meta["main"] == "def" and meta["status"] == "running" and meta["tag"] == "t1"
    assert meta["config"] == {"workers": 4, "tags": []}  # lists stay lists
    Store(redis_client, "t2").create_run({})
    Store(redis_client, "t3", prefix="other").create_run({})
    assert Store.list_runs(redis_client) == ["t1", "t2"]
    assert Store.list_runs(redis_client, "other") == ["t3"]
    assert [store.next_id("c", 4), store.next_id("c", 4), store.next_id("j", 6)] == ["c0001", "c0002", "j000001"]


# -- candidates ---------------------------------------------------------------------------------
def test_candidate_roundtrip_and_errors(store):
    c = cand(1, meta={"mutations": [], "temp": 0.1234567890123456789, "nested": {"a": [1, 2]}}, parent=None)
    store.add_candidate(c)
    assert store.get_candidate("c0001") == c  # exact: no cjson rounding, [] stays []
    with pytest.raises(StoreError, match="already exists"):
        store.add_candidate(cand(1))
    with pytest.raises(KeyError):
        store.get_candidate("c9999")
    with pytest.raises(NotFound):
        store.transition("c9999", [State.FINISHED], State.QUEUED)
    with pytest.raises(StoreError, match="cannot set candidate field"):
        store.update_candidate("c0001", bogus=1)
    with pytest.raises(StoreError, match="unknown candidate state"):
        store.transition("c0001", ["finished"], "nirvana")
    store.update_candidate("c0001", description="better", decision={"reason": "x"})
    got = store.get_candidate("c0001")
    assert got.description == "better" and got.decision == {"reason": "x"} and got.state == "finished"
    store.update_candidate("c0001", state=State.QUEUED, lines_added=3)
    assert store.get_candidate("c0001").state == "queued" and store.count_by_state()["queued"] == 1


def test_transition_is_compare_and_set(store):
    store.add_candidate(cand(1))
    before = store.get_candidate("c0001")
    assert store.transition("c0001", {State.QUEUED.value, State.RUNNING.value}, State.FINISHED, description="x") is False
    assert store.get_candidate("c0001") == before
    assert check_state_indexes(store)["finished"] == 1
    assert store.transition("c0001", "finished", State.QUEUED, decision={"why": [1]}, commit="sha1b") is True
    after = store.get_candidate("c0001")
    assert (after.state, after.commit, after.decision, after.description) == ("queued", "sha1b", {"why": [1]}, "change 1")
    assert store.count_by_state()["queued"] == 1 and store.count_by_state()["finished"] == 0


def test_exactly_one_state_under_random_transitions(store):
    rng = random.Random(1234)
    model = {}
    for i in range(1, 21):
        s = rng.choice(STATES)
        store.add_candidate(cand(i, state=s))
        model[f"c{i:04d}"] = s
    for step in range(400):
        cid = rng.choice(sorted(model))
        froms = set(rng.sample(STATES, rng.randint(1, 4)))
        to = rng.choice(STATES)
        ok = store.transition(cid, froms, to, description=f"step {step}")
        assert ok == (model[cid] in froms)
        if ok:
            model[cid] = to
        if step % 50 == 0:
            check_state_indexes(store)
    counts = check_state_indexes(store)
    assert counts == {s: sum(1 for v in model.values() if v == s) for s in STATES}
    assert store.count_by_state() == counts
    assert {c.id: c.state for c in store.candidates()} == model


def test_candidates_in_creation_order(store):
    for i, s in [(3, "queued"), (1, "finished"), (2, "queued"), (4, "merged")]:
        store.add_candidate(cand(i, state=s))
    assert [c.id for c in store.candidates()] == ["c0003", "c0001", "c0002", "c0004"]
    assert [c.id for c in store.candidates({"queued", State.MERGED})] == ["c0003", "c0002", "c0004"]
    store.transition("c0003", ["queued"], "running")
    store.transition("c0003", ["running"], "queued")
    assert [c.id for c in store.candidates({"queued"})] == ["c0003", "c0002"]  # order kept across moves
    assert store.candidates({"stale"}) == []


# -- queue, leases, fencing ---------------------------------------------------------------------
def jobs(st: Store, n: int) -> list[Job]:
    out = [Job(id=f"j{i}", cand=f"c{i}", commit=f"sha{i}") for i in range(1, n + 1)]
    for j in out:
        st.enqueue(j)
    return out


def test_dispatch_order_and_priority(store):
    jobs(store, 3)
    store.enqueue(Job(id="jc", cand="c1", commit="sha1", purpose="confirm"), front=True)
    assert store.queue_depth() == 4
    assert [j.id for j in store.queued_jobs()] == ["jc", "j1", "j2", "j3"]
    got = [store.dispatch(f"w{i}", 30, now=100.0) for i in range(4)]
    assert [j.id for j in got] == ["jc", "j1", "j2", "j3"]
    assert got[0].purpose == "confirm" and got[0].attempt == 1 and got[0].worker == "w0"
    assert got[0].lease_deadline == 130.0
    assert store.dispatch("w9", 30) is None
    assert store.queue_depth() == 0 and {j.id for j in store.running_jobs()} == {"jc", "j1", "j2", "j3"}
    assert store.job_state("j1") == "running" and store.get_job("j1") == got[1]


def test_enqueue_with_pipeline_and_refusal(store):
    pipe = store.r.pipeline()
    for j in [Job(id="a", cand="c1", commit="s"), Job(id="b", cand="c2", commit="s")]:
        store.enqueue(j, pipeline=pipe)
    assert store.queue_depth() == 0
    pipe.execute()
    assert [j.id for j in store.queued_jobs()] == ["a", "b"]
    with pytest.raises(StoreError, match="already queued"):
        store.enqueue(Job(id="a", cand="c1", commit="s"))


def test_lost_attempt_is_fenced(store):
    (job,) = jobs(store, 1)
    first = store.dispatch("w1", 10, now=0.0)
    assert [j.id for j in store.expired(now=5.0)] == [] and [j.id for j in store.expired(now=11.0)] == ["j1"]
    assert store.requeue("j1", first.attempt, "worker w1 lost", max_lost=3) == "requeued"
    assert store.job_record("j1")["last_lost_reason"] == "worker w1 lost"
    second = store.dispatch("w2", 10, now=20.0)
    assert (second.id, second.attempt, second.lost, second.worker) == ("j1", 2, 1, "w2")
    assert store.renew_lease("j1", first.attempt, 10) is False  # the old attempt cannot renew
    assert store.requeue("j1", first.attempt, "late timeout", max_lost=3) == "fenced"
    assert store.record_result(result(first, val_bpb=1.5)) is False  # late result of attempt 1
    assert store.results() == []
    assert store.record_result(result(second)) is True
    assert store.record_result(result(second, val_bpb=0.5)) is False  # duplicate
    res = store.results()
    assert len(res) == 1 and res[0].attempt == 2 and res[0].val_bpb == 0.9971234567891234
    assert store.job_state("j1") == "done" and store.running_jobs() == [] and store.queue_depth() == 0
    refused = store.refused()
    assert [(x["reason"], x["attempt"], x["current_attempt"]) for x in refused] == [
        ("stale attempt", 1, 2), ("duplicate", 2, 2)]  # fmt: skip
    assert refused[0]["result"]["val_bpb"] == 1.5 and refused[0]["job"] == "j1"
    assert store.record_result(Result(job="jx", cand="c1", commit="s", attempt=1, status="ok")) is False
    assert store.refused()[-1]["reason"] == "unknown job"


def test_renew_lease_moves_the_deadline(store):
    jobs(store, 1)
    j = store.dispatch("w1", 10, now=0.0)
    assert store.renew_lease("j1", j.attempt, 100, now=5.0) is True
    assert store.expired(now=50.0) == [] and store.get_job("j1").lease_deadline == 105.0


def test_poison_job_fails_after_max_lost(store):
    jobs(store, 1)
    outcomes = []
    for _ in range(3):
        j = store.dispatch("w", 10)
        outcomes.append(store.requeue(j.id, j.attempt, "lost", max_lost=3))
    assert outcomes == ["requeued", "requeued", "failed"]
    assert store.job_state("j1") == "failed" and store.get_job("j1").lost == 3
    assert store.queue_depth() == 0 and store.running_jobs() == [] and store.dispatch("w", 10) is None


def test_requeue_all_running(store):
    jobs(store, 4)
    leased = [store.dispatch("w", 10 + i) for i in range(3)]  # j1..j3 running, j4 queued
    out = store.requeue_all_running("controller restarted", max_lost=5)
    assert sorted(out) == [("j1", "requeued"), ("j2", "requeued"), ("j3", "requeued")]
    assert store.running_jobs() == []
    assert [j.id for j in store.queued_jobs()] == ["j1", "j2", "j3", "j4"]
    assert all(store.get_job(j.id).lost == 1 for j in leased)
    for _ in range(3):
        store.dispatch("w", 10)
    assert store.requeue_all_running("farm stopped", max_lost=1, count_lost=False) != []
    assert all(store.get_job(f"j{i}").lost == 1 and store.job_state(f"j{i}") == "queued" for i in (1, 2, 3))


def test_remove_from_queue_and_reenqueue_keeps_fencing(store):
    jobs(store, 2)
    assert store.remove_from_queue("j1") is True and store.remove_from_queue("j1") is False
    assert store.job_state("j1") == "removed" and store.queue_depth() == 1
    j2 = store.dispatch("w", 10)
    assert j2.id == "j2" and store.remove_from_queue("j2") is False
    store.requeue("j2", 1, "lost", 5)
    store.dispatch("w", 10)
    assert store.record_result(result(store.get_job("j2"))) is True
    store.enqueue(Job(id="j2", cand="c2", commit="sha2"))  # re-measure: attempts keep counting up
    again = store.dispatch("w", 10)
    assert again.attempt == 3 and store.record_result(result(j2)) is False


def test_results_by_candidate_in_finish_order(store):
    for i, c in enumerate(["ca", "cb", "ca"]):
        store.enqueue(Job(id=f"j{i}", cand=c, commit="s"))
    leased = [store.dispatch("w", 10) for _ in range(3)]
    for j in reversed(leased):
        assert store.record_result(result(j, val_bpb=float(j.id[1:])))
    assert [r.job for r in store.results()] == ["j2", "j1", "j0"]
    assert [r.job for r in store.results("ca")] == ["j2", "j0"] and store.results("zz") == []


# -- workers and events -------------------------------------------------------------------------
def test_heartbeat_expires(store):
    store.heartbeat("w1", ttl=0.3, info={"node": "n1", "gpu": "H100"})
    store.heartbeat("w2", ttl=30, info={"node": "n2"})
    live = store.live_workers()
    assert set(live) == {"w1", "w2"} and live["w1"]["gpu"] == "H100" and live["w1"]["worker"] == "w1"
    deadline = time.monotonic() + 5
    while "w1" in store.live_workers():
        assert time.monotonic() < deadline, "heartbeat of w1 never expired"
        time.sleep(0.05)
    assert set(store.live_workers()) == {"w2"}


def test_events(store):
    ids = [store.add_event("result", job=f"j{i}", val_bpb=0.9) for i in range(5)]
    ev = store.events(count=3)
    assert [e["data"]["job"] for e in ev] == ["j2", "j3", "j4"] and ev[0]["kind"] == "result"
    assert ev[0]["at"] == pytest.approx(time.time(), abs=60)
    assert [e["data"]["job"] for e in store.events(count=10, after=ids[1])] == ["j2", "j3", "j4"]
    assert store.events(after=ids[-1]) == []


def test_retarget_and_drop_are_fenced_by_the_attempt(store):
    jobs(store, 2)
    j1 = store.dispatch("w", 10)
    assert store.retarget("j1", j1.attempt + 1, "other") is False, "a stale attempt changes nothing"
    assert store.retarget("j1", j1.attempt, "rebased") is True and store.get_job("j1").commit == "rebased"
    assert store.retarget("j2", 1, "x") is False and store.drop("j2", 0) is False, "j2 is queued, not running"
    assert store.drop("j1", j1.attempt + 1) is False
    assert store.drop("j1", j1.attempt) is True and store.drop("j1", j1.attempt) is False
    assert store.job_state("j1") == "removed" and store.running_jobs() == []
    assert store.record_result(result(j1)) is False, "a dropped attempt's result is refused"
    assert [j.id for j in store.queued_jobs()] == ["j2"]
