"""The upstream-shaped fixture repository (tests/fixtures/upstream_shape) runs for real on CPU.

Its prepare.py builds the shards and the tokenizer under ~/.cache/autoresearch and its train.py
trains for the harness's TIME_BUDGET, then prints the summary block: the layout the farm must handle
in an unmodified upstream fork. HOME points into tmp so nothing touches the real cache.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from worker import tripwire
from worker.summary import SUMMARY_KEYS, is_valid, parse_summary

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "upstream_shape"
pytestmark = pytest.mark.slow


def fixture_env(home: Path) -> dict[str, str]:
    env = dict(os.environ, HOME=str(home), PYTHONUNBUFFERED="1")
    # one torch thread: on a small machine that is busy elsewhere, OpenMP's spin-waits make a two-thread
    # step 10x slower, and the clock budget would then buy only a handful of steps
    env["OMP_NUM_THREADS"] = "1"
    return env


def run(repo: Path, env: dict[str, str], script: str) -> subprocess.CompletedProcess:
    """Run a fixture script; stdout/stderr decoded as they are (text mode would turn its \\r into \\n)."""
    done = subprocess.run([sys.executable, script], cwd=repo, env=env, capture_output=True, timeout=180)
    done.stdout, done.stderr = done.stdout.decode(), done.stderr.decode()
    return done


def load_harness(repo: Path, home: Path, monkeypatch):
    """The fixture's prepare module, imported with HOME=home (its paths are fixed at import)."""
    monkeypatch.setenv("HOME", str(home))
    spec = importlib.util.spec_from_file_location("upstream_shape_prepare", repo / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_prepare_then_train_prints_a_valid_summary(tmp_path, monkeypatch):
    repo, home = tmp_path / "repo", tmp_path / "home"
    shutil.copytree(FIXTURE, repo)
    home.mkdir()
    env = fixture_env(home)
    harness = load_harness(repo, home, monkeypatch)
    cache = home / ".cache" / "autoresearch"
    assert Path(harness.CACHE_DIR) == cache
    data, tok = Path(harness.DATA_DIR), Path(harness.TOKENIZER_DIR)

    first = run(repo, env, "prepare.py")
    assert first.returncode == 0, first.stdout + first.stderr
    shards = sorted(p.name for p in data.iterdir())
    train_shards = [n for n in shards if n != harness.VAL_FILENAME]
    assert harness.VAL_FILENAME in shards
    assert train_shards and train_shards[0] == "shard_00000.parquet", shards
    assert all(n.startswith("shard_") and n.endswith(".parquet") for n in shards), shards
    assert (tok / "tokenizer.pkl").is_file() and (tok / "token_bytes.pt").is_file()

    before = snapshot(cache)
    second = run(repo, env, "prepare.py")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "already" in second.stdout
    assert snapshot(cache) == before, "a second prepare.py rewrote files"

    trained = run(repo, env, "train.py")
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert "\rstep 00011 " in trained.stdout  # the progress line rewrites itself
    summary = parse_summary(trained.stdout)
    assert is_valid(summary) is None, (is_valid(summary), trained.stdout[-2000:])
    assert list(summary)[: len(SUMMARY_KEYS)] == list(SUMMARY_KEYS)
    assert math.isfinite(summary["val_bpb"]) and 0 < summary["val_bpb"] < 8
    assert harness.TIME_BUDGET <= summary["training_seconds"] < harness.TIME_BUDGET + 5, summary
    assert summary["num_steps"] > 11 and summary["depth"] == 2


def test_the_honest_fixture_passes_the_tripwire_and_seeds_itself():
    source = (FIXTURE / "train.py").read_text()
    assert tripwire.check(source) is None
    assert not tripwire.uses_farm_seed(source)
    assert "torch.manual_seed(42)" in tripwire.seeding_calls(source)
