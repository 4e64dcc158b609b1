"""The Ray Jobs side on a real local Ray with its dashboard (the Jobs API): tiny jobs, the shipped
working_dir, stopping a long job, and a whole farm run submitted as a job whose results come home
through the Jobs API alone (status, results, pull) after the job has ended."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cluster import head
from cluster.remote import client as jobs
from cluster.errors import FarmError
from cluster.remote.protocol import REDIS_PORT, parse_payload
from tests.farmkit import SCRIPTED_CONFIG, free_port, git, make_repo, shutdown_redis

ROOT = Path(__file__).resolve().parents[2]

FARM_TOML = SCRIPTED_CONFIG


@pytest.fixture(scope="module")
def address(tmp_path_factory):
    """A Ray head of its own with its dashboard (the Jobs API), as on a cluster's head: `ray start
    --head --block` in a subprocess, so it neither meets nor disturbs the suite's in-process Ray.
    Every port is a free one (the defaults 52365 and 10001 may be taken by that other Ray)."""
    temp_dir = tempfile.mkdtemp(prefix="arf-jobs-", dir="/tmp")  # short: Ray's socket paths must fit
    port = free_port()
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--port", str(free_port()),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(port), "--include-dashboard", "true",
           "--dashboard-agent-listen-port", str(free_port()), "--ray-client-server-port", str(free_port()),
           "--num-cpus", "4", "--num-gpus", "0", "--temp-dir", temp_dir, "--disable-usage-stats"]
    log = (tmp_path_factory.mktemp("ray") / "ray-start.log").open("w")
    head = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                jobs.client(url).list_jobs()
                break
            except FarmError:
                if head.poll() is not None or time.monotonic() > deadline:
                    pytest.skip(f"Ray's dashboard (the Jobs API) did not start here; see {log.name}")
                time.sleep(0.5)
        yield url
    finally:
        head.send_signal(signal.SIGINT)  # --block: Ray stops every process it started
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def wait(address: str, job_id: str, timeout: float = 60.0) -> str:
    return jobs.wait_job(jobs.client(address), job_id, timeout)


def test_address_and_token_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(FarmError, match="ray dashboard"):
        jobs.resolve_address(None)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:8265")
    assert jobs.resolve_address(None) == "http://10.0.0.1:8265"
    assert jobs.resolve_address("https://head:8265/") == "https://head:8265"
    with pytest.raises(FarmError, match="Jobs API"):
        jobs.resolve_address("ray://head:10001")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "s3cret")
    assert jobs.auth_headers() == {"Authorization": "Bearer s3cret"}
    assert jobs.auth_headers("explicit") == {"Authorization": "Bearer explicit"}
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    (tmp_path / "tok").write_text("fromfile\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert jobs.auth_headers() == {"Authorization": "Bearer fromfile"}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert jobs.auth_headers() == {}


def test_submit_run_refuses_flags_that_cannot_apply(tmp_path):
    repo = make_repo(tmp_path / "t")
    with pytest.raises(FarmError, match="--repo"):
        jobs.submit_run("http://127.0.0.1:1", repo, ["--repo", "/x"])
    with pytest.raises(FarmError, match="two tags"):
        jobs.submit_run("http://127.0.0.1:1", repo, ["--tag", "a"], tag="b")


def test_the_package_is_the_committed_head_plus_a_bundle(tmp_path):
    repo = make_repo(tmp_path / "t")
    (repo / "train.py").write_text("edited, not committed\n")
    (repo / "scratch.txt").write_text("untracked\n")
    head = git(repo, "rev-parse", "HEAD").strip()
    with jobs.package(repo, bundle=True, files={"p.diff": "--- a\n"}) as (stage, sha):
        assert sha == head
        shipped = sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file())
        assert shipped == [".farm-submit/head.bundle", ".farm-submit/p.diff", "prepare.py", "train.py"]
        assert (stage / "train.py").read_text() == git(repo, "show", "HEAD:train.py")
        clone = tmp_path / "clone"
        git(tmp_path, "init", "-q", "--bare", str(clone))
        git(clone, "fetch", "-q", str(stage / ".farm-submit" / "head.bundle"), "HEAD:refs/x")
        assert git(clone, "rev-parse", "refs/x").strip() == head
    assert not stage.exists()
    assert jobs.repo_id(repo) == git(repo, "rev-list", "--max-parents=0", "HEAD").strip()[:12]
    with pytest.raises(FarmError, match="letters, digits"):
        jobs.submit_run("http://127.0.0.1:1", repo, ["--tag", "../escape"])


@pytest.mark.slow
def test_tiny_job_succeeds_and_its_log_streams(address):
    jc = jobs.client(address)
    job_id = jc.submit_job(entrypoint="python -c \"print('hello from a job')\"")
    chunks: list[str] = []
    assert jobs.follow_logs(address, job_id, chunks.append) == "SUCCEEDED"
    assert "hello from a job" in "".join(chunks)
    assert jobs.job_status(address, job_id)["status"] == "SUCCEEDED"


@pytest.mark.slow
def test_the_repository_ships_as_working_dir(address):
    probe = "python -m cluster.cli --help && python -c 'import cluster; print(\"FROM\", cluster.__file__)'"
    job_id = jobs.submit_entrypoint(address, ROOT, probe, kind="test")
    assert wait(address, job_id) == "SUCCEEDED", jobs.client(address).get_job_logs(job_id)
    logs = jobs.client(address).get_job_logs(job_id)
    assert "usage: autoresearch-farm" in logs
    shipped = next(line for line in logs.splitlines() if line.startswith("FROM "))
    assert "_ray_pkg_" in shipped and str(ROOT) not in shipped, shipped  # the shipped copy, not this checkout
    assert jobs.job_status(address, job_id)["head"] == git(ROOT, "rev-parse", "HEAD").strip()


@pytest.mark.slow
def test_stop_a_long_job(address):
    jc = jobs.client(address)
    job_id = jc.submit_job(entrypoint="python -c \"import time; print('started', flush=True); time.sleep(600)\"")
    deadline = time.monotonic() + 30
    while "started" not in jc.get_job_logs(job_id):
        assert time.monotonic() < deadline, jc.get_job_logs(job_id)
        time.sleep(0.25)
    t0 = time.monotonic()
    assert jobs.stop_job(address, job_id) == "STOPPED"
    assert time.monotonic() - t0 < 20


@pytest.fixture
def head_home(tmp_path):
    """A farm home with the durable Redis running, as head_start_ray_commands leave it."""
    home = tmp_path / "farm-home"
    port = free_port()
    url = head.head_redis(home, port=port)
    yield home, url, port
    shutdown_redis(url)


def test_head_redis_is_durable_and_password_protected(head_home):
    home, url, port = head_home
    assert (home / "redis" / "url").read_text().strip() == url
    assert oct((home / "redis" / "url").stat().st_mode & 0o777) == "0o600"
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0)).ping()
    r = redis.Redis.from_url(url, decode_responses=True)
    assert r.config_get("appendonly") == {"appendonly": "yes"}
    assert r.config_get("requirepass")["requirepass"]
    r.close()
    assert head.head_redis(home, port=port) == url  # idempotent: finds it running


def test_two_jobs_starting_the_head_redis_at_once_end_with_one(tmp_path):
    home, port = tmp_path / "farm-home", free_port()
    urls: list[str] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            urls.append(head.head_redis(home, port=port))
        except BaseException as e:  # noqa: BLE001 (the test reports it)
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert not errors and len(urls) == 3 and len(set(urls)) == 1, (errors, urls)
        r = redis.Redis.from_url(urls[0])
        assert r.ping() and r.info("server")["process_id"] == int((home / "redis" / "redis.pid").read_text())
        r.close()
    finally:
        if urls:
            shutdown_redis(urls[0])


def test_a_look_at_a_head_without_redis_says_what_is_missing(tmp_path, capsys):
    (tmp_path / "repos" / "abc.runs" / "t").mkdir(parents=True)
    assert head.main(["query", "--repo-id", "abc", "--tag", "t", "--home", str(tmp_path), "--", "status"]) == 2
    error = parse_payload(capsys.readouterr().out)["error"]
    assert "no farm Redis on this head" in error and "the first `submit` starts it" in error
    assert not (tmp_path / "redis").exists(), "a look starts nothing"


@pytest.mark.slow
def test_submit_to_a_plain_ray_head_starts_the_farm_redis_itself(address, tmp_path):
    """A cluster not started from ray_cluster.yaml (here `ray start --head`, as KubeRay or an existing cluster):
    no head Redis was started by hand; the run's job starts it, runs to the end, and pull brings it home."""
    home = tmp_path / "plain-home"
    repo = make_repo(tmp_path / "target")
    (repo / "farm.toml").write_text(FARM_TOML)
    git(repo, "add", "farm.toml")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "farm config")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "cluster.cli", *args], cwd=repo, capture_output=True, text=True,
                              timeout=300)

    try:
        sub = cli("submit", "--address", address, "--home", str(home), "--config", "farm.toml", "--max-experiments",
                  "2", "--tag", "P")
        assert sub.returncode == 0, sub.stdout + sub.stderr
        logs = cli("logs", "P", "--address", address)
        assert logs.returncode == 0 and "2 experiments done" in logs.stdout, logs.stdout + logs.stderr
        assert "this head had no farm Redis: started one" in logs.stdout
        status = json.loads(cli("status", "--address", address, "--home", str(home), "--tag", "P", "--json").stdout)
        assert status["status"] == "done"
        pulled = cli("pull", "--address", address, "--home", str(home), "--tag", "P")
        assert pulled.returncode == 0, pulled.stderr
        assert git(repo, "rev-parse", "autoresearch/P").strip() == status["main"]
        snap = cli("dashboard", "--address", address, "--home", str(home), "--tag", "P", "--snapshot")
        assert snap.returncode == 0, snap.stderr  # the dashboard reads a cluster run as status does
        view = json.loads(snap.stdout)
        tsv = cli("results", "--address", address, "--home", str(home), "--tag", "P").stdout.splitlines()
        assert view["tag"] == "P" and len(view["experiments"]) == len(tsv) - 2  # (the header, the baseline)
        r = redis.Redis.from_url((home / "redis" / "url").read_text().strip())
        assert r.ping() and r.config_get("appendonly") == {"appendonly": "yes"}
        r.close()
        assert oct((home / "redis" / "url").stat().st_mode & 0o777) == "0o600"
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=REDIS_PORT, retry=Retry(NoBackoff(), 0)).ping()
    finally:
        if (home / "redis" / "url").exists():
            shutdown_redis((home / "redis" / "url").read_text().strip())


@pytest.mark.slow
def test_submitted_run_comes_home_after_the_job_ended(address, head_home, tmp_path):
    home, _, _ = head_home
    repo = make_repo(tmp_path / "target")
    (repo / "farm.toml").write_text(FARM_TOML)
    (repo / ".gitignore").write_text("*.bundle\n.farm-submit/\n")  # must not drop what ships
    git(repo, "add", "farm.toml", ".gitignore")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "farm config")
    job_id, tag, url = jobs.submit_run(address, repo, ["--config", "farm.toml", "--max-experiments", "2"],
                                       tag="jt", head_home=str(home))
    assert tag == "jt" and url.endswith(job_id)
    assert f"--home {home} " in jobs.job_status(address, job_id)["entrypoint"]  # the head's home, on its command line
    assert jobs.resolve_job(address, "jt") == job_id
    log_text: list[str] = []
    assert jobs.follow_logs(address, job_id, log_text.append) == "SUCCEEDED", "".join(log_text)
    assert "2 experiments done" in "".join(log_text)

    rc, out, err = jobs.remote_cli(address, repo, ["status", "--json"], tag="jt", head_home=str(home))
    assert rc == 0, err
    status = json.loads(out)
    assert status["status"] == "done" and status["tag"] == "jt"
    rc, tsv, _ = jobs.remote_cli(address, repo, ["results"], head_home=str(home))  # newest run by default
    assert tsv.splitlines()[0].split("\t") == ["commit", "val_bpb", "memory_gb", "status", "description"]
    assert len(tsv.splitlines()) == 4  # header, baseline, 2 candidates

    changed = jobs.pull(address, repo, "jt", head_home=str(home))
    assert "autoresearch/jt" in changed and sum(b.startswith("candidates/jt/") for b in changed) == 2
    assert git(repo, "rev-parse", "autoresearch/jt").strip() == status["main"]
    for branch, sha in changed.items():
        assert git(repo, "rev-parse", branch).strip() == sha
        assert git(repo, "cat-file", "-t", sha).strip() == "commit"
    assert jobs.pull(address, repo, "jt", head_home=str(home)) == {}  # up to date: nothing moves
    with pytest.raises(FarmError, match="no run nope"):
        jobs.remote_cli(address, repo, ["status"], tag="nope", head_home=str(home))
    # the query and bundle jobs cleaned up after themselves: only the run is listed
    assert [r["job_id"] for r in jobs.list_runs(address, "jt")] == [job_id]
    assert not [j for j in jobs.client(address).list_jobs() if (j.metadata or {}).get("autoresearch_farm_kind") in ("query", "bundle")]
    assert subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout == ""



@pytest.mark.slow
def test_the_cli_submits_reads_pulls_stops_and_resumes_a_cluster_run(address, tmp_path):
    """The README's cluster commands, end to end, against the head through --address alone (plus --home,
    which here keeps the head's home out of the real ~/autoresearch-farm)."""
    home = tmp_path / "cli-farm-home"
    head.head_redis(home, port=free_port())
    repo = make_repo(tmp_path / "target")
    (repo / "farm.toml").write_text(FARM_TOML)
    git(repo, "add", "farm.toml")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "farm config")

    def cli(*args, timeout=300):
        return subprocess.run([sys.executable, "-m", "cluster.cli", *args], cwd=repo, capture_output=True,
                              text=True, timeout=timeout)

    try:
        sub = cli("submit", "--address", address, "--home", str(home), "--config", "farm.toml", "--workers", "2",
                  "--budget", "1", "--max-experiments", "2", "--tag", "T")
        assert sub.returncode == 0 and "submitted run T as job" in sub.stdout, sub.stdout + sub.stderr
        logs = cli("logs", "T", "--address", address)
        assert logs.returncode == 0 and "2 experiments done" in logs.stdout, logs.stdout + logs.stderr
        status = json.loads(cli("status", "--address", address, "--home", str(home), "--tag", "T", "--json").stdout)
        assert status["status"] == "done"
        tsv = cli("results", "--address", address, "--home", str(home), "--tag", "T").stdout.splitlines()
        assert len(tsv) == 4 and tsv[1].split("\t")[4] == "baseline"
        png = tmp_path / "p.png"
        assert cli("plot", "--address", address, "--home", str(home), "--tag", "T", "--out", str(png)).returncode == 0
        assert png.read_bytes()[:4] == b"\x89PNG"
        pulled = cli("pull", "--address", address, "--home", str(home), "--tag", "T")
        assert pulled.returncode == 0, pulled.stderr
        assert git(repo, "rev-parse", "autoresearch/T").strip() == status["main"]

        slow = (repo / "train.py").read_text().replace("SLEEP = 0.3", "SLEEP = 3.0")
        (repo / "train.py").write_text(slow)
        git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "slower")
        assert cli("submit", "--address", address, "--home", str(home), "--config", "farm.toml", "--workers", "2",
                   "--max-experiments", "8", "--tag", "S").returncode == 0
        deadline = time.time() + 120
        while time.time() < deadline:
            mid = cli("status", "--address", address, "--home", str(home), "--tag", "S", "--json")
            if mid.returncode == 0 and json.loads(mid.stdout)["measurements"] >= 1:  # each look is a job: seconds
                break
            time.sleep(2)
        stopped = cli("stop", "S", "--address", address)
        assert stopped.returncode == 0 and "STOPPED" in stopped.stdout, (
            stopped.stdout + stopped.stderr + jobs.client(address).get_job_logs(jobs.resolve_job(address, "S")))
        before = json.loads(cli("results", "--address", address, "--home", str(home), "--tag", "S", "--format",
                                "json").stdout)
        again = cli("submit", "--address", address, "--home", str(home), "--tag", "S", "--resume")
        assert again.returncode == 0, again.stderr
        assert cli("logs", "S", "--address", address).returncode == 0
        after = json.loads(cli("results", "--address", address, "--home", str(home), "--tag", "S", "--format",
                               "json").stdout)
        jobs_after = [r["job"] for r in after]
        assert {r["job"] for r in before} <= set(jobs_after) and len(jobs_after) == len(set(jobs_after))
        counts = json.loads(cli("status", "--address", address, "--home", str(home), "--tag", "S", "--json").stdout)[
            "candidates"]
        experiments = sum(counts.values()) - counts.get("invalid", 0) - 1  # (the baseline is no experiment)
        assert experiments == 8, counts
        # every experiment was measured but those a merge made stale (a combination of two counts as one)
        measured = len({r["cand"] for r in after if r["purpose"] == "measure"})
        assert measured == experiments - counts.get("stale", 0), counts
    finally:
        shutdown_redis((home / "redis" / "url").read_text().strip())
