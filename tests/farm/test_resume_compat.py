"""`--resume` of a run recorded by the farm before the cluster/ layout change.

tests/fixtures/pre_layout_run holds what the farm at commit 0e8d24a left behind (see its README):
the target repository as a git bundle and every Redis key of the run, byte for byte. The test
rebuilds both in tmp_path, then reads and continues the run through today's code: the stored
JSON records must be read unchanged, and the run must go on from where it was stopped.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from cluster import cli
from cluster.launch import repo_farm_dir
from cluster.store import Store
from cluster.store.server import EmbeddedRedis, connect
from tests.farmkit import FIXTURES, git

pytestmark = pytest.mark.slow

FIXTURE = FIXTURES / "pre_layout_run"
TAG = "old1"
P = f"arf:{{{TAG}}}:"  # the key prefix of the run
OLD_LIMIT = 6  # the --max-experiments the old run was started with
LIMIT = OLD_LIMIT + 2
FINAL = {"merged", "discarded", "stale", "failed", "invalid"}
# the fields of a stored Result that `results --format json` repeats as they were stored
RESULT_FIELDS = ("cand", "job", "attempt", "purpose", "commit", "status", "val_bpb", "peak_vram_mb",
                 "training_seconds", "wall_seconds", "worker", "node", "accelerator", "started_at", "finished_at",
                 "containment", "log_path")


# -- the stored records, as records.json keeps them ----------------------------------------------
def _text(b: bytes) -> str:
    return b.decode("utf-8")


def dump(r: redis.Redis) -> dict:
    """Every key as records.json writes it: key -> {type, value} (see the fixture's README)."""
    out = {}
    for k in sorted(r.scan_iter(count=1000)):
        t = _text(r.type(k))
        if t == "hash":
            v = {_text(f): _text(x) for f, x in sorted(r.hgetall(k).items())}
        elif t == "string":
            v = _text(r.get(k))
        elif t == "list":
            v = [_text(x) for x in r.lrange(k, 0, -1)]
        elif t == "set":
            v = sorted(_text(x) for x in r.smembers(k))
        elif t == "zset":
            v = [[_text(m), s] for m, s in r.zrange(k, 0, -1, withscores=True)]
        elif t == "stream":
            v = [[_text(i), [[_text(f), _text(x)] for f, x in fields.items()]] for i, fields in r.xrange(k)]
        else:
            raise AssertionError(f"unexpected type {t} of {k!r}")
        out[_text(k)] = {"type": t, "value": v}
    return out


def load(r: redis.Redis, records: dict) -> None:
    for k, rec in records.items():
        t, v = rec["type"], rec["value"]
        if t == "hash":
            r.hset(k, mapping=v)
        elif t == "string":
            r.set(k, v)
        elif t == "list":
            r.rpush(k, *v)
        elif t == "set":
            r.sadd(k, *v)
        elif t == "zset":
            r.zadd(k, {m: s for m, s in v})
        elif t == "stream":
            for entry_id, fields in v:
                r.xadd(k, dict(fields), id=entry_id)
        else:
            raise AssertionError(f"unexpected type {t} of {k!r}")


class StoredRedis:
    """The run's embedded Redis, where the farm finds it: ``url``, and ``r``, a client that reads bytes."""

    def __init__(self, repo: Path):
        self.server = EmbeddedRedis(repo_farm_dir(repo) / "redis")

    def __enter__(self) -> StoredRedis:
        self.url = self.server.start()
        self.r = redis.Redis.from_url(self.url)
        return self

    def __exit__(self, *exc) -> None:
        self.r.close()
        self.server.stop()  # explicit: the server outlives its owner


# -- the target repository and the store, as the old farm left them -----------------------------
@pytest.fixture
def records() -> dict:
    return json.loads((FIXTURE / "records.json").read_text())


@pytest.fixture
def target(tmp_path, records) -> Path:
    repo = tmp_path / "target"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "fetch", "-q", "--update-head-ok", str(FIXTURE / "repo.bundle"), "refs/*:refs/*")
    git(repo, "checkout", "-q", "-f", "main")  # the user's branch, with its work tree
    with StoredRedis(repo) as db:
        r = db.r
        assert r.dbsize() == 0
        load(r, records)
        assert dump(r) == records, "records.json is in the store exactly"
    return repo


def farm(capsys, *args: str) -> str:
    capsys.readouterr()
    rc = cli.main(list(args))
    out = capsys.readouterr()
    assert rc == 0, out.out + out.err
    return out.out


def status(capsys, repo: Path) -> dict:
    return json.loads(farm(capsys, "status", "--repo", str(repo), "--config", str(FIXTURE / "farm.toml"),
                           "--tag", TAG, "--json"))


def results(capsys, repo: Path) -> list[dict]:
    return json.loads(farm(capsys, "results", "--repo", str(repo), "--config", str(FIXTURE / "farm.toml"),
                           "--tag", TAG, "--format", "json"))


def stored(records: dict, name: str):
    return records[P + name]["value"]


def stored_candidates(records: dict) -> dict[str, dict]:
    return {k[len(P + "cand:"):]: {f: json.loads(v) for f, v in rec["value"].items()}
            for k, rec in records.items() if k.startswith(P + "cand:")}


def assert_old_results_listed(rows: list[dict], records: dict) -> None:
    by_job = {r["job"]: r for r in rows}
    for raw in stored(records, "results"):
        old = json.loads(raw)
        row = by_job[old["job"]]
        assert {f: row[f] for f in RESULT_FIELDS} == {f: old[f] for f in RESULT_FIELDS}, old["job"]
    cands = stored_candidates(records)
    for row in rows:
        if row["cand"] in cands and cands[row["cand"]]["state"] in FINAL:  # judged by the old code
            c = cands[row["cand"]]
            assert (row["description"], row["origin"], row["state"]) == (c["description"], c["origin"], c["state"])


def test_a_run_recorded_before_the_layout_change_reads_and_resumes(target, records, capsys):
    cands = stored_candidates(records)
    old_results = stored(records, "results")
    old_queue = stored(records, "queue")
    meta = {f: json.loads(v) for f, v in stored(records, "run").items()}
    queued = {c for c, rec in cands.items() if rec["state"] == "queued"}
    assert queued and len(old_results) >= 3 and meta["status"] == "stopped", "the fixture is a stopped run mid-way"

    # read as stored: the run, every candidate and its state, the queue, the measurements
    s = status(capsys, target)
    counts = {}
    for c in cands.values():
        counts[c["state"]] = counts.get(c["state"], 0) + 1
    assert {k: v for k, v in s["candidates"].items() if v} == counts
    assert (s["status"], s["main"], s["queued"], s["running"]) == ("stopped", meta["main"], len(old_queue), [])
    assert s["measurements"] == len(old_results)
    base = [json.loads(x)["val_bpb"] for x in old_results if json.loads(x)["cand"] == meta["baseline_cand"]]
    assert s["baseline_bpb"] == pytest.approx(sum(base) / len(base))
    with StoredRedis(target) as db:
        store = Store(connect(db.url), TAG)  # the Store of today's code on the old records
        try:
            got = {c.id: c for c in store.candidates()}
            assert set(got) == set(cands)
            for cid, c in cands.items():
                mine = got[cid]
                assert (mine.state, mine.commit, mine.base, mine.branch, mine.description, mine.origin) == (
                    c["state"], c["commit"], c["base"], c["branch"], c["description"], c["origin"]), cid
            assert [j.id for j in store.queued_jobs()] == old_queue
            assert [r.job for r in store.results()] == [json.loads(x)["job"] for x in old_results]
        finally:
            store.r.close()
    assert_old_results_listed(results(capsys, target), records)

    # continue it: the queued candidates first, then new ones, up to the limit
    out = subprocess.run([sys.executable, "-m", "cluster.cli", "run", "--repo", str(target), "--config",
                          str(FIXTURE / "farm.toml"), "--tag", TAG, "--resume", "--max-experiments", str(LIMIT),
                          "--no-dashboard"], cwd=target, capture_output=True, text=True, timeout=400, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{LIMIT} experiments done" in out.stdout, out.stdout

    s = status(capsys, target)
    assert s["status"] == "done" and s["queued"] == 0 and s["running"] == []
    assert {k for k, v in s["candidates"].items() if v} <= FINAL, s["candidates"]
    assert sum(s["candidates"].values()) - s["candidates"].get("invalid", 0) - 1 == LIMIT
    assert s["measurements"] > len(old_results)

    with StoredRedis(target) as db:  # what the old code stored is still there, byte for byte
        r = db.r
        assert [_text(x) for x in r.lrange(P + "results", 0, len(old_results) - 1)] == old_results
        assert r.llen(P + "results") > len(old_results)
        for k, rec in records.items():
            if k.startswith(P + "results:cand:"):  # each candidate's index into the results, as it was
                kept = rec["value"]
                assert [_text(x) for x in r.lrange(k, 0, len(kept) - 1)] == kept, k
        for cid, c in cands.items():
            if c["state"] in FINAL:  # judged by the old code: its record is as it was
                now = {_text(f): _text(v) for f, v in r.hgetall(P + f"cand:{cid}").items()}
                assert now == stored(records, f"cand:{cid}"), cid
        main_moved = json.loads(r.hget(P + "run", "main")) != meta["main"]
        states = {cid: json.loads(r.hget(P + f"cand:{cid}", "state")) for cid in queued}

    rows = results(capsys, target)
    assert_old_results_listed(rows, records)
    jobs = [r["job"] for r in rows]
    assert len(jobs) == len(set(jobs)), "no job has two recorded results"
    measured = {r["cand"] for r in rows if r["purpose"] == "measure"}
    for cid in queued:  # what the old code had queued was measured (a rebase conflict after a merge: stale)
        assert cid in measured or (main_moved and states[cid] == "stale"), (cid, states)
    assert git(target, "status", "--porcelain") == "", "the user's work tree is untouched"
    assert git(target, "rev-parse", "main").strip() == meta["baseline"], "and so is the user's branch"
