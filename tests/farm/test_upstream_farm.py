"""An upstream-shaped fork researched with zero configuration: `autoresearch-farm run --repo FORK`,
no config file, on CPU (tests/fixtures/upstream_shape: karpathy/autoresearch's shape, a 4 s
TIME_BUDGET, a cache hard-coded under ``~``, which the test points at a temporary home)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.farmkit import git

pytestmark = pytest.mark.slow
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "upstream_shape"


def farm(*args: str, cwd: Path, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_an_upstream_fork_runs_with_no_config_at_the_strongest_trust_its_harness_allows(tmp_path):
    fork = tmp_path / "fork"
    shutil.copytree(FIXTURE, fork)
    git(fork, "init", "-q", "-b", "master")
    git(fork, "add", "-A")
    git(fork, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "fork")
    home = tmp_path / "home"
    env = {**os.environ, "HOME": str(home), "OMP_NUM_THREADS": "1"}
    out = farm("run", "--repo", str(fork), "--workers", "2", "--max-experiments", "4", "--tag", "U",
               "--no-dashboard", cwd=fork, env=env)
    said = out.stdout + out.stderr
    print(said)
    assert out.returncode == 0, said
    assert "upstream" in said and "TIME_BUDGET" in said  # the pre-flight said what it found
    assert "trust: trusted-eval" in said
    assert (home / ".cache" / "autoresearch" / "data").is_dir()  # the fork's own cache, where its prepare.py puts it
    assert not (home / ".cache" / "autoresearch-farm").exists()  # the farm's own harness cache is another

    status = json.loads(farm("status", "--repo", str(fork), "--tag", "U", "--json", cwd=fork, env=env).stdout)
    assert status["status"] == "done"
    assert "trusted-eval" in json.dumps(status)
    tsv = farm("results", "--repo", str(fork), "--tag", "U", cwd=fork, env=env).stdout.splitlines()
    rows = [r.split("\t") for r in tsv[1:]]
    assert rows[0][4] == "baseline" and rows[0][3] == "keep" and float(rows[0][1]) > 0, tsv
    assert len(rows) == 5 and sum(r[3] in ("keep", "discard") for r in rows) >= 4, tsv  # candidates scored, not cheats
    assert git(fork, "status", "--porcelain") == ""  # the fork's working tree untouched
