"""The pre-flight as a user meets it: `autoresearch-farm check` says what the farm found in a target
and exits 0 when it would run it, 2 with every refusal (each naming what to change) when not; a
`run` the pre-flight refuses exits as fast, with nothing recorded; a run it lets through records
the harness and its trust level, which `status` prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster import cli
from tests.farmkit import SCRIPTED_CONFIG, git, make_repo

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

# karpathy/autoresearch's shape, in miniature: a literal budget, evaluate_bpb, training at import
PREPARE = '''
import os
import torch

TIME_BUDGET = 300
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "autoresearch")


def evaluate_bpb(model, tokenizer, batch_size):
    return 1.0
'''
CUDA_TRAIN = '''
import torch
from kernels import get_kernel
from prepare import TIME_BUDGET, evaluate_bpb

cap = torch.cuda.get_device_capability()
repo = "org/kernel-a" if cap == (9, 0) else "org/kernel-b"
fa = get_kernel(repo)
torch.manual_seed(42)
print(f"val_bpb: {evaluate_bpb(None, None, 1):.6f}")
'''
CPU_TRAIN = '''
import torch
from prepare import TIME_BUDGET, evaluate_bpb

device = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(42)
print(f"val_bpb: {evaluate_bpb(None, None, 1):.6f}")
'''


def commit_repo(path: Path, files: dict[str, str]) -> Path:
    """A target repository whose HEAD holds `files` (train.py among them)."""
    make_repo(path, files["train.py"])
    for name, text in files.items():
        (path / name).write_text(text)
    git(path, "add", *files)
    git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "the harness")
    return path


def check(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main(["check", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_the_projects_own_harness_would_run(tmp_path, capsys):
    repo = commit_repo(tmp_path / "own", {"train.py": (ROOT / "train.py").read_text(),
                                          "prepare.py": (ROOT / "prepare.py").read_text()})
    (repo / "prepare.py").write_text("# the working tree is never read\n")
    rc, out, err = check(capsys, "--repo", str(repo))
    assert rc == 0, out + err
    assert "harness: the farm's own" in out and "AUTORESEARCH_TIME_BUDGET" in out
    assert "trust: trusted-eval; containment: own filesystem view, own PIDs, as " in out
    assert "seeding: from the farm" in out
    assert "the farm would run this target" in out


@pytest.mark.skipif(subprocess.run([sys.executable, "-c", "import torch, sys; sys.exit(torch.cuda.is_available())"],
                                   check=False).returncode != 0, reason="this machine has a GPU")
def test_a_machine_without_an_unprivileged_identity_is_refused_unless_the_config_accepts_it(
        tmp_path, capsys, monkeypatch):
    import cluster.preflight
    from worker.sandbox.view import Support

    # as root inside a user namespace that maps only root (`unshare -r` run by root)
    monkeypatch.setattr(cluster.preflight, "view_support", lambda: Support(True, None, why="uid 65534 is not mapped"))
    repo = commit_repo(tmp_path / "own", {"train.py": (ROOT / "train.py").read_text(),
                                          "prepare.py": (ROOT / "prepare.py").read_text()})
    rc, out, err = check(capsys, "--repo", str(repo))
    assert rc == 2, out + err
    assert "containment: runs here would lack unprivileged (uid 65534 is not mapped)" in err
    assert 'train.accept_missing = ["unprivileged"]' in err
    cfg = tmp_path / "farm.toml"
    cfg.write_text('[train]\naccept_missing = ["unprivileged"]\n')
    rc, out, err = check(capsys, "--repo", str(repo), "--config", str(cfg))
    assert rc == 0, out + err
    assert "containment: own filesystem view, own PIDs, as root (accepted without unprivileged)" in out
    cfg.write_text('[train]\naccept_missing = ["network"]\n')
    rc, out, err = check(capsys, "--repo", str(repo), "--config", str(cfg))
    assert rc == 2 and "train.accept_missing names network: it may name view, unprivileged" in err


def test_a_cuda_only_upstream_repo_is_refused_on_this_cpu_machine(tmp_path, capsys):
    repo = commit_repo(tmp_path / "up", {"train.py": CUDA_TRAIN, "prepare.py": PREPARE})
    rc, out, err = check(capsys, "--repo", str(repo))
    assert rc == 2, out + err
    assert "harness: upstream" in out and "300 s per run, fixed by the constant prepare.TIME_BUDGET = 300" in out
    assert "seeds itself" in out and "org/kernel-a, org/kernel-b" in out
    assert "CUDA" in err and "train.py line 6: torch.cuda.get_device_capability()" in err
    assert "ray up ray_cluster.yaml" in err and "runs on the CPU" in err


def test_a_missing_import_is_refused_with_the_command_that_installs_it(tmp_path, capsys):
    train = CPU_TRAIN.replace("import torch\n", "import torch\nimport no_such_distribution_xyz\n", 1)
    repo = commit_repo(tmp_path / "imp", {"train.py": train, "prepare.py": PREPARE})
    rc, out, err = check(capsys, "--repo", str(repo), "--gpus", "0")
    assert rc == 2, out + err
    assert (f"train.py imports no_such_distribution_xyz, which is not installed in {sys.executable}: "
            "pip install no_such_distribution_xyz") in err
    assert "CUDA" not in err, "the CPU fallback needs no GPU"


def test_every_refusal_is_listed_at_once(tmp_path, capsys):
    repo = commit_repo(tmp_path / "conf", {"train.py": CPU_TRAIN, "prepare.py": PREPARE})
    cfg = tmp_path / "farm.toml"
    cfg.write_text('[train]\ncommand = ["python", "-u", "train.py"]\nharness = "farm"\n')
    rc, out, err = check(capsys, "--repo", str(repo), "--config", str(cfg), "--budget", "120", "--gpus", "0")
    assert rc == 2, out + err
    assert "prepare.py fixes TIME_BUDGET = 300 (frozen): drop --budget/train.budget" in err
    assert 'set train.command = ["python", "train.py"]' in err
    assert 'set train.harness = "upstream"' in err
    assert err.count("\n  - ") == 3


def test_an_upstream_repo_that_runs_on_the_cpu_would_run_with_its_constant(tmp_path, capsys):
    repo = commit_repo(tmp_path / "cpu", {"train.py": CPU_TRAIN, "prepare.py": PREPARE, ".python-version": "2.7\n"})
    rc, out, err = check(capsys, "--repo", str(repo), "--budget", "300", "--gpus", "0")
    assert rc == 0, out + err
    assert "a run is killed after 390 s (budget + train.grace 90 s)" in out
    assert "trust: trusted-eval (the model is exported at evaluate_bpb" in out
    assert "data: " in out and "python prepare.py" in out
    assert ".python-version asks for Python 2.7" in out and "pyenv" in out


@pytest.mark.slow
def test_a_run_the_preflight_refuses_exits_fast_and_records_nothing(tmp_path):
    repo = commit_repo(tmp_path / "up", {"train.py": CUDA_TRAIN, "prepare.py": PREPARE})
    cfg = tmp_path / "farm.toml"
    cfg.write_text(SCRIPTED_CONFIG)  # CPU workers (gpus_per_worker = 0): CUDA is refused on any machine

    def farm(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cluster.cli", *args, "--config", str(cfg), "--tag", "X"],
                              cwd=repo, capture_output=True, text=True, timeout=300, env=ENV)

    t0 = time.monotonic()
    out = farm("run", "--no-dashboard")
    assert out.returncode == 2, out.stdout + out.stderr
    assert time.monotonic() - t0 < 30, "refused before Ray starts: CPU workers need no GPU count"
    assert "the pre-flight refuses this run" in out.stderr and "CUDA" in out.stderr
    assert "workers.gpus_per_worker = 0 makes every worker a CPU worker" in out.stderr
    assert "harness: upstream" in out.stdout  # what it found, before the refusal
    status = farm("status")
    assert status.returncode == 2 and "no run 'X'" in status.stderr
    assert "autoresearch/X" not in git(repo, "branch", "--list")


@pytest.mark.slow
def test_a_run_records_its_harness_and_status_prints_the_trust(tmp_path):
    repo = make_repo(tmp_path / "scripted")  # the scripted train.py and a stand-in prepare.py: no known shape
    cfg = tmp_path / "farm.toml"
    cfg.write_text(SCRIPTED_CONFIG.replace("baseline_runs = 2", "baseline_runs = 1"))

    def farm(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cluster.cli", *args, "--config", str(cfg), "--tag", "R"],
                              cwd=repo, capture_output=True, text=True, timeout=300, env=ENV)

    out = farm("run", "--max-experiments", "1", "--no-dashboard")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "harness: not recognised" in out.stdout and "trust: printed metric" in out.stdout
    s = json.loads(farm("status", "--json").stdout)
    assert s["harness"]["kind"] == "farm" and s["harness"]["read_as"] == "unknown"
    who = "as uid 65534" if os.geteuid() == 0 else "as the worker's own user"
    trust = f"printed metric, cache read-only, tripwire; containment: own filesystem view, own PIDs, {who}"
    assert s["harness"]["trust"] == trust and s["harness"]["budget"] == 1.0
    assert f"trust: {trust} (farm harness, budget 1 s" in farm("status").stdout


def test_a_worker_node_without_the_view_is_refused_at_placement_unless_accepted(tmp_path, monkeypatch):
    """The pre-flight probes the machine the farm starts on; every worker reports its own node's
    layers (Worker.info), and the placement refuses a node the config did not accept."""
    import worker.sandbox
    from cluster import config
    from cluster.actors.placement import unaccepted_containment
    from worker.actor import Worker
    from worker.sandbox.view import Support
    from worker.settings import WorkerSettings

    monkeypatch.setattr(worker.sandbox, "view_support", lambda: Support(False, None, why="no mount namespace"))
    bare = Worker(WorkerSettings(name="gpu3", work_root=str(tmp_path / "w"), command=["python", "train.py"],
                                 budget=1, grace=1)).info()
    assert bare["containment_missing"] == ["view", "unprivileged"]
    good = {**bare, "node": "node-a", "containment_missing": []}
    bare = {**bare, "node": "node-b"}
    cfg = config.FarmConfig()
    refused = unaccepted_containment(cfg, [good, bare], ["gpu0", "gpu3"])
    assert refused and refused.startswith("containment: runs on node-b (gpu3) would lack view and unprivileged "
                                          "(no mount namespace)"), refused
    assert 'train.accept_missing = ["view", "unprivileged"]' in refused
    accepting = config.from_dict({"train": {"accept_missing": ["view", "unprivileged"]}})
    assert unaccepted_containment(accepting, [good, bare], ["gpu0", "gpu3"]) is None
    assert unaccepted_containment(cfg, [good, good], ["gpu0", "gpu1"]) is None
