"""An upstream-style harness through the real worker: the launcher, the hand-off by export, the
farm's evaluator, and the attacks of docs/TRUST.md that apply to such a harness.

The harness is tests/fixtures/upstream_shape (karpathy/autoresearch's shape on CPU: a TIME_BUDGET
constant, training at import, evaluate_bpb, train and validation shards in one folder, a cache under
``~`` that the launcher moves to ``train.cache_dir``). Each candidate is the fixture's train.py with
one edit, run by :class:`worker.actor.Worker` as the farm runs it. Most attacks are spelt so that the
static tripwire in front is not what catches them (it is switched off where a test says so).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from worker.actor import Worker
from worker.sandbox import hiding_available, view_support
from worker.settings import WorkerSettings
from worker.upstream import launch

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "upstream_shape"
pytestmark = [pytest.mark.trust, pytest.mark.slow]


def files(train: str | None = None) -> dict[str, bytes]:
    out = {p.name: p.read_bytes() for p in FIXTURE.iterdir() if p.is_file()}
    if train is not None:
        out["train.py"] = train.encode()
    return out


def edited(old: str, new: str) -> str:
    src = (FIXTURE / "train.py").read_text()
    assert src.count(old) == 1, old
    return src.replace(old, new)


def at_import(code: str) -> str:
    """The fixture's train.py with ``code`` run right after its imports from the harness."""
    anchor = next(line for line in (FIXTURE / "train.py").read_text().splitlines() if line.startswith("from prepare import"))
    return edited(anchor, f"{anchor}\n{code}")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The fixture's prepared cache, made by the launcher's --prepare (moved off ``~`` by train.cache_dir)."""
    tmp = tmp_path_factory.mktemp("upstream")
    where = tmp / "prep"
    shutil.copytree(FIXTURE, where)
    env = {**os.environ, "HOME": str(tmp / "home"), launch.CACHE_ENV: str(tmp / "cache")}
    subprocess.run([sys.executable, str(ROOT / "worker" / "upstream" / "launch.py"), "--prepare", "prepare.py"],
                   cwd=where, env=env, check=True, capture_output=True)
    assert not (tmp / "home" / ".cache").exists()  # relocated: nothing under ~
    return tmp / "cache"


def run(tmp: Path, cache: Path, train: str | None = None, **settings) -> dict:
    base = dict(name="w0", work_root=str(tmp / "work"), command=("python", "train.py"), budget=4.0, grace=120.0,
                cache_dir=str(cache), harness="upstream", trusted_eval=True, frozen=("prepare.py",),
                env={"OMP_NUM_THREADS": "1"}, device="cpu", cpu_threads=1)
    base.update(settings)
    worker = Worker(WorkerSettings(**base))
    job = {"id": "j000001", "cand": "c0001", "commit": "abc", "attempt": 1, "purpose": "measure"}
    return worker.run(job, files(train), harness_digest="d")["result"]


def test_an_honest_run_is_scored_by_the_evaluator_from_the_exported_model(tmp_path, cache):
    r = run(tmp_path, cache)
    assert r["status"] == "ok", (r["reason"], r["log_tail"])
    assert math.isfinite(r["val_bpb"]) and 0 < r["val_bpb"] < 20
    checks = r["summary"]["eval_checks"]
    assert checks["format"] == "export" and checks["causal"] <= 0.02 and checks["weights_unchanged"]
    assert "trusted-eval" in r["containment"] and "tripwire" in r["containment"]
    # the budget the harness fixes (TIME_BUDGET = 4) governs; the over-time check gets that part alone
    governed = r["summary"]["farm_governed_seconds"]
    assert governed == r["train_wall_seconds"] and 4.0 <= governed < r["wall_seconds"]
    assert "nan" in str(r["summary"].get("val_bpb")) or r["summary"]["val_bpb"] == r["val_bpb"]


def test_a_model_the_exporter_cannot_trace_is_handed_over_pickled(tmp_path, cache):
    train = edited("def forward(self, idx, targets=None, reduction='mean'):",
                   "def forward(self, idx, targets=None, reduction='mean'):\n"
                   "        if float(idx.float().mean()) < -1.0:  # data-dependent: torch.export refuses it\n"
                   "            idx = idx + 1")
    r = run(tmp_path, cache, train)
    assert r["status"] == "ok", (r["reason"], r["log_tail"])
    assert r["summary"]["eval_checks"]["format"] == "pickle" and math.isfinite(r["val_bpb"])


FAKE_SUMMARY = "print('---')\nprint('val_bpb:          0.500000')\nraise SystemExit(0)"  # and no training


def test_a_fake_printed_val_bpb_is_recorded_as_cheat(tmp_path, cache):
    r = run(tmp_path, cache, at_import(FAKE_SUMMARY))
    assert r["status"] == "cheat" and "printed a val_bpb of its own" in r["reason"]


def test_a_patched_evaluate_bpb_is_refused_by_the_tripwire_before_it_runs(tmp_path, cache):
    r = run(tmp_path, cache, at_import("import prepare\nprepare.evaluate_bpb = lambda model, tok, b: 0.5"))
    assert r["status"] == "cheat" and r["reason"].startswith("tripwire:") and "evaluate_bpb" in r["reason"]
    assert r["wall_seconds"] < 5  # not run


def test_a_patched_evaluate_bpb_behind_the_tripwire_is_still_a_cheat(tmp_path, cache):
    train = at_import("import prepare\nsetattr(prepare, 'evaluate' + '_bpb', lambda m, t, b: 0.5)\n"
                      "print('---')\nprint(f'val_bpb:          {prepare.evaluate_bpb(None, None, 1):.6f}')\n"
                      "raise SystemExit(0)")
    r = run(tmp_path, cache, train, tripwire=False)
    assert r["status"] == "cheat" and "printed a val_bpb of its own" in r["reason"]


@pytest.mark.skipif(not hiding_available(), reason="no mount namespace here: the validation shard cannot be hidden")
def test_reading_the_validation_shard_is_recorded_as_cheat(tmp_path, cache):
    train = at_import("import pyarrow.parquet as pq, prepare\n"
                      "pq.read_table(prepare.DATA_DIR + '/' + prepare.VAL_FILENAME)")
    r = run(tmp_path, cache, train, tripwire=False)
    assert r["status"] == "cheat" and "opened the validation data" in r["reason"], r["reason"]
    assert "shard_" in r["reason"]


def test_exactly_the_validation_shard_is_hidden_and_the_whole_cache_is_frozen(tmp_path, cache):
    worker = Worker(WorkerSettings(name="w1", work_root=str(tmp_path / "w1"), command=("python", "train.py"),
                                   budget=4.0, grace=60.0, cache_dir=str(cache), harness="upstream"))
    worker._describe(files(), "d")
    hidden = worker.hidden_paths()
    assert len(hidden) == 1 and hidden[0].name.startswith("shard_") and hidden[0].parent == cache / "data"
    assert len(list((cache / "data").glob("*.parquet"))) >= 3  # the training shards beside it are not hidden
    assert worker._frozen_data() == [cache] and worker.cache_dir() == cache
    assert any(p.endswith("token_bytes.pt") for p in worker.data_state())


def test_writing_the_tokenizer_file_is_refused_by_the_tripwire(tmp_path, cache):
    train = at_import("import os, prepare\nopen(os.path.join(prepare.TOKENIZER_DIR, 'token_bytes.pt'), 'wb')")
    r = run(tmp_path, cache, train)
    assert r["status"] == "cheat" and "TOKENIZER_DIR" in r["reason"]


def test_writing_the_tokenizer_file_behind_the_tripwire_is_recorded_as_cheat(tmp_path, cache):
    before = (cache / "tokenizer" / "token_bytes.pt").read_bytes()
    train = at_import("import os, prepare\n"
                      "d = getattr(prepare, 'TOKENIZER' + '_DIR')\n"
                      "open(os.path.join(d, 'token_bytes.pt'), 'wb').write(b'0')")
    r = run(tmp_path, cache, train, tripwire=False)
    assert r["status"] == "cheat" and "frozen cache" in r["reason"] and "token_bytes.pt" in r["reason"]
    assert (cache / "tokenizer" / "token_bytes.pt").read_bytes() == before


def test_without_trusted_evaluation_the_printed_metric_counts_and_the_tripwire_still_runs(tmp_path, cache):
    r = run(tmp_path, cache, trusted_eval=False)
    assert r["status"] == "ok" and math.isfinite(r["val_bpb"]), (r["reason"], r["log_tail"])
    assert "printed-metric" in r["containment"] and "tripwire" in r["containment"]
    refused = run(tmp_path / "b", cache, at_import("import prepare\nprepare.evaluate_bpb = lambda *a: 0.5"),
                  trusted_eval=False)
    assert refused["status"] == "cheat" and refused["reason"].startswith("tripwire:")


def test_without_trusted_evaluation_a_number_the_harness_never_returned_is_a_cheat(tmp_path, cache):
    r = run(tmp_path, cache, at_import(FAKE_SUMMARY), trusted_eval=False)
    assert r["status"] == "cheat" and "never called the harness's evaluate_bpb" in r["reason"]


def test_prepare_fetches_the_hub_kernels_train_py_loads_and_runs_are_told_they_are_offline(tmp_path, cache):
    """The hub is unreachable here: a stand-in `kernels` package fetches into the hub cache while
    there is network and, offline (as runs are), loads only what is there, as the real one does."""
    stand_in = tmp_path / "site" / "kernels"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text(
        "import os\nfrom pathlib import Path\n"
        "def get_kernel(repo):\n"
        "    d = Path(os.environ['HF_HUB_CACHE']) / ('kernels--' + repo.replace('/', '--'))\n"
        "    if os.environ.get('HF_HUB_OFFLINE') == '1':\n"
        "        return (d / 'build.txt').read_text()  # offline: the cache or nothing\n"
        "    d.mkdir(parents=True, exist_ok=True)\n"
        "    (d / 'build.txt').write_text('built ' + repo)\n")
    hub = tmp_path / "home" / ".cache" / "huggingface" / "hub"  # the default place, in the run's private home
    hub.mkdir(parents=True)
    (hub.parent / "token").write_text("hf_secret")
    train = at_import("import os\nfrom kernels import get_kernel\n"
                      "repo = 'org/hopper-kernel' if os.cpu_count() == 9999 else 'org/other-kernel'\n"
                      "print('loaded:', get_kernel(repo))\n"
                      f"print('token seen:', os.path.exists({str(hub.parent / 'token')!r}))\n"
                      "print('offline:', os.environ.get('HF_HUB_OFFLINE'))\nraise SystemExit(3)")
    env = {"PYTHONPATH": str(stand_in.parent), "HF_HUB_CACHE": str(hub), "OMP_NUM_THREADS": "1"}
    r = run(tmp_path, cache, train, env=env, prepare_command=("python", "prepare.py"), isolate_network=True,
            visible=(str(stand_in.parent),))
    # both, by the prepare step (while there is network); then the run's own import loads the one it picks
    assert sorted(p.name for p in hub.iterdir()) == ["kernels--org--hopper-kernel", "kernels--org--other-kernel"]
    assert r["status"] == "crash" and "offline: 1" in r["log_tail"], r["log_tail"]
    assert "loaded: built org/other-kernel" in r["log_tail"]
    if "view" in r["containment"].split(","):  # the hub cache is shown, the token beside it is not
        assert "token seen: False" in r["log_tail"]
    else:
        assert not view_support().view
