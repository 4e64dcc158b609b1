"""The dashboard's parts on a real Redis and a real HTTP server: the views built from a run's records
(lineage gains, a running worker's elapsed time and progress, the queue, a candidate's decisions),
and the server's behaviour where the run cannot be read, where a candidate is unknown, and what its
live stream sends. The whole thing, with a real farm and a real browser: tests/farm/test_dashboard.py (the whole)."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest

from cluster.errors import FarmError
from cluster.records import Candidate, Job, Purpose, Result, State
from cluster.report import pages, web
from cluster.report.dashboard import candidate_view, run_view
from cluster.store import Store
from tests.farmkit import http_get


@pytest.fixture
def store(redis_client):
    redis_client.flushall()
    st = Store(redis_client, "d1")
    st.create_run({"status": "running", "created": time.time() - 3600, "main": "m2", "baseline": "m0",
                   "config": {"train": {"budget": 300.0}}})
    return st


def _cand(st: Store, i: int, state: str, commit: str, base: str = "m0", **kw) -> Candidate:
    c = Candidate(id=f"c{i:04d}", commit=commit, base=base, branch=f"candidates/d1/c{i:04d}", description=f"change {i}",
                  origin="baseline" if i == 0 else "mutate", state=state, created_at=1000.0 + i, **kw)
    st.add_candidate(c)
    return c


def _measure(st: Store, c: Candidate, val: float, purpose: Purpose = Purpose.MEASURE, worker: str = "w0") -> None:
    job = Job(id=st.next_id("job"), cand=c.id, commit=c.commit, purpose=purpose.value)
    st.enqueue(job)
    running = st.dispatch(worker, 60)
    st.record_result(Result(job=running.id, cand=c.id, commit=c.commit, attempt=running.attempt, status="ok",
                            val_bpb=val, worker=worker, purpose=purpose.value, finished_at=time.time(),
                            loss_curve=[[0.0, 5.0], [1.0, 3.0]], log_tail=f"log of {c.id}"))


def _recorded_run(st: Store) -> None:
    base = _cand(st, 0, State.MERGED.value, "m0", decision={"action": "baseline", "reason": "own", "at": 1.0})
    for _ in range(2):
        _measure(st, base, 1.000, Purpose.BASELINE)
    win = _cand(st, 1, State.MERGED.value, "m1", decision={"action": "merge", "reason": "clears the margin", "at": 2.0})
    _measure(st, win, 0.990)
    _measure(st, win, 0.992, Purpose.BASELINE)
    st.add_event("decision", cand=win.id, action="merge", reason="clears the margin")
    lose = _cand(st, 2, State.DISCARDED.value, "m3", base="m1", decision={"action": "discard", "reason": "worse"})
    _measure(st, lose, 1.01)
    later = _cand(st, 3, State.MERGED.value, "m2", base="m1", decision={"action": "merge", "reason": "again", "at": 3.0})
    _measure(st, later, 0.985, Purpose.BASELINE)


def test_the_views_read_the_records(store):
    _recorded_run(store)
    running = _cand(store, 4, State.RUNNING.value, "m4", base="m2")
    store.enqueue(Job(id=store.next_id("job"), cand=running.id, commit="m4"))
    job = store.dispatch("w1", 60)
    queued = _cand(store, 5, State.QUEUED.value, "m5", base="m2")
    store.enqueue(Job(id=store.next_id("job"), cand=queued.id, commit="m5"))
    store.heartbeat("w1", 30, {"node": "n1", "accelerator": "H100", "gpu_ids": [3],
                               "curve": {"job": job.id, "since": time.time() - 42, "points": [[0.1, 4.0], [0.25, 3.5]]}})
    v = run_view(store)
    assert [m["cand"] for m in v["lineage"]] == ["c0001", "c0003"], "merged candidates, in merge order, no baseline"
    assert v["lineage"][0]["gain"] == pytest.approx(0.008) and v["lineage"][1]["gain"] == pytest.approx(0.007)
    assert v["lineage"][1]["cumulative"] == pytest.approx(0.015)
    assert [e["cand"] for e in v["experiments"]] == ["c0001", "c0002", "c0003"]
    w = {x["name"]: x for x in v["workers"]}["w1"]
    assert w["cand"] == "c0004" and w["progress"] == 0.25 and w["elapsed_s"] == pytest.approx(42, abs=5)
    assert w["node"] == "n1" and w["gpu_ids"] == [3]
    assert [q["cand"] for q in v["queue"]] == ["c0005"] and v["queue_length"] == 1
    assert v["budget"] == 300.0 and v["rates"]["workers_busy"] == 1
    assert v["rates"]["experiments_per_hour"] == pytest.approx(3, rel=0.05), "3 experiments in the run's hour"

    class Repo:
        def diff(self, base: str, commit: str) -> str:
            return f"--- a/train.py\n+++ b/train.py\n-x {base}\n+x {commit}\n"

    cv = candidate_view(store, Repo(), "c0001")
    assert cv["diff"].endswith("+x m1\n") and [e["kind"] for e in cv["events"]] == ["decision"]
    assert [r["purpose"] for r in cv["results"]] == ["measure", "baseline"] and cv["line"]
    live = candidate_view(store, Repo(), "c0004")
    assert live["live"][0]["points"] == [[0.1, 4.0], [0.25, 3.5]]
    assert 'data-series="1"' in pages.candidate_regions(live)["curve"], "the running job's curve so far"
    assert 'data-series="2"' in pages.candidate_regions(cv)["curve"], "one curve per measurement"
    assert "<span class=\"add\">+x m1</span>" in pages.candidate_regions(cv)["diff"]
    with pytest.raises(FarmError, match="no candidate 'c0099' in run d1"):
        candidate_view(store, Repo(), "c0099")


@pytest.fixture
def serve():
    servers = []

    def start(dash: web.Dashboard, host: str = "127.0.0.1") -> str:
        server = web.make_server(dash, host, 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def _events(url: str, n: int, out: list[dict] | None = None) -> list[dict]:
    """The first n messages of a live stream (into `out` as they come)."""
    out = [] if out is None else out
    with urllib.request.urlopen(url, timeout=20) as r:
        for line in r:
            if line.startswith(b"data: "):
                out.append(json.loads(line[6:]))
                if len(out) == n:
                    return out
    return out


def test_a_run_that_cannot_be_read_is_a_page_that_says_so_then_recovers(store, serve):
    _recorded_run(store)
    down = {"now": True}

    def run() -> dict:
        if down["now"]:
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        return run_view(store)

    url = serve(web.Dashboard(run, lambda cid: candidate_view(store, None, cid), interval=0.2))
    code, body = http_get(url + "/")
    assert code == 503 and "The run cannot be read" in body and "Connection refused" in body
    assert "Traceback" not in body
    first = _events(url + "/events?page=run", 1)[0]
    assert "cannot read the run right now" in first["regions"]["banner"]
    down["now"] = False
    time.sleep(0.3)
    code, body = http_get(url + "/")
    assert code == 200 and '<span id="n-experiments">3</span>' in body
    code, body = http_get(url + "/c/c0042")
    assert code == 404 and "no candidate &#x27;c0042&#x27; in run d1" in body
    assert http_get(url + "/nowhere")[0] == 404
    assert json.loads(http_get(url + "/api/run")[1])["tag"] == "d1"


def test_the_live_stream_sends_a_region_again_only_when_it_changed(store, serve):
    _recorded_run(store)
    url = serve(web.Dashboard(lambda: run_view(store), lambda cid: candidate_view(store, None, cid), interval=0.2))
    got: list[dict] = []
    reader = threading.Thread(target=_events, args=(url + "/events?page=run", 2, got))
    reader.start()
    time.sleep(1.5)  # several intervals with nothing new: nothing more is sent
    assert len(got) == 1
    late = _cand(store, 6, State.DISCARDED.value, "m6", base="m2", decision={"action": "discard", "reason": "no"})
    _measure(store, late, 1.02)
    reader.join(20)
    assert len(got) == 2
    assert set(got[0]["regions"]) >= {"summary", "chart", "lineage", "experiments"}, "the first message: every region"
    changed = set(got[1]["regions"])
    assert {"summary", "chart", "experiments"} <= changed and "lineage" not in changed, changed
    assert '<span id="n-experiments">4</span>' in got[1]["regions"]["summary"]


def test_beyond_loopback_only_with_a_token(store, serve):
    dash = web.Dashboard(lambda: run_view(store), lambda cid: {}, interval=0.2)
    with pytest.raises(FarmError, match="without an access token"):
        web.make_server(dash, "0.0.0.0", 0)
    url = serve(web.Dashboard(lambda: run_view(store), lambda cid: {}, token="s3cret"), host="0.0.0.0")
    assert http_get(url + "/")[0] == 401 and http_get(url + "/api/run")[0] == 401
    req = urllib.request.Request(url + "/?token=s3cret")
    with urllib.request.urlopen(req, timeout=10) as r:
        cookie = r.headers["Set-Cookie"].split(";")[0]
    with urllib.request.urlopen(urllib.request.Request(url + "/api/run", headers={"Cookie": cookie}), timeout=10) as r:
        assert r.status == 200, "the cookie carries the token to the page's own requests (its live stream)"


def test_on_a_clusters_head_the_dashboard_only_answers_snapshots(tmp_path, capsys):
    """A look at a cluster run is a short Ray job on the head: a dashboard server there would never end it."""
    from cluster import head
    from cluster.remote.protocol import parse_payload

    assert head.main(["query", "--repo-id", "abc", "--tag", "t", "--home", str(tmp_path), "--", "dashboard"]) == 2
    assert "only answers --snapshot" in parse_payload(capsys.readouterr().out)["error"]


def test_a_slow_read_is_repeated_less_often():
    """Reading a long run's records takes a while: the dashboard waits LOAD_SHARE times that between reads."""
    reads = []

    def slow(*key: str) -> dict:
        reads.append(time.monotonic())
        time.sleep(0.2)
        return {"n": len(reads)}

    cached = web._Cached(slow, ttl=0.05)
    assert cached.get()["n"] == 1
    time.sleep(0.3)  # past the ttl, not past 5 x 0.2 s
    assert cached.get()["n"] == 1
    time.sleep(0.8)
    assert cached.get()["n"] == 2
