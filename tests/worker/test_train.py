"""train.py on CPU for real: the README's two harness commands, NaN fast-fail, determinism and the farm's seed."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from worker.summary import SUMMARY_KEYS, parse_summary

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def harness_env(cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
    # one torch thread: with two, a core busy elsewhere makes OpenMP's spin-waits collapse throughput
    # (10x seen), and the suite must not depend on having the machine to itself
    env.update(AUTORESEARCH_CACHE=str(cache), AUTORESEARCH_DEVICE="cpu", AUTORESEARCH_PROFILE="cpu",
               PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)
    return env


def workdir(tmp: Path, train_source: str | None = None) -> Path:
    d = tmp / "run"
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "prepare.py", d)
    (d / "train.py").write_text(train_source if train_source is not None else (ROOT / "train.py").read_text())
    return d


def run(d: Path, env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=d, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """A small real-text corpus (some of the stdlib's own sources), prepared once for this module."""
    import sysconfig

    tmp = tmp_path_factory.mktemp("small")
    src = tmp / "corpus"
    src.mkdir()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py"))[:80]:
        shutil.copy(path, src / path.name)
    env = harness_env(tmp / "cache", AUTORESEARCH_VOCAB_SIZE="512", AUTORESEARCH_SEQ_LEN="128")
    d = workdir(tmp)
    out = run(d, env, "prepare.py", "--source", str(src))
    assert out.returncode == 0, out.stdout + out.stderr
    return d, env


def losses(stdout: str, constant_lr_only: bool = False) -> list[str]:
    steps = re.findall(r"^step \d+ \| loss (\S+) .*?\| lr x(\S+)", stdout, flags=re.M)
    return [loss for loss, lr in steps if not constant_lr_only or lr == "1.000"]


def untrained_bpb(d: Path, env: dict[str, str]) -> float:
    """val_bpb of the freshly initialised model, computed in this process with train.py's own code."""
    code = (
        "import torch, train, prepare\n"
        "tok = prepare.Tokenizer.from_directory()\n"
        "n = -(-train.DEPTH * train.ASPECT_RATIO // train.HEAD_DIM) * train.HEAD_DIM\n"
        "cfg = train.GPTConfig(prepare.MAX_SEQ_LEN, tok.get_vocab_size(), train.DEPTH, n // train.HEAD_DIM, n,\n"
        "                      train.WINDOW_PATTERN, train.VALUE_EMBEDS, train.LOGIT_SOFTCAP)\n"
        "torch.manual_seed(prepare.seed())\n"
        "m = train.GPT(cfg); m.init_weights(); m.eval()\n"
        "print(prepare.evaluate_bpb(m, tok, train.DEVICE_BATCH_SIZE))\n"
    )
    out = run(d, env, "-c", code)
    assert out.returncode == 0, out.stderr
    return float(out.stdout.strip().splitlines()[-1])


def test_prepare_then_a_30s_train_learns_on_the_offline_default(tmp_path):
    """The README's harness commands on this machine: `python prepare.py`, then a 30 s training run."""
    env = harness_env(tmp_path / "cache")
    d = workdir(tmp_path)
    prep = run(d, env, "prepare.py")
    assert prep.returncode == 0, prep.stdout + prep.stderr
    out = run(d, dict(env, AUTORESEARCH_TIME_BUDGET="30"), "train.py", timeout=180)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = parse_summary(out.stdout)
    assert summary is not None and list(summary)[: len(SUMMARY_KEYS)] == list(SUMMARY_KEYS)
    assert summary["attention"] == "sdpa" and "attention: sdpa (no GPU)" in out.stdout.splitlines()
    assert 30.0 <= summary["training_seconds"] < 40.0
    bpb = summary["val_bpb"]
    before = untrained_bpb(d, env)
    assert math.isfinite(bpb) and bpb < 0.75 * before, (bpb, before)


def test_nan_loss_fails_fast_with_a_nonzero_exit(small_corpus, tmp_path):
    _, env = small_corpus
    source = (ROOT / "train.py").read_text().replace("EMBEDDING_LR = 0.6 ", 'EMBEDDING_LR = float("nan") ')
    assert 'float("nan")' in source
    d = workdir(tmp_path, source)
    out = run(d, dict(env, AUTORESEARCH_TIME_BUDGET="20"), "train.py", timeout=120)
    assert out.returncode != 0
    assert "FAIL" in out.stdout and "diverged" in out.stdout
    assert parse_summary(out.stdout) is None
    assert len(losses(out.stdout)) <= 2, "it stops at the first bad step"


def test_same_seed_gives_the_same_loss_curve_on_cpu(small_corpus, tmp_path):
    _, env = small_corpus
    # the lr schedule follows wall-clock progress, so a machine's load would change it between two
    # runs: hold the lr constant (no warmdown) to compare the seed's effect alone, step by step
    constant = (ROOT / "train.py").read_text().replace("WARMDOWN_RATIO = 0.5 ", "WARMDOWN_RATIO = 0.0 ")
    assert "WARMDOWN_RATIO = 0.0 " in constant
    d = workdir(tmp_path / "constant", constant)
    env = dict(env, AUTORESEARCH_TIME_BUDGET="8")
    first = run(d, env, "train.py", timeout=120)
    second = run(d, env, "train.py", timeout=120)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    a, b = losses(first.stdout, constant_lr_only=True), losses(second.stdout, constant_lr_only=True)
    n = min(len(a), len(b))
    assert n >= 5
    assert a[:n] == b[:n]
    other = run(d, dict(env, AUTORESEARCH_SEED="43"), "train.py", timeout=120)
    assert losses(other.stdout)[:3] != a[:3], "and another seed a different one"


def test_the_farms_seed_decides_the_run_and_another_seed_changes_it(small_corpus, tmp_path):
    """AUTORESEARCH_SEED (prepare.seed()) seeds the initialisation and the data order: two runs with the
    same seed give the same val_bpb, another seed gives another. The harness has no step knob, and a
    time-budgeted run takes as many steps as the machine's load allows, so two runs of one seed would
    differ by timing alone. A budget far below one step's time makes the run step-bounded instead: the
    first step is excluded from the budget (EXCLUDED_STEPS on CPU) and the second spends it, both at the
    full lr (the schedule's progress is 0 until a counted step ends), so every run trains exactly two
    steps and its val_bpb depends on the seed alone."""
    _, env = small_corpus
    d = workdir(tmp_path)
    env = dict(env, AUTORESEARCH_TIME_BUDGET="0.001")
    runs = {}
    for name, seed in [("a", "1"), ("again", "1"), ("b", "2")]:
        out = run(d, dict(env, AUTORESEARCH_SEED=seed), "train.py", timeout=120)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert f"| seed: {seed} |" in out.stdout
        summary = parse_summary(out.stdout)
        assert summary["num_steps"] == 2, "the run is step-bounded"
        runs[name] = summary["val_bpb"], losses(out.stdout)
    assert runs["a"] == runs["again"], "the same seed: the same losses and the same val_bpb"
    assert runs["a"][0] != runs["b"][0], "another seed: another val_bpb"
    assert runs["a"][1][0] != runs["b"][1][0], "and another first loss (initialisation and data order)"


def test_the_gpu_code_path_keeps_one_dtype_under_bf16_autocast():
    """CUDA runs under bf16 autocast with windowed attention and value embeddings; exercise that
    path (masks, value embeddings, both optimizers) on CPU, where bf16 autocast exists too."""
    import torch

    sys.path.insert(0, str(ROOT))
    import train

    cfg = train.GPTConfig(sequence_len=32, vocab_size=64, n_layer=4, n_head=2, n_embd=32, window_pattern="SSSL",
                          value_embeds=True, softcap=15.0)
    model = train.GPT(cfg)
    model.init_weights()
    assert model.windows == [16, 16, 16, 32] and model.ve_layers == [1, 3]
    x = torch.randint(0, 64, (2, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x, x)
        per_token = model(x, x, reduction="none")
    loss.backward()
    assert torch.isfinite(loss) and per_token.shape == (64,)
    assert all(p.grad is not None for n, p in model.named_parameters() if "value_embeds" not in n or "1" in n)
    for opt in train.build_optimizers(model):
        opt.step()
