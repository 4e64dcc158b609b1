"""
Tests for prepare.py, the frozen data/tokenizer/eval harness. Real corpus files, real BPE training,
real token files and a real HTTP server on 127.0.0.1: nothing is mocked.

prepare.py reads its knobs from the environment at import, so each test loads its own instance of the
module with the environment it needs (load_prepare) instead of reloading the shared `prepare` module.
"""
import http.server
import importlib.util
import itertools
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tiktoken.load
import torch

ROOT = Path(__file__).resolve().parents[2]
SEQ_LEN, VOCAB, EVAL_TOKENS = 64, 512, 512

_loaded = itertools.count()

def load_prepare(cache, **env):
    """A fresh prepare module imported with AUTORESEARCH_CACHE=cache and the given AUTORESEARCH_* knobs."""
    env = {"AUTORESEARCH_CACHE": str(cache), "AUTORESEARCH_PROFILE": "cpu", "AUTORESEARCH_SEQ_LEN": str(SEQ_LEN),
           "AUTORESEARCH_VOCAB_SIZE": str(VOCAB), "AUTORESEARCH_EVAL_TOKENS": str(EVAL_TOKENS), **env}
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("AUTORESEARCH_")]:
            mp.delenv(key)
        for key, value in env.items():
            if value is not None:
                mp.setenv(key, value)
        spec = importlib.util.spec_from_file_location(f"prepare_under_test_{next(_loaded)}", ROOT / "prepare.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module

WORDS = ("the of and to in is that for it as with was on be by this are from at or an which not have "
         "model token data train loss layer weight batch learning rate gradient attention vector matrix "
         "river mountain forest ocean city garden window bridge market violin summer winter morning "
         "café naïve über 東京 Москва 🚀 λ").split()

def make_doc(i, rng):
    """Unique opening (so a few tokens identify the document), then random words; every 10th doc is long."""
    paragraphs = []
    for _ in range(4 if i % 10 == 0 else 1):
        paragraphs.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 110))) + ".")
    return f"Document {i} {WORDS[i % len(WORDS)]} {WORDS[i * 7 % len(WORDS)]}: " + "\n\n".join(paragraphs) + "\n"

def write_corpus(folder, n=300, seed=0):
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    docs = {f"doc_{i:03d}.txt": make_doc(i, rng) for i in range(n)}
    for name, text in docs.items():
        (folder / name).write_text(text, encoding="utf-8")
    return docs

@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """One prepared --source corpus shared by the tests below (preparing takes about a second)."""
    tmp = tmp_path_factory.mktemp("prepared")
    source = tmp / "corpus"
    docs = write_corpus(source)
    P = load_prepare(tmp / "cache")
    meta = P.prepare_dataset(source=str(source))
    tok = P.Tokenizer.from_directory(meta["directory"])
    # the documents as token lists, per split, rebuilt from the text (file-level split, chunked files)
    expected = {"train": [], "val": []}
    for key, text in docs.items():
        for chunk in P.split_document(text):
            expected[P.assign_split(key)].append(tok.encode(chunk, prepend=tok.get_bos_token_id()))
    return P, tok, meta, source, docs, expected

def split_rows_at_bos(row, bos):
    starts = [i for i, t in enumerate(row) if t == bos]
    return [row[a:b] for a, b in zip(starts, starts[1:] + [len(row)])]

# ---------------------------------------------------------------------------
# Knobs
# ---------------------------------------------------------------------------

def test_profile_defaults_and_env_overrides(tmp_path):
    cpu = load_prepare(tmp_path, AUTORESEARCH_SEQ_LEN=None, AUTORESEARCH_VOCAB_SIZE=None, AUTORESEARCH_EVAL_TOKENS=None)
    assert (cpu.PROFILE, cpu.MAX_SEQ_LEN, cpu.EVAL_TOKENS, cpu.VOCAB_SIZE) == ("cpu", 256, 2**17, 2048)
    assert cpu.TIME_BUDGET == 300
    assert cpu.DATASET == "offline" and cpu.CACHE_DIR == str(tmp_path)
    assert cpu.seed() == 42  # outside the farm
    gpu = load_prepare(tmp_path, AUTORESEARCH_PROFILE="gpu", AUTORESEARCH_SEQ_LEN=None, AUTORESEARCH_VOCAB_SIZE=None,
                       AUTORESEARCH_EVAL_TOKENS=None)
    assert (gpu.MAX_SEQ_LEN, gpu.EVAL_TOKENS, gpu.VOCAB_SIZE) == (2048, 40 * 524288, 8192)
    custom = load_prepare(tmp_path, AUTORESEARCH_EVAL_TOKENS="1000", AUTORESEARCH_TIME_BUDGET="12.5",
                          AUTORESEARCH_DATASET="climbmix", AUTORESEARCH_SEED="7")
    assert custom.EVAL_TOKENS == 960 and custom.TIME_BUDGET == 12.5 and custom.DATASET == "climbmix"
    assert custom.seed() == 7 and type(custom.seed()) is int
    assert load_prepare(tmp_path, AUTORESEARCH_SEED="0").seed() == 0
    assert custom.tokenized_dir() == str(tmp_path / "tokenized" / f"climbmix-v{VOCAB}")

@pytest.mark.parametrize("name, value", [("AUTORESEARCH_SEQ_LEN", "abc"), ("AUTORESEARCH_PROFILE", "tpu"),
                                         ("AUTORESEARCH_EVAL_TOKENS", "10"), ("AUTORESEARCH_VOCAB_SIZE", "100"),
                                         ("AUTORESEARCH_TIME_BUDGET", "-1"), ("AUTORESEARCH_DATASET", "../x"),
                                         ("AUTORESEARCH_SEED", "-1"), ("AUTORESEARCH_SEED", "1.5"),
                                         ("AUTORESEARCH_SEED", str(2**64))])
def test_bad_env_values_name_the_variable(tmp_path, name, value):
    with pytest.raises(ValueError, match=name):
        load_prepare(tmp_path, **{name: value})

# ---------------------------------------------------------------------------
# Corpora and the split
# ---------------------------------------------------------------------------

def test_stdlib_offline_corpus_is_big_enough(tmp_path):
    P = load_prepare(tmp_path)
    docs = list(P.iter_offline_docs())
    keys = [k for k, _ in docs]
    assert len(docs) > 500 and sum(len(t) for _, t in docs) > 10_000_000
    assert len(set(keys)) == len(keys) and not any("site-packages" in k for k in keys)
    assert "json/decoder.py" in keys and "pydoc_data/topics.py" not in keys  # real code in, generated tables out

def test_source_formats(tmp_path):
    P = load_prepare(tmp_path)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha text")
    (src / "sub" / "b.md").write_text("# beta")
    (src / "c.py").write_text("print('gamma')")
    (src / "d.jsonl").write_text(json.dumps({"text": "delta one"}) + "\n\n" + json.dumps({"text": "delta two"}) + "\n")
    pd.DataFrame({"text": ["epsilon one", "epsilon two"], "id": [1, 2]}).to_parquet(src / "e.parquet")
    (src / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))  # not UTF-8: skipped
    (src / "notes.csv").write_text("ignored")
    (src / ".hidden.txt").write_text("ignored")
    assert list(P.iter_source_docs(str(src))) == [
        ("a.txt", "alpha text"), ("c.py", "print('gamma')"), ("d.jsonl:1", "delta one"), ("d.jsonl:3", "delta two"),
        ("e.parquet:0", "epsilon one"), ("e.parquet:1", "epsilon two"), ("sub/b.md", "# beta")]
    (src / "bad.jsonl").write_text('{"txt": 1}\n')
    with pytest.raises(P.PrepareError, match="bad.jsonl:1"):
        list(P.iter_source_docs(str(src)))

def test_split_document_is_lossless_and_bounded():
    P = load_prepare("/nonexistent")
    text = "\n\n".join(f"paragraph {i} " + "word " * (i * 13 % 50) for i in range(60)) + "\n" + "x" * 2500 + "\nend\n"
    chunks = P.split_document(text, max_chars=300)
    assert "".join(chunks) == text and len(chunks) > 10
    assert all(len(c) <= 300 for c in chunks if "x" * 2500 not in c)  # only the single too-long line exceeds the cap
    assert P.split_document("short", max_chars=300) == ["short"]

def test_split_is_deterministic_and_document_level(prepared):
    P, tok, meta, source, docs, expected = prepared
    first, second = P.collect_documents(str(source)), P.collect_documents(str(source))
    assert first == second
    val = {k for k, s, _ in first if s == "val"}
    train = {k for k, s, _ in first if s == "train"}
    assert val and train and not val & train and val | train == set(docs)
    assert 0.01 < len(val) / len(docs) < 0.15
    # what was tokenized is exactly [BOS] + tokens of each file's chunks, in the file's split, in file order
    for split in ("train", "val"):
        tokens = np.fromfile(os.path.join(meta["directory"], f"{split}.bin"), dtype=np.uint16)
        starts = np.load(os.path.join(meta["directory"], f"{split}_offsets.npy"))
        stored = [tokens[a:b].tolist() for a, b in zip(starts, list(starts[1:]) + [len(tokens)])]
        assert stored == expected[split]
        assert meta["splits"][split]["docs"] == len(stored) and meta["splits"][split]["tokens"] == len(tokens)

# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["Hello world! Numbers: 12345.", "naïve café, 東京 und Москва 🚀 λ→∞",
                                  "def f(x):\n\treturn {'k': [x ** 2 for _ in range(3)]}  # done\n", ""])
def test_tokenizer_round_trip(prepared, text):
    P, tok, *_ = prepared
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode([text, text]) == [tok.encode(text)] * 2

def test_tokenizer_specials_and_files(prepared, monkeypatch):
    P, tok, meta, *_ = prepared
    bos = tok.get_bos_token_id()
    assert tok.get_vocab_size() == VOCAB and bos == VOCAB - 1
    assert tok.encode("hi", prepend=bos) == tok.encode("hi", prepend="<|bos|>") == [bos] + tok.encode("hi")
    assert bos not in tok.encode("text that mentions <|bos|> literally")
    assert tok.decode(torch.tensor([bos] + tok.encode("x"))) == "<|bos|>x"
    # plain files: tiktoken's own loader reads the ranks (caching disabled so it reads this very file)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    ranks = tiktoken.load.load_tiktoken_bpe(os.path.join(meta["directory"], "tokenizer.tiktoken"))
    assert ranks == tok.enc._mergeable_ranks and len(ranks) == VOCAB - 1
    assert json.load(open(os.path.join(meta["directory"], "tokenizer.json")))["special_tokens"] == {"<|bos|>": bos}
    with pytest.raises(FileNotFoundError, match="run `python prepare.py` first"):
        P.Tokenizer.from_directory(os.path.join(meta["directory"], "missing"))

def test_token_bytes(prepared):
    P, tok, meta, *_ = prepared
    token_bytes = P.get_token_bytes(directory=meta["directory"])
    assert token_bytes.dtype == torch.long and token_bytes.shape == (VOCAB,)
    assert token_bytes[tok.get_bos_token_id()] == 0 and (token_bytes[:-1] > 0).all()
    assert token_bytes.tolist()[:-1] == [len(tok.enc.decode_single_token_bytes(i)) for i in range(VOCAB - 1)]
    for text in ["plain ascii", "naïve 東京 🚀", "x = {'a': 1}\n"]:
        assert token_bytes[tok.encode(text, prepend="<|bos|>")].sum().item() == len(text.encode("utf-8"))

# ---------------------------------------------------------------------------
# Dataloader
# ---------------------------------------------------------------------------

def test_pack_rows_best_fit():
    P = load_prepare("/nonexistent")
    docs = [(0, 5), (100, 3), (200, 10), (300, 2)]  # (start, length)
    rows = list(P._pack_rows([(1, docs)], 8, buffer_size=10))
    # row 1: largest fitting doc (5) then the 3 that fills it; row 2: 2 fits, then nothing fits 6 -> crop the 10
    assert rows == [([(0, 5), (100, 3)], 1), ([(300, 2), (200, 6)], 1)]

def test_packing_invariants(prepared):
    P, tok, meta, source, docs, expected = prepared
    bos, B, T = tok.get_bos_token_id(), 4, SEQ_LEN
    train_docs = [tuple(d) for d in expected["train"]]
    val_ngrams = {tuple(d[i:i + 8]) for d in expected["val"] for i in range(len(d) - 7)}
    val_ngrams -= {tuple(d[i:i + 8]) for d in train_docs for i in range(len(d) - 7)}
    assert val_ngrams  # the check below has teeth
    loader = P.make_dataloader(tok, B, T, "train")
    epoch, batches = 1, 0
    while epoch == 1:  # a full pass over the training split
        x, y, epoch = next(loader)
        batches += 1
        assert x.shape == y.shape == (B, T) and x.dtype == y.dtype == torch.long
        assert torch.equal(x[:, 1:], y[:, :-1])
        for row in torch.cat([x, y[:, -1:]], dim=1).tolist():
            assert row[0] == bos
            for segment in split_rows_at_bos(row, bos):  # every segment is the start of a training document
                assert any(d[:len(segment)] == tuple(segment) for d in train_docs), segment
            assert not any(tuple(row[i:i + 8]) in val_ngrams for i in range(len(row) - 7))
    assert batches > 20 and epoch == 2

def test_loader_order_is_deterministic(prepared):
    P, tok, *_ = prepared
    def first_batches(split, seed, n=5):
        return [b for b in itertools.islice(P.make_dataloader(tok, 2, SEQ_LEN, split, seed=seed), n)]
    for split, seed in [("val", 0), ("train", 0), ("train", 3)]:
        a, b = first_batches(split, seed), first_batches(split, seed)
        assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya, _), (xb, yb, _) in zip(a, b))
    x0 = next(P.make_dataloader(tok, 2, SEQ_LEN, "train", seed=0))[0]
    x1 = next(P.make_dataloader(tok, 2, SEQ_LEN, "train", seed=1))[0]
    assert not torch.equal(x0, x1)
    epochs = [e for _, _, e in itertools.islice(P.make_dataloader(tok, 2, SEQ_LEN, "val"), 200)]
    assert epochs == sorted(epochs) and epochs[0] == 1 and epochs[-1] > 2  # passes over the small val split

def test_train_loader_never_opens_val_files(prepared, tmp_path):
    P, tok, meta, *_ = prepared
    only_train = tmp_path / "only-train"
    shutil.copytree(meta["directory"], only_train)
    (only_train / "val.bin").unlink()
    (only_train / "val_offsets.npy").unlink()
    tok2 = P.Tokenizer.from_directory(str(only_train))
    x, y, _ = next(P.make_dataloader(tok2, 2, SEQ_LEN, "train"))
    assert torch.equal(x, next(P.make_dataloader(tok, 2, SEQ_LEN, "train"))[0])
    with pytest.raises(FileNotFoundError):
        P.make_dataloader(tok2, 2, SEQ_LEN, "val")

# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------

class UniformModel(torch.nn.Module):
    """Predicts the uniform distribution over the vocabulary (plus `pad` extra columns that get no
    probability), so every target costs log(V) nats."""

    def __init__(self, vocab_size, pad=0):
        super().__init__()
        self.vocab_size, self.pad = vocab_size, pad
        self.bias = torch.nn.Parameter(torch.cat([torch.zeros(vocab_size), torch.full((pad,), -1e9)]))

    def forward(self, x, targets=None):
        assert targets is None, "the harness asks for logits only"
        return torch.zeros(*x.shape, self.vocab_size + self.pad) + self.bias

class SelfScoringModel(UniformModel):
    """Claims a loss of zero for every target: the old contract let a model report its own loss."""

    def forward(self, x, targets=None, reduction="mean"):
        if targets is not None:
            return torch.zeros(targets.shape)
        return super().forward(x)

@pytest.mark.parametrize("pad", [0, 64])
def test_evaluate_bpb_matches_hand_computation(prepared, pad):
    P, tok, *_ = prepared
    batch_size = 4
    steps = EVAL_TOKENS // (batch_size * SEQ_LEN)
    assert steps == 2
    byte_len = [len(tok.enc.decode_single_token_bytes(i)) for i in range(VOCAB - 1)] + [0]  # independent of prepare
    counted = total_bytes = 0
    for x, y, _ in itertools.islice(P.make_dataloader(tok, batch_size, SEQ_LEN, "val"), steps):
        lengths = [byte_len[t] for t in y.flatten().tolist()]
        counted += sum(n > 0 for n in lengths)
        total_bytes += sum(lengths)
    assert 0 < counted < steps * batch_size * SEQ_LEN  # some targets are BOS and must not count
    model = UniformModel(VOCAB, pad).train()
    bpb = P.evaluate_bpb(model, tok, batch_size)
    assert bpb == pytest.approx(math.log2(VOCAB) * counted / total_bytes, rel=1e-6)  # float32 losses
    assert model.training  # evaluate_bpb leaves the mode alone
    assert P.evaluate_bpb(model, tok, batch_size) == bpb  # deterministic
    # a batch larger than the eval tokens is scored in smaller batches, on the same tokens
    assert P.evaluate_bpb(model, tok, batch_size=16) == pytest.approx(bpb, rel=1e-9)


def test_the_loss_is_computed_by_the_harness_from_logits_not_by_the_model(prepared):
    P, tok, *_ = prepared
    honest = P.evaluate_bpb(UniformModel(VOCAB), tok, 4)
    assert P.evaluate_bpb(SelfScoringModel(VOCAB), tok, 4) == pytest.approx(honest)

    class Flat(torch.nn.Module):  # logits of the wrong shape are an error that says what is expected
        def forward(self, x):
            return torch.zeros(x.numel(), VOCAB)
    with pytest.raises(ValueError, match=rf"must return logits of shape \[B, T, >= {VOCAB}\]"):
        P.evaluate_bpb(Flat(), tok, 4)


def test_target_nats_bounds_memory_by_chunking_without_changing_the_result(prepared, monkeypatch):
    P, tok, *_ = prepared
    x, y, _ = next(P.make_dataloader(tok, 3, SEQ_LEN, "val"))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(VOCAB, VOCAB))
    whole = P.target_nats(model, x, y, VOCAB)
    monkeypatch.setattr(P, "EVAL_CHUNK_ELEMENTS", 1)  # one row at a time
    assert torch.equal(P.target_nats(model, x, y, VOCAB), whole) and whole.shape == y.shape


def test_under_the_farm_evaluate_bpb_hands_the_weights_over_instead_of_reading_val(prepared, tmp_path,
                                                                                    monkeypatch, capsys):
    P, tok, *_ = prepared
    model = UniformModel(VOCAB)
    with torch.no_grad():
        model.bias[:5] = torch.arange(5.0)
    path = tmp_path / "weights.pt"
    monkeypatch.setenv(P.HANDOFF_ENV, str(path))
    monkeypatch.setattr(P, "make_dataloader", lambda *a, **k: pytest.fail("the val split was read"))
    assert math.isnan(P.evaluate_bpb(torch.compile(model), tok, 4))  # a compiled model hands over its module
    saved = torch.load(path, weights_only=True)
    assert saved["format"] == 1 and torch.equal(saved["state_dict"]["bias"], model.bias.detach())
    assert not list(tmp_path.glob("*.tmp")) and "trusted evaluator" in capsys.readouterr().out


def test_default_eval_tokens_are_capped_at_one_pass_of_a_small_val_split(prepared):
    _, _, meta, *_ = prepared
    P = load_prepare(Path(meta["directory"]).parents[1], AUTORESEARCH_EVAL_TOKENS=None)
    available = P.val_pass_tokens(meta["directory"], SEQ_LEN)
    assert P.EVAL_TOKENS > available, "the cpu default asks for more than this tiny split holds"
    assert P.eval_tokens_for(meta["directory"]) == available
    assert P.check_val_split(meta["directory"]) == available  # no error: the cap is the contract

def test_too_small_val_split_is_a_clear_error(prepared, capsys):
    _, _, meta, source, *_ = prepared
    P = load_prepare(Path(meta["directory"]).parents[1], AUTORESEARCH_EVAL_TOKENS=str(10**6))
    with pytest.raises(P.PrepareError, match="lower AUTORESEARCH_EVAL_TOKENS"):
        P.check_val_split(meta["directory"])
    assert P.main(["--source", str(source)]) == 1  # the cached data is reused, the check still fails
    assert "AUTORESEARCH_EVAL_TOKENS" in capsys.readouterr().err

# ---------------------------------------------------------------------------
# Idempotency
# ---------------------------------------------------------------------------

def test_prepare_again_is_a_fast_no_op(prepared):
    P, tok, meta, source, *_ = prepared
    directory = Path(meta["directory"])
    before = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}
    t0 = time.time()
    again = P.prepare_dataset(source=str(source))
    assert again["skipped"] and time.time() - t0 < 2.0
    assert {p.name: p.stat().st_mtime_ns for p in directory.iterdir()} == before
    assert not [p for p in directory.parent.iterdir() if p.name.endswith(".tmp")]
    assert P.main(["--source", str(source)]) == 0  # main: same no-op, then records the default dataset
    assert {p.name: p.stat().st_mtime_ns for p in directory.iterdir()} == before
    fresh = load_prepare(directory.parents[1])
    assert fresh.DATASET == meta["dataset"] == P.source_dataset_name(str(source))
    assert fresh.Tokenizer.from_directory().directory == str(directory)

# ---------------------------------------------------------------------------
# climbmix download
# ---------------------------------------------------------------------------

@pytest.fixture
def shard_server(tmp_path):
    """Serves parquet shards over HTTP on 127.0.0.1; the first request for each file gets a 500."""
    files, requests_seen = {}, []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            name = self.path.rsplit("/", 1)[-1]
            requests_seen.append(name)
            if name not in files or requests_seen.count(name) == 1:
                self.send_error(404 if name not in files else 500)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(files[name])))
            self.end_headers()
            self.wfile.write(files[name])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    rng = random.Random(1)
    for index, first_doc in [(0, 1000), (6542, 2000)]:
        path = tmp_path / f"shard_{index:05d}.parquet"
        n = 200 if index == 0 else 60
        pd.DataFrame({"text": [make_doc(first_doc + i, rng) for i in range(n)]}).to_parquet(path)
        files[path.name] = path.read_bytes()
    yield f"http://127.0.0.1:{server.server_address[1]}/datasets/climbmix/resolve/main", files, requests_seen
    server.shutdown()

def test_climbmix_download_retries_and_prepares(tmp_path, shard_server, monkeypatch):
    url, files, requests_seen = shard_server
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    P = load_prepare(tmp_path / "cache", AUTORESEARCH_CLIMBMIX_URL=url)
    assert P.main(["--dataset", "climbmix", "--num-shards", "1", "--download-workers", "2"]) == 0
    assert sorted(requests_seen) == sorted(2 * list(files))  # each shard: a 500, then a retry that succeeds
    raw = tmp_path / "cache" / "data" / "climbmix"
    assert sorted(p.name for p in raw.iterdir()) == sorted(files)  # renamed into place, no .tmp left behind
    assert all((raw / name).read_bytes() == body for name, body in files.items())
    tok = load_prepare(tmp_path / "cache").Tokenizer.from_directory()  # DATASET now defaults to climbmix
    assert tok.directory == str(tmp_path / "cache" / "tokenized" / f"climbmix-v{VOCAB}")
    val_texts = pd.read_parquet(raw / "shard_06542.parquet")["text"].tolist()
    val = np.fromfile(Path(tok.directory) / "val.bin", dtype=np.uint16).tolist()
    assert val == [t for text in val_texts for t in tok.encode(text, prepend="<|bos|>")]  # the pinned val shard
    n_requests = len(requests_seen)
    assert P.main(["--dataset", "climbmix", "--num-shards", "1"]) == 0 and len(requests_seen) == n_requests

def test_climbmix_unreachable_fails_clearly(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "AUTORESEARCH_CACHE": str(tmp_path), "AUTORESEARCH_CLIMBMIX_URL": f"http://127.0.0.1:{port}",
           "AUTORESEARCH_PROFILE": "cpu", "NO_PROXY": "127.0.0.1"}
    result = subprocess.run([sys.executable, str(ROOT / "prepare.py"), "--dataset", "climbmix", "--num-shards", "1",
                             "--download-attempts", "1"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "could not reach the Hugging Face hub" in result.stderr and "`python prepare.py`" in result.stderr
    assert not list((tmp_path / "data" / "climbmix").glob("*.tmp")) and not (tmp_path / "tokenized").exists()
