"""A metric the candidate cannot fake: the worker's trusted evaluation, end to end on real CPU runs.

Each test runs a candidate train.py through the real Worker (sandbox, hidden validation split,
handoff of the weights, the separate evaluator process) on a small prepared corpus, and checks
the status and reason the farm records. The cheating candidates are written the way a patch
might try it; several use dynamic spellings on purpose, so that the layer under test is the one
that catches them and not the static tripwire in front of it.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from tests.worker.corpus import KNOBS, small_cache
from worker.actor import Worker
from worker.sandbox import hiding_available
from worker.sandbox.view import Support
from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.trust


TINY = '''
import torch
import torch.nn as nn
import torch.nn.functional as F
from prepare import Tokenizer, evaluate_bpb


class Bigram(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)

    def forward(self, idx, targets=None):
        logits = self.table(idx)
        # FORWARD
        return logits


def build_model(vocab_size):
    return Bigram(vocab_size)


def main():
    tok = Tokenizer.from_directory()
    torch.manual_seed(0)
    model = build_model(tok.get_vocab_size())
    # TRAIN
    val_bpb = evaluate_bpb(model, tok, 8)
    print("---")
    print(f"val_bpb:          {val_bpb:.6f}")
    print("training_seconds: 1.0")


if __name__ == "__main__":
    main()
'''


def tiny(**parts: str) -> str:
    src = TINY
    for marker, code in parts.items():
        src = src.replace(f"# {marker.upper()}", code)
    return src


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A small prepared corpus (80 stdlib files, vocab 512), as the workers' data cache."""
    return small_cache(tmp_path_factory.mktemp("trust"))


def run(tmp: Path, cache: Path, train_source: str, budget: float = 2.0, **settings) -> dict:
    w = Worker(WorkerSettings(**{"name": "w0", "work_root": str(tmp / "work"), "command": ["python", "train.py"],
                                 "prepare_command": [], "budget": budget, "grace": 120.0, "cache_dir": str(cache),
                                 "isolate_network": False, "env": dict(KNOBS), "cpu_threads": 1, "device": "cpu",
                                 "frozen": ["prepare.py"], "trusted_eval": True, **settings}))
    files = {"train.py": train_source.encode(), "prepare.py": (ROOT / "prepare.py").read_bytes()}
    job = {"id": "j1", "cand": "c1", "commit": "abc", "attempt": 1, "purpose": "measure"}
    out = w.run(job, files, harness_digest="d")
    assert not list((tmp / "work" / "w0" / "handoff").glob("*")), "the handed-over weights are removed"
    return out["result"] | {"log": out["log"]}


def test_an_honest_tiny_candidate_is_scored_by_the_evaluator(tmp_path, cache):
    r = run(tmp_path, cache, tiny())
    assert r["status"] == "ok", r["reason"] + r["log"][-2000:]
    # an untrained bigram scores about log2(512) bits per token, i.e. a few bits per byte
    assert 1.0 < r["val_bpb"] < 9.0
    assert "val_bpb:          nan" in r["log"], "the training process itself could not score"
    assert r["log"].rstrip().endswith(f"=== farm verdict: ok val_bpb={r['val_bpb']} (trusted evaluation) '' ===")
    assert "trusted-eval" in r["containment"]
    checks = r["summary"]["eval_checks"]
    assert checks["causal"] == 0.0 and checks["stateless"] == 0.0 and checks["weights_unchanged"]
    assert r["train_wall_seconds"] is not None and r["wall_seconds"] > r["train_wall_seconds"]


def test_the_real_train_py_trains_and_the_evaluator_scores_it(tmp_path, cache):
    r = run(tmp_path, cache, (ROOT / "train.py").read_text(), budget=3.0)
    assert r["status"] == "ok", r["reason"] + r["log"][-3000:]
    untrained = run(tmp_path / "u", cache, (ROOT / "train.py").read_text().replace(
        "        if step > EXCLUDED_STEPS and training_time >= TIME_BUDGET:", "        if True:"), budget=3.0)
    assert untrained["status"] == "ok", untrained["reason"]
    assert r["val_bpb"] < untrained["val_bpb"], "training for the budget beats one step"
    if hiding_available():
        assert "hidden" in r["containment"]


def test_a_fake_printed_val_bpb_is_recorded_as_cheat(tmp_path, cache):
    fake = tiny(train='print("---"); print("val_bpb:          0.500000"); return')
    r = run(tmp_path, cache, fake)
    assert r["status"] == "cheat" and "printed a val_bpb of its own (0.5)" in r["reason"]
    assert r["val_bpb"] is None


def test_monkeypatching_evaluate_bpb_in_the_training_process_is_recorded_as_cheat(tmp_path, cache):
    patched = tiny(train='h = __import__("pre" + "pare")\n'
                         '    setattr(h, "evaluate_bpb", lambda *a: 0.42)\n'
                         '    print("---"); print(f"val_bpb: {getattr(h, \'evaluate_bpb\')(model, tok, 8)}"); return')
    assert "computed name" in run(tmp_path / "t", cache, patched)["reason"], "the tripwire sees the spelling..."
    r = run(tmp_path, cache, patched, tripwire=False)  # ...and behind it, the printed number gives it away
    assert r["status"] == "cheat" and "printed a val_bpb of its own (0.42)" in r["reason"]


def test_patching_the_harness_inside_the_evaluator_is_recorded_as_cheat(tmp_path, cache):
    # module-level code runs in the evaluator too; here it replaces the loss the harness computes
    src = tiny() + ('\nif __name__ != "__main__":\n'
                    '    setattr(__import__("pre" + "pare"), "target_nats", lambda m, x, y, v: torch.zeros(y.shape))\n')
    r = run(tmp_path, cache, src, tripwire=False)
    assert r["status"] == "cheat" and "importing train.py changed the harness: prepare.target_nats" in r["reason"]


def test_a_model_that_looks_at_the_tokens_it_predicts_is_recorded_as_cheat(tmp_path, cache):
    peek = tiny(forward="logits = 30.0 * F.one_hot(torch.roll(idx, -1, dims=1), logits.size(-1)).float()")
    r = run(tmp_path, cache, peek)
    assert r["status"] == "cheat" and "look ahead" in r["reason"], r["reason"]
    assert r["summary"]["eval_checks"]["causal"] > 1.0


def test_a_model_that_changes_while_it_is_evaluated_is_recorded_as_cheat(tmp_path, cache):
    learner = tiny(forward="self.table.weight.data[idx[:, :-1], idx[:, 1:]] += 1.0")
    r = run(tmp_path, cache, learner)
    assert r["status"] == "cheat" and "changed while being evaluated" in r["reason"], r["reason"]


@pytest.mark.skipif(not hiding_available(), reason="no mount namespace here: the validation split cannot be hidden")
def test_reading_the_validation_split_during_training_is_recorded_as_cheat(tmp_path, cache):
    reader = tiny(train='import glob, os\n'
                        '    root = os.environ.get("AUTORESEARCH_" + "CACHE")\n'
                        '    data = [open(p, "rb").read() for p in glob.glob(os.path.join(root, "tokenized", "*", "v" + "al.bin"))]\n'
                        '    print("read", [len(d) for d in data])')
    r = run(tmp_path, cache, reader, tripwire=False)
    assert "read [0]" in r["log"], "the training process saw an empty file"
    assert r["status"] == "cheat" and "opened the validation data during training" in r["reason"]
    assert "val.bin" in r["reason"]
    assert list(cache.glob("tokenized/*/val.bin"))[0].stat().st_size > 0, "the real split is untouched"


def test_the_tripwire_refuses_an_obvious_monkeypatch_before_running_it(tmp_path, cache):
    src = tiny(train="import prepare\n    prepare.evaluate_bpb = lambda *a: 0.1")
    r = run(tmp_path, cache, src)
    assert r["status"] == "cheat" and r["reason"].startswith("tripwire:") and "evaluate_bpb" in r["reason"]
    assert r["train_wall_seconds"] == 0.0 and "not run" in r["log"]


def test_weights_that_were_never_handed_over_are_a_missing_metric(tmp_path, cache):
    src = tiny(train='print("---"); print("val_bpb: nan"); return')
    r = run(tmp_path, cache, src)
    assert r["status"] == "no-metric" and "weights were not handed over" in r["reason"]


def test_without_trusted_evaluation_the_printed_number_is_used(tmp_path, cache):
    # the switch for training commands that are not this harness (train.trusted_eval = false)
    r = run(tmp_path, cache, tiny(train='print("---"); print("val_bpb:          0.500000"); return'),
            trusted_eval=False)
    assert r["status"] == "ok" and r["val_bpb"] == 0.5 and "trusted-eval" not in r["containment"]
    assert not math.isnan(r["val_bpb"])


WRITER = tiny(train='import glob, os\n'
                    '    root = os.environ.get("AUTORESEARCH_" + "CACHE")\n'
                    '    for p in glob.glob(os.path.join(root, "tokenized", "*", "train.bin")):\n'
                    '        try:\n'
                    '            open(p, "r+b").write(b"\\0\\0")\n'
                    '            print("wrote", p)\n'
                    '        except OSError as e:\n'
                    '            print("refused", type(e).__name__)')


@pytest.mark.skipif(not hiding_available(), reason="no mount namespace here: the data cannot be made read-only")
def test_the_prepared_data_is_read_only_to_a_run(tmp_path, cache):
    before = {p: p.read_bytes()[:64] for p in cache.glob("tokenized/*/train.bin")}
    r = run(tmp_path, cache, WRITER, tripwire=False)
    assert "refused" in r["log"] and "wrote" not in r["log"]
    assert r["status"] == "ok" and "read-only" in r["containment"], r["reason"]
    assert {p: p.read_bytes()[:64] for p in cache.glob("tokenized/*/train.bin")} == before


def test_a_run_that_changes_the_prepared_data_is_recorded_as_cheat(tmp_path, cache, monkeypatch):
    # where no mount namespace makes the data read-only, the worker's before/after check catches it
    import worker.sandbox

    own = tmp_path / "cache"
    shutil.copytree(cache, own)  # this test damages its data
    monkeypatch.setattr(worker.sandbox, "hiding_available", lambda: None)
    monkeypatch.setattr(worker.sandbox, "view_support", lambda: Support(False, None, why="forced off"))
    r = run(tmp_path, own, WRITER, tripwire=False)
    assert "wrote" in r["log"]
    assert r["status"] == "cheat" and r["reason"].startswith("changed the prepared data (")
    assert "train.bin" in r["reason"] and "prepare.py --force" in r["reason"]
