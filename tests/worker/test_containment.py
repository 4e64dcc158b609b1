"""Containment in every trust mode: a candidate's run sees a private view of the filesystem.

One hostile train.py (tests/fixtures/probe_train.py) runs through the real Worker twice: under
``trusted_eval = true`` (the farm's harness; it hands its model to the evaluator) and under
``trusted_eval = false`` (it prints its own summary block). The worker is laid out as the farm lays
it out: its root under the researched repository's ``.git/autoresearch-farm/runs/<tag>/workers``, a
real embedded redis-server with its socket where the farm puts it (``.git/autoresearch-farm/redis``),
a second worker's run directory beside this one, and a fake ``$HOME`` holding secrets (an ssh key,
a Ray token, the farm's Redis URL). From inside the run the probe tries to

1. write a branch ref into the repository's ``.git`` (found by walking up from its working
   directory, and at the path the test knows),
2. PING the farm's Redis and SET a key,
3. read ``~/.ssh/id_test``, ``~/.ray/auth_token``, ``~/autoresearch-farm/redis_url`` and
   ``/etc/shadow``, and list ``~/.ssh`` and ``~/.ray``,
4. write into the other worker's run directory and into ``$HOME``,
5. see another process of the worker's user in ``/proc`` (a stand-in for Ray's raylet), and find a
   secret in its ``/proc/<pid>/environ``,
6. be root.

What it proves, in both modes: every attempt failed, as seen from inside (the probe's report) and
from the host (no ref in ``.git``, Redis holds only what the test wrote, the other run directory
and ``$HOME`` unchanged, no secret in the log); the run is still ``ok`` (containment does not break
an honest run); its ``containment`` names the layers ``view``, ``pidns`` and ``unprivileged``; and
its ``denied`` lists the credential decoys ``~/.ssh`` and ``~/.ray`` the probe listed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.worker.corpus import KNOBS, small_cache
from worker.actor import Worker
from worker.sandbox import hiding_available
from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).resolve().parents[1] / "fixtures" / "probe_train.py"
MARK = "probe-was-here"
pytestmark = [
    pytest.mark.trust,
    pytest.mark.skipif(not hiding_available(), reason="no mount namespace here (unshare -m/-rm with a bind "
                       "mount refused): a run cannot be given a private view of the filesystem"),
]

SECRETS = {".ssh/id_test": "-----BEGIN OPENSSH PRIVATE KEY----- probe-secret-ssh",
           ".ray/auth_token": "probe-secret-ray-token",
           "autoresearch-farm/redis_url": "redis://:probe-secret-password@10.0.0.1:6379/0"}
ENV_SECRET = "probe-secret-in-the-workers-environment"
NEIGHBOUR = "probe-neighbour-mark"  # in the command line of a process beside the worker
MAY_SUCCEED = {"home-write"}  # a private $HOME may be writable: the host's is checked instead
ATTEMPTS = ["git-ref-found", "git-ref-known", "redis", "ssh-key", "ray-token", "farm-home", "shadow",
            "list-ssh", "list-ray", "other-run", "home-write", "proc-neighbour", "proc-environ", "root"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A small prepared corpus (80 stdlib files, vocab 512), as the workers' data cache."""
    return small_cache(tmp_path_factory.mktemp("containment"))


@pytest.fixture
def farm(tmp_path_factory, monkeypatch):
    """The researched repository, its farm directory with a live Redis, a second worker's run
    directory, and a fake $HOME with secrets (set before any Worker exists). A short base path
    keeps the Redis socket at <repo>/.git/autoresearch-farm/redis/redis.sock, as the farm puts it."""
    from cluster.store.server import EmbeddedRedis, connect

    base = tmp_path_factory.mktemp("f")
    repo = base / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    (repo / "train.py").write_text("print('baseline')\n")
    subprocess.run([*git, "add", "train.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "baseline"], check=True)
    farm_dir = repo / ".git" / "autoresearch-farm"
    work_root = farm_dir / "runs" / "t" / "workers"
    other = work_root / "w1" / "runs" / "j9-a1"
    other.mkdir(parents=True)
    (other / "train.py").write_text("# another worker's candidate\n")

    home = base / "home"
    for rel, secret in SECRETS.items():
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).write_text(secret + "\n")
    (home / ".ssh" / "id_test").chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    # a process of the worker's user with a secret in its environment (as Ray's raylet has its token):
    # /proc/<pid>/environ shows a process's initial environment, so it is a new process, not a setenv
    neighbour = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep(600)  # {NEIGHBOUR}"],
                                 env={**os.environ, "FARM_PROBE_SECRET_TOKEN": ENV_SECRET})
    server = EmbeddedRedis(farm_dir / "redis")
    try:
        client = connect(server.start(), retry_seconds=5)
        client.set("farm:sentinel", "1")
        yield {"repo": repo, "git": repo / ".git", "work_root": work_root, "other": other, "home": home,
               "redis": client, "socket": server.socket_path}
        client.close()
    finally:
        server.stop()
        neighbour.kill()
        neighbour.wait()


def probe_source(farm: dict, trusted: bool) -> str:
    targets = {"repo_git": str(farm["git"]), "redis_socket": str(farm["socket"]),
               "other_run_dir": str(farm["other"]), "farm_home": str(farm["home"] / "autoresearch-farm"),
               "home": str(farm["home"]), "env_secret": ENV_SECRET, "neighbour_mark": NEIGHBOUR}
    src = PROBE.read_text()
    src = src.replace("TARGETS = {}", f"TARGETS = {targets!r}", 1).replace("TRUSTED = False", f"TRUSTED = {trusted}", 1)
    assert f"TARGETS = {targets!r}" in src and f"TRUSTED = {trusted}" in src
    return src


def files_under(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def run_probe(farm: dict, cache: Path, trusted: bool) -> tuple[dict, str]:
    w = Worker(WorkerSettings(name="w0", work_root=str(farm["work_root"]), command=["python", "train.py"],
                              prepare_command=[], budget=2.0, grace=120.0, cache_dir=str(cache),
                              isolate_network=False, env=dict(KNOBS), cpu_threads=1, device="cpu",
                              frozen=["prepare.py"], trusted_eval=trusted,
                              tripwire=False))  # the layer under test is the view, not the static scan
    files = {"train.py": probe_source(farm, trusted).encode(), "prepare.py": (ROOT / "prepare.py").read_bytes()}
    job = {"id": "j1", "cand": "c1", "commit": "abc", "attempt": 1, "purpose": "measure", "seed": 1}
    out = w.run(job, files, harness_digest="d")
    return out["result"], out["log"]


def probe_report(log: str) -> dict[str, dict]:
    lines = [json.loads(line[len("PROBE "):]) for line in log.splitlines() if line.startswith("PROBE ")]
    return {p["name"]: p for p in lines}


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted-eval", "printed-metric"])
def test_a_hostile_candidate_reaches_nothing_outside_its_view(farm, cache, trusted):
    git, home, redis = farm["git"], farm["home"], farm["redis"]
    refs_before, other_before = files_under(git / "refs"), files_under(farm["other"])
    home_before = files_under(home)
    assert redis.dbsize() == 1

    r, log = run_probe(farm, cache, trusted)

    assert r["status"] == "ok", f"{r['status']}: {r['reason']}\n{log[-3000:]}"
    if trusted:
        assert "trusted-eval" in r["containment"] and r["val_bpb"] is not None
    else:
        assert "printed-metric" in r["containment"] and r["val_bpb"] == 1.0
    seen = probe_report(log)
    assert sorted(seen) == sorted(ATTEMPTS), f"the probe ran every attempt once:\n{log[-3000:]}"

    breaches = [f"inside the run, {name} succeeded: {p['detail']}" for name, p in seen.items()
                if p["ok"] and name not in MAY_SUCCEED]
    if (git / "refs" / "heads" / MARK).exists() or files_under(git / "refs") != refs_before:
        breaches.append(f"the host's {git}/refs changed: {sorted(set(files_under(git / 'refs')) - set(refs_before))}")
    if redis.dbsize() != 1 or redis.get(MARK) is not None:
        breaches.append(f"the farm's Redis was written: {sorted(redis.keys('*'))}")
    if files_under(farm["other"]) != other_before:
        breaches.append(f"the other worker's run directory changed: {sorted(files_under(farm['other']))}")
    if files_under(home) != home_before:
        breaches.append(f"the worker's $HOME changed: {sorted(set(files_under(home)) - set(home_before))}")
    if leaked := [s for s in SECRETS.values() if s in log]:
        breaches.append(f"secrets in the run's log: {leaked}")
    layers = r["containment"].split(",")
    for layer in ("view", "pidns", "unprivileged"):
        if layer not in layers:
            breaches.append(f"containment {r['containment']!r} lacks {layer!r}")
    denied = r.get("denied")
    for decoy in (home / ".ssh", home / ".ray"):
        if not isinstance(denied, list) or str(decoy) not in denied:
            breaches.append(f"the listing of the decoy {decoy} is not in the result's denied: {denied!r}")
    assert not breaches, "\n".join(breaches)
