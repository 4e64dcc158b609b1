"""
Frozen harness for autoresearch: constants, data, tokenizer, dataloader, evaluation.

train.py (the file candidates edit) imports this module; candidates never change it,
so every candidate trains on the same tokens and is scored by the same metric,
val_bpb (validation bits per byte, lower is better).

    python prepare.py                      # offline default: the Python stdlib's own source, no network
    python prepare.py --source DIR         # your .txt/.md/.py files, .jsonl ("text" field), .parquet ("text")
    python prepare.py --dataset climbmix   # karpathy/climbmix-400b-shuffle shards from the Hugging Face hub
    python prepare.py --force              # rebuild even though the cache is complete

Knobs, read once at import from the environment; the profile only changes defaults.

| variable                  | default (gpu / cpu profile)       | meaning                                      |
|---------------------------|-----------------------------------|----------------------------------------------|
| AUTORESEARCH_PROFILE      | gpu with CUDA, else cpu           | PROFILE: which column of defaults applies    |
| AUTORESEARCH_SEQ_LEN      | 2048 / 256                        | MAX_SEQ_LEN: tokens per row, train and eval  |
| AUTORESEARCH_TIME_BUDGET  | 300 / 300                         | TIME_BUDGET: training wall-clock seconds     |
| AUTORESEARCH_SEED         | 42 / 42                           | seed(): the run's random seed; the farm sets |
|                           |                                   | a new one for every measurement              |
| AUTORESEARCH_EVAL_TOKENS  | 40*524288 / 2**17                 | EVAL_TOKENS: val tokens scored (rounded down |
|                           |                                   | to a multiple of MAX_SEQ_LEN)                |
| AUTORESEARCH_VOCAB_SIZE   | 8192 / 2048                       | VOCAB_SIZE: BPE vocab incl. the BOS token    |
| AUTORESEARCH_CACHE        | $XDG_CACHE_HOME/autoresearch-farm,| CACHE_DIR: downloads, tokenizer, token files |
|                           | else ~/.cache/autoresearch-farm   | (not upstream's ~/.cache/autoresearch)       |
| AUTORESEARCH_DATASET      | the last dataset prepared, else   | DATASET: the prepared data train.py reads:   |
|                           | offline                           | offline, climbmix or source-<hash>           |
| AUTORESEARCH_CLIMBMIX_URL | the Hugging Face hub              | where climbmix shards are downloaded from    |

Prepared data lives in CACHE_DIR/tokenized/<dataset>-v<vocab>/: tokenizer.tiktoken (tiktoken's
base64 ranks format), tokenizer.json, token_bytes.npy, {train,val}.bin (flat uint16 tokens, each
document is [BOS] + tokens), {train,val}_offsets.npy (int64 document starts) and meta.json.
Raw downloads (climbmix) and corpus copies (offline, --source) live in CACHE_DIR/data/<dataset>/.
"""

import argparse
import base64
import bisect
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import sys
import sysconfig
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import requests
import rustbpe
import tiktoken
import torch

# ---------------------------------------------------------------------------
# Knobs (environment) and fixed constants
# ---------------------------------------------------------------------------

def _env(name, default, parse, ok, expected):
    """Read one AUTORESEARCH_* variable; a bad value is a ValueError that names it."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise ValueError(f"{name}={raw!r} is invalid: expected {expected}")
    return value

def _read_text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()

_DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # dataset names become directory names
_positive_int = (int, lambda v: v >= 1, "an integer >= 1")

# which column of defaults applies: the GPU numbers are the original autoresearch's
PROFILE = _env("AUTORESEARCH_PROFILE", "gpu" if torch.cuda.is_available() else "cpu",
               str, lambda v: v in ("gpu", "cpu"), "'gpu' or 'cpu'")
_GPU = PROFILE == "gpu"
# tokens per training/eval row: the context length the model is trained and scored at
MAX_SEQ_LEN = _env("AUTORESEARCH_SEQ_LEN", 2048 if _GPU else 256, *_positive_int)
# training wall-clock budget in seconds; train.py stops stepping once it is spent
TIME_BUDGET = _env("AUTORESEARCH_TIME_BUDGET", 300.0, float, lambda v: math.isfinite(v) and v > 0, "seconds > 0")
# the run's random seed, read through seed(): the farm assigns one to every measurement (42 outside the farm)
_SEED = _env("AUTORESEARCH_SEED", 42, int, lambda v: 0 <= v < 2**63, "an integer in [0, 2**63)")
# validation tokens evaluate_bpb scores; whole rows only, so rounded down to a multiple of MAX_SEQ_LEN
# (the default is capped at one pass over a small val split, e.g. the offline corpus at 2048 tokens a row;
# an explicit AUTORESEARCH_EVAL_TOKENS larger than the split is an error instead)
_EVAL_TOKENS_EXPLICIT = bool(os.environ.get("AUTORESEARCH_EVAL_TOKENS", "").strip())
_eval_tokens = _env("AUTORESEARCH_EVAL_TOKENS", 40 * 524288 if _GPU else 2**17, *_positive_int)
EVAL_TOKENS = _eval_tokens // MAX_SEQ_LEN * MAX_SEQ_LEN
if EVAL_TOKENS < MAX_SEQ_LEN:
    raise ValueError(f"AUTORESEARCH_EVAL_TOKENS={_eval_tokens} is less than one row of MAX_SEQ_LEN={MAX_SEQ_LEN}")
# BPE vocabulary size including special tokens: 256 byte tokens + merges + <|bos|>
VOCAB_SIZE = _env("AUTORESEARCH_VOCAB_SIZE", 8192 if _GPU else 2048,
                  int, lambda v: 257 <= v <= 2**31, "an integer in [257, 2**31]")
# root of everything prepare.py writes; not upstream autoresearch's ~/.cache/autoresearch, whose files have
# other formats under the same names (a fork researched on the same machine keeps its cache)
CACHE_DIR = os.path.abspath(os.path.expanduser(
    os.environ.get("AUTORESEARCH_CACHE", "").strip()
    or os.path.join(os.environ.get("XDG_CACHE_HOME", "").strip() or "~/.cache", "autoresearch-farm")))
# where climbmix shards come from (overridable so tests can serve shards from 127.0.0.1)
CLIMBMIX_URL = (os.environ.get("AUTORESEARCH_CLIMBMIX_URL", "").strip()
                or "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main")

def _default_dataset():
    path = os.path.join(CACHE_DIR, "default_dataset")  # written by the last successful `python prepare.py`
    name = _read_text(path).strip() if os.path.isfile(path) else "offline"
    if not _DATASET_NAME.fullmatch(name):
        raise ValueError(f"{path} holds an invalid dataset name {name!r}: delete it or rerun `python prepare.py`")
    return name

# which prepared dataset train.py reads
DATASET = _env("AUTORESEARCH_DATASET", None, str, _DATASET_NAME.fullmatch,
               "a dataset name such as offline, climbmix or source-1a2b3c4d") or _default_dataset()

MAX_SHARD = 6542          # climbmix's last shard is shard_06542.parquet
VAL_SHARD = MAX_SHARD     # pinned validation shard, as in the original autoresearch
VAL_FRACTION = 0.05       # offline/source: share of files held out; at 0.02 the stdlib's val split would
                          # fall short of EVAL_TOKENS=2**17 per pass at MAX_SEQ_LEN=256
DOC_CHARS = 1000          # offline/source files are cut at blank lines into documents of at most this many
                          # chars; whole files would fill a 256-token row with one file's license header
                          # and crop the rest away (an epoch would use ~4% of the stdlib's tokens)
MAX_FILE_BYTES = 500_000  # larger stdlib files are generated tables (pydoc topics), not prose or code
TOKENIZER_MAX_CHARS = 1_000_000_000  # BPE trains on at most this many chars of the training split
TOKENIZER_DOC_CHARS = 10_000         # ... and at most this many per document, so no single doc dominates
# GPT-4's split regex with \p{N}{1,2} instead of {1,3}, as in nanochat and autoresearch
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
BOS_TOKEN = "<|bos|>"     # starts every document; the only special token
SPECIAL_TOKENS = [BOS_TOKEN]
FORMAT_VERSION = 1        # bump when the on-disk layout changes, so old caches are rebuilt

def seed() -> int:
    """The random seed of this run (AUTORESEARCH_SEED, default 42): train.py seeds torch, CUDA and its
    train dataloader with it, so each of the farm's measurements is an independent draw."""
    return _SEED

class PrepareError(RuntimeError):
    """A problem the user must fix (no network, too little data); main() prints it and exits 1."""

def _quiet(msg):
    pass

# ---------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------

def tokenized_dir(dataset=None, vocab_size=None, cache_dir=None):
    """Directory holding the tokenizer and token files of one dataset at one vocab size."""
    return os.path.join(cache_dir or CACHE_DIR, "tokenized", f"{dataset or DATASET}-v{vocab_size or VOCAB_SIZE}")

def data_dir(dataset, cache_dir=None):
    """Directory holding raw downloads (climbmix) or the corpus copy (offline/source)."""
    return os.path.join(cache_dir or CACHE_DIR, "data", dataset)

def source_dataset_name(source):
    """Caches of different --source folders must not collide: name them by their resolved path."""
    return "source-" + hashlib.sha256(os.path.realpath(source).encode()).hexdigest()[:8]

# ---------------------------------------------------------------------------
# Documents: stdlib source, a --source folder, or climbmix shards
# ---------------------------------------------------------------------------

_GENERATED = re.compile(r"auto-?generated|generated (?:by|from)[^\n]*\b\w+\.py\b|do not edit", re.IGNORECASE)

def iter_offline_docs(root=None):
    """Yield (relative path, text) for each usable .py file of the Python standard library."""
    root = root or sysconfig.get_paths()["stdlib"]
    for dirpath, dirnames, filenames in os.walk(root):
        in_tests = bool({"test", "tests", "idle_test"} & set(os.path.relpath(dirpath, root).split(os.sep)))
        # test fixture folders (tokenizedata, zipdata01, ...) hold deliberately broken or binary-ish files
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__")
                             and not d.startswith(".") and not (in_tests and re.search(r"data\d*$", d)))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if not name.endswith(".py") or os.path.getsize(path) > MAX_FILE_BYTES:
                continue
            try:
                text = _read_text(path)
            except (UnicodeDecodeError, OSError):
                continue  # e.g. test files in latin-1 or koi8-r on purpose
            if text.strip() and not _GENERATED.search(text[:1000]):  # codec tables, token.py, ...
                yield os.path.relpath(path, root).replace(os.sep, "/"), text

def iter_source_docs(source):
    """Yield (key, text): one doc per .txt/.md/.py file, per .jsonl line ("text"), per .parquet row ("text")."""
    root = os.path.realpath(source)
    if not os.path.isdir(root):
        raise PrepareError(f"--source {source!r} is not a directory")
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(n for n in filenames if not n.startswith(".")):
            path = os.path.join(dirpath, name)
            key, ext = os.path.relpath(path, root).replace(os.sep, "/"), os.path.splitext(name)[1].lower()
            if ext in (".txt", ".md", ".py"):
                try:
                    yield key, _read_text(path)
                except UnicodeDecodeError:
                    continue
            elif ext == ".jsonl":
                with open(path, encoding="utf-8") as f:
                    lines = f.readlines()
                for lineno, line in enumerate(lines, 1):
                    if line.strip():
                        try:
                            text = json.loads(line)["text"]
                        except (ValueError, KeyError, TypeError):
                            text = None
                        if not isinstance(text, str):
                            raise PrepareError(f"{path}:{lineno}: expected a JSON object with a string 'text' field")
                        yield f"{key}:{lineno}", text
            elif ext == ".parquet":
                yield from ((f"{key}:{i}", t) for i, t in enumerate(_parquet_texts([path], keep_empty=True)))

def _parquet_texts(paths, keep_empty=False):
    for path in paths:
        pf = pq.ParquetFile(path)
        if "text" not in pf.schema_arrow.names:
            raise PrepareError(f"{path} has no 'text' column (columns: {pf.schema_arrow.names})")
        for batch in pf.iter_batches(columns=["text"], batch_size=1024):
            for text in batch.column(0).to_pylist():
                if keep_empty or text:
                    yield text or ""

def assign_split(key, val_fraction=VAL_FRACTION):
    """'val' iff sha256(key) falls in the first val_fraction of hash space: stable across runs and machines."""
    h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    return "val" if h < val_fraction * 2**64 else "train"

def split_document(text, max_chars=DOC_CHARS):
    """Cut text into pieces of at most max_chars at blank lines (else at line ends); "".join(pieces) == text."""
    if len(text) <= max_chars:
        return [text]
    pieces = []
    for para in re.split(r"(?<=\n\n)", text):
        pieces.extend(para.splitlines(keepends=True) if len(para) > max_chars else [para])
    chunks, current = [], ""
    for piece in pieces:  # a single line longer than max_chars stays whole; the loader crops it
        if current and len(current) + len(piece) > max_chars:
            chunks.append(current)
            current = ""
        current += piece
    return chunks + [current] if current else chunks

def collect_documents(source=None):
    """[(key, split, text)] for the offline corpus (source=None) or a --source folder, in a fixed order."""
    docs = iter_source_docs(source) if source else iter_offline_docs()
    return [(key, assign_split(key), text) for key, text in docs if text.strip()]

# ---------------------------------------------------------------------------
# climbmix download
# ---------------------------------------------------------------------------

def download_shard(index, dest_dir, base_url=None, attempts=5, backoff=1.0, log=_quiet):
    """Fetch shard_{index:05d}.parquet into dest_dir unless present; retry with exponential backoff."""
    filename = f"shard_{index:05d}.parquet"
    path = os.path.join(dest_dir, filename)
    if os.path.exists(path):
        return path
    url = f"{(base_url or CLIMBMIX_URL).rstrip('/')}/{filename}"
    for attempt in range(1, attempts + 1):
        fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=filename + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f, requests.get(url, stream=True, timeout=30) as response:
                response.raise_for_status()
                for chunk in response.iter_content(chunk_size=1 << 20):
                    f.write(chunk)
            pq.read_metadata(tmp)  # an error page or a truncated body is not a parquet file
            os.replace(tmp, path)  # atomic: readers see the whole shard or none
            return path
        except (requests.RequestException, OSError, pa.ArrowException) as e:
            cause = getattr(e.args[0], "reason", e) if e.args else e  # urllib3 wraps the real cause
            reason = f"{type(cause).__name__}: {cause}"[:300]
            log(f"  {filename}: attempt {attempt}/{attempts} failed: {reason}")
            if attempt == attempts:
                raise PrepareError(f"{url}: {reason}") from e
            time.sleep(backoff * 2 ** (attempt - 1))
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

def download_climbmix(num_shards, dest_dir, base_url=None, workers=8, attempts=5, backoff=1.0, log=_quiet):
    """Download training shards 0..num_shards-1 plus the pinned validation shard; return their paths."""
    os.makedirs(dest_dir, exist_ok=True)
    ids = list(range(min(num_shards, MAX_SHARD)))
    ids.append(VAL_SHARD)
    def fetch(i):
        try:
            return download_shard(i, dest_dir, base_url, attempts, backoff, log), None
        except PrepareError as e:
            return None, e
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(ids)))) as pool:
        results = list(pool.map(fetch, ids))
    errors = [e for _, e in results if e is not None]
    if errors:
        raise PrepareError(f"could not reach the Hugging Face hub: {len(errors)} of {len(ids)} climbmix shards "
                           f"failed to download ({errors[0]}). `python prepare.py` (the offline default) works "
                           f"without network.")
    return [p for p, _ in results]

# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------

def train_tokenizer(texts, vocab_size, max_chars=TOKENIZER_MAX_CHARS):
    """Train byte-level BPE with rustbpe on a capped sample of texts; return tiktoken mergeable ranks."""
    def sample():
        total = 0
        for text in texts:
            yield text[:TOKENIZER_DOC_CHARS]
            total += min(len(text), TOKENIZER_DOC_CHARS)
            if total >= max_chars:
                return
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(sample(), vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
    ranks = {bytes(token): rank for token, rank in bpe.get_mergeable_ranks()}
    if len(ranks) != vocab_size - len(SPECIAL_TOKENS):
        raise PrepareError(f"the training text only supports {len(ranks) + len(SPECIAL_TOKENS)} tokens, "
                           f"not vocab size {vocab_size}: add data or lower the vocab size")
    assert sorted(ranks.values()) == list(range(len(ranks))), "rustbpe ranks must be 0..n-1"
    return ranks

def _load_ranks(path):
    # tiktoken.load.load_tiktoken_bpe reads this format too, but caches files by path in /tmp,
    # so after --force it could hand back a stale tokenizer: parse the (trivial) format ourselves
    with open(path, "rb") as f:
        return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in f if line.strip())}

class Tokenizer:
    """BPE tokenizer (a tiktoken.Encoding) plus the directory it was loaded from, where the token files live."""

    def __init__(self, enc, directory=None):
        self.enc = enc
        self.directory = directory
        self.bos_token_id = enc.encode_single_token(BOS_TOKEN)

    @classmethod
    def from_directory(cls, path=None):
        path = path or tokenized_dir()
        config_path = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"no prepared tokenizer at {path}: run `python prepare.py` first "
                                    f"(DATASET={DATASET}, VOCAB_SIZE={VOCAB_SIZE})")
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
        enc = tiktoken.Encoding(name=os.path.basename(os.path.normpath(path)), pat_str=config["pattern"],
                                mergeable_ranks=_load_ranks(os.path.join(path, "tokenizer.tiktoken")),
                                special_tokens=config["special_tokens"], explicit_n_vocab=config["vocab_size"])
        return cls(enc, path)

    def get_vocab_size(self):
        return self.enc.n_vocab

    def get_bos_token_id(self):
        return self.bos_token_id

    def encode(self, text, prepend=None, num_threads=8):
        """str -> list[int]; list[str] -> list[list[int]]. Special-token text in the input stays plain text."""
        if isinstance(prepend, str):
            prepend = self.enc.encode_single_token(prepend)
        if isinstance(text, str):
            ids = self.enc.encode_ordinary(text)
            return ids if prepend is None else [prepend] + ids
        if isinstance(text, (list, tuple)):
            batch = self.enc.encode_ordinary_batch(list(text), num_threads=num_threads)
            return batch if prepend is None else [[prepend] + ids for ids in batch]
        raise TypeError(f"encode expects str or list[str], got {type(text).__name__}")

    def decode(self, ids):
        return self.enc.decode(ids.tolist() if hasattr(ids, "tolist") else list(ids))

def get_token_bytes(device="cpu", directory=None):
    """LongTensor[vocab]: UTF-8 bytes of each token, 0 for special tokens (so they never count in bpb)."""
    path = os.path.join(directory or tokenized_dir(), "token_bytes.npy")
    return torch.from_numpy(np.load(path).astype(np.int64)).to(device)

# ---------------------------------------------------------------------------
# Preparation: tokenize each split into a flat token file, atomically
# ---------------------------------------------------------------------------

def _write_split(enc, texts, dtype, directory, split, num_threads):
    """Write <split>.bin ([BOS] + tokens per document) and <split>_offsets.npy; return counts and hash."""
    bos, starts, n_tokens, sha = enc.encode_single_token(BOS_TOKEN), [], 0, hashlib.sha256()
    texts = iter(texts)
    with open(os.path.join(directory, f"{split}.bin"), "wb") as f:
        while batch := list(itertools.islice(texts, 1024)):
            ids = enc.encode_ordinary_batch(batch, num_threads=num_threads)
            lengths = [len(x) + 1 for x in ids]
            starts.extend(itertools.accumulate(lengths[:-1], initial=n_tokens))
            flat = np.fromiter(itertools.chain.from_iterable(itertools.chain((bos,), x) for x in ids),
                               dtype=dtype, count=sum(lengths))
            f.write(flat.tobytes())
            sha.update(flat.tobytes())
            n_tokens += len(flat)
    if not starts:
        raise PrepareError(f"the {split} split is empty: add data")
    np.save(os.path.join(directory, f"{split}_offsets.npy"), np.asarray(starts, dtype=np.int64))
    return {"docs": len(starts), "tokens": n_tokens, "sha256": sha.hexdigest()}

def _cached_meta(directory, settings):
    """meta.json of a complete cache built with the same settings, else None."""
    try:
        with open(os.path.join(directory, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    files = meta.get("files", {})
    complete = all(os.path.isfile(os.path.join(directory, n)) and os.path.getsize(os.path.join(directory, n)) == s
                   for n, s in files.items())
    return meta if meta.get("settings") == settings and files and complete else None

def _save_tokenizer(directory, ranks, name):
    """Write tokenizer.tiktoken, tokenizer.json and token_bytes.npy (plain files, no pickle); return the Encoding."""
    special = {token: len(ranks) + i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab_size = len(ranks) + len(special)
    with open(os.path.join(directory, "tokenizer.tiktoken"), "wb") as f:  # tiktoken's "<base64 token> <rank>" lines
        f.writelines(base64.b64encode(t) + b" %d\n" % r for t, r in sorted(ranks.items(), key=lambda x: x[1]))
    with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump({"pattern": SPLIT_PATTERN, "special_tokens": special, "vocab_size": vocab_size}, f, indent=1)
    token_bytes = np.zeros(vocab_size, dtype=np.int32)  # special tokens stay 0
    for token, rank in ranks.items():
        token_bytes[rank] = len(token)
    np.save(os.path.join(directory, "token_bytes.npy"), token_bytes)
    return tiktoken.Encoding(name=name, pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=special)

def prepare_dataset(dataset="offline", source=None, vocab_size=None, cache_dir=None, num_shards=10,
                    download_workers=8, download_attempts=5, base_url=None, force=False, log=_quiet):
    """Build CACHE_DIR/tokenized/<dataset>-v<vocab>/ unless it is already complete; return its meta dict."""
    t0 = time.time()
    vocab_size = vocab_size or VOCAB_SIZE
    assert dataset in ("offline", "climbmix"), f"unknown dataset {dataset!r}"
    if source and dataset != "offline":
        raise PrepareError("--source builds its own dataset; it cannot be combined with --dataset climbmix")
    num_shards = MAX_SHARD if num_shards < 0 else num_shards  # -1: every climbmix training shard
    if dataset == "climbmix" and num_shards == 0:
        raise PrepareError("--num-shards must be at least 1: the training split needs a shard")
    name = source_dataset_name(source) if source else dataset
    settings = {"format": FORMAT_VERSION, "dataset": name, "vocab_size": vocab_size,
                "source": os.path.realpath(source) if source else None}
    settings.update({"num_shards": num_shards} if dataset == "climbmix" else
                    {"val_fraction": VAL_FRACTION, "doc_chars": DOC_CHARS})
    final = tokenized_dir(name, vocab_size, cache_dir)
    if not force and (meta := _cached_meta(final, settings)):
        log(f"{final} is complete; nothing to do (--force rebuilds)")
        return {**meta, "directory": final, "skipped": True}

    raw_dir = data_dir(name, cache_dir)
    os.makedirs(raw_dir, exist_ok=True)
    if dataset == "climbmix":
        log(f"downloading {num_shards} training shards + validation shard {VAL_SHARD} into {raw_dir}")
        paths = download_climbmix(num_shards, raw_dir, base_url, download_workers, download_attempts, log=log)
        texts = {"train": lambda: _parquet_texts(paths[:-1]), "val": lambda: _parquet_texts(paths[-1:])}
    else:
        log(f"collecting documents from {source or 'the Python standard library'}")
        docs = collect_documents(source)
        n_val = sum(split == "val" for _, split, _ in docs)
        n_chars = sum(len(text) for _, _, text in docs)
        log(f"  {len(docs)} files, {n_chars / 1e6:.1f}M chars, {n_val} files held out for validation")
        if n_val == 0 or n_val == len(docs):
            raise PrepareError(f"{len(docs)} files give {n_val} validation and {len(docs) - n_val} training files "
                               f"(VAL_FRACTION={VAL_FRACTION}); both splits need some: add files")
        tmp = os.path.join(raw_dir, f"docs.parquet.{os.getpid()}.tmp")
        columns = dict(zip(("key", "split", "text"), map(list, zip(*docs))))
        pq.write_table(pa.table(columns), tmp)  # a copy of exactly what gets tokenized, with each file's split
        os.replace(tmp, os.path.join(raw_dir, "docs.parquet"))
        texts = {s: (lambda s=s: (chunk for _, split, text in docs if split == s for chunk in split_document(text)))
                 for s in ("train", "val")}

    # build everything in a temporary sibling directory, then rename it into place in one step
    os.makedirs(os.path.dirname(final), exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.", suffix=".tmp", dir=os.path.dirname(final))
    try:
        log(f"training a {vocab_size}-token BPE tokenizer on the training split")
        enc = _save_tokenizer(tmp_dir, train_tokenizer(texts["train"](), vocab_size), name)
        dtype = np.uint16 if vocab_size <= 2**16 else np.uint32
        splits = {}
        for split in ("train", "val"):
            log(f"tokenizing the {split} split")
            splits[split] = _write_split(enc, texts[split](), dtype, tmp_dir, split, os.cpu_count() or 1)
        meta = {"format": FORMAT_VERSION, "settings": settings, "dataset": name, "vocab_size": vocab_size,
                "bos_token_id": enc.encode_single_token(BOS_TOKEN), "dtype": np.dtype(dtype).name, "splits": splits,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "seconds": round(time.time() - t0, 2),
                "files": {n: os.path.getsize(os.path.join(tmp_dir, n)) for n in sorted(os.listdir(tmp_dir))}}
        with open(os.path.join(tmp_dir, "meta.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)  # written last: its presence marks a complete cache
        os.chmod(tmp_dir, 0o755)  # mkdtemp makes it private
        if not force and (done := _cached_meta(final, settings)):  # a concurrent prepare finished first
            return {**done, "directory": final, "skipped": False}
        if os.path.exists(final):  # --force, or a cache built with other settings
            os.rename(final, old := f"{final}.old-{os.getpid()}")
            shutil.rmtree(old)
        os.rename(tmp_dir, final)  # atomic: a killed prepare leaves at most a hidden .tmp directory
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return {**meta, "directory": final, "skipped": False}

# ---------------------------------------------------------------------------
# Dataloader: BOS-aligned rows, best-fit packing, no padding
# ---------------------------------------------------------------------------

def _open_split(directory, split):
    """Memory-map one split's tokens; return (tokens, doc starts, doc lengths). Opens only that split's files."""
    with open(os.path.join(directory, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    starts = np.load(os.path.join(directory, f"{split}_offsets.npy"))
    # a plain ndarray view of the memmap: slicing a np.memmap subclass costs microseconds per call
    tokens = np.asarray(np.memmap(os.path.join(directory, f"{split}.bin"), dtype=meta["dtype"], mode="r"))
    assert len(starts) > 0, f"{directory}: the {split} split has no documents"
    return tokens, starts, np.diff(starts, append=len(tokens))

def _pack_rows(epochs, row_capacity, buffer_size):
    """
    Yield (segments, epoch) per row, segments = [(doc start, tokens taken)] filling exactly row_capacity.
    Each row starts at a document's BOS; the rest is filled with the largest buffered document that fits
    whole; when none fits, the shortest is cropped to fill the row and its remainder discarded.
    An epoch's documents are all placed before the next epoch's are read, so epochs never mix in a row
    except the one row that straddles the boundary.
    """
    buffer, seq, row, pos = [], 0, [], 0  # buffer: (length, arrival number, start), sorted by length
    for epoch, docs in epochs:
        docs = iter(docs)
        while True:
            while len(buffer) < buffer_size and (doc := next(docs, None)) is not None:
                bisect.insort(buffer, (doc[1], seq, doc[0]))
                seq += 1
            if not buffer:
                break  # epoch exhausted
            remaining = row_capacity - pos
            i = bisect.bisect_right(buffer, (remaining, math.inf)) - 1  # largest doc with length <= remaining
            length, _, start = buffer.pop(i if i >= 0 else 0)
            take = length if i >= 0 else remaining
            row.append((start, take))
            pos += take
            if pos == row_capacity:
                yield row, epoch
                row, pos = [], 0

def _split_epochs(starts, lengths, split, seed):
    """(epoch, docs) for epoch 1, 2, ...: train reshuffles with seed + epoch, val keeps file order."""
    for epoch in itertools.count(1):
        n = len(starts)
        order = np.arange(n) if split == "val" else np.random.default_rng(seed + epoch).permutation(n)
        blocks = (order[i:i + 8192] for i in range(0, len(order), 8192))  # avoid materialising millions of tuples
        yield epoch, (doc for b in blocks for doc in zip(starts[b].tolist(), lengths[b].tolist()))

def make_dataloader(tokenizer, B, T, split, device=None, buffer_size=1000, seed=0):
    """Infinite iterator of (x, y, epoch): int64 [B, T] inputs and next-token targets; epoch counts from 1."""
    assert split in ("train", "val"), f"split must be 'train' or 'val', got {split!r}"
    assert B >= 1 and T >= 1 and buffer_size >= 1, f"need B, T, buffer_size >= 1, got {B}, {T}, {buffer_size}"
    assert tokenizer.directory, "the tokenizer must come from Tokenizer.from_directory(), which knows the token files"
    tokens, starts, lengths = _open_split(tokenizer.directory, split)  # here, so a missing file fails right away
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = _pack_rows(_split_epochs(starts, lengths, split, seed), T + 1, buffer_size)
    return _batches(rows, tokens, B, T, device)

def _batches(rows, tokens, B, T, device):
    if device.type == "cuda":  # two pinned staging buffers, so a copy still in flight is never overwritten
        pinned = [torch.empty((2, B, T), dtype=torch.long, pin_memory=True) for _ in range(2)]
        copied = [None, None]
    for step in itertools.count():
        batch = np.empty((B, T + 1), dtype=np.int64)
        for r in range(B):
            segments, epoch = next(rows)
            pos = 0
            for start, take in segments:
                batch[r, pos:pos + take] = tokens[start:start + take]
                pos += take
        batch = torch.from_numpy(batch)
        if device.type != "cuda":
            yield batch[:, :-1].contiguous(), batch[:, 1:].contiguous(), epoch
            continue
        k = step % 2
        if copied[k] is not None:
            copied[k].synchronize()
        pinned[k][0].copy_(batch[:, :-1])
        pinned[k][1].copy_(batch[:, 1:])
        xy = pinned[k].to(device, non_blocking=True)
        copied[k] = torch.cuda.Event()
        copied[k].record(torch.cuda.current_stream(device))
        yield xy[0], xy[1], epoch

def val_pass_tokens(directory, seq_len=None, buffer_size=1000):
    """Target tokens one pass of the val loader yields at seq_len (cached next to the split)."""
    seq_len = seq_len or MAX_SEQ_LEN
    cache = os.path.join(directory, f"val_pass_T{seq_len}_b{buffer_size}.json")
    if os.path.exists(cache):
        with open(cache) as f:
            return json.load(f)["tokens"]
    _, starts, lengths = _open_split(directory, "val")
    one_pass = _pack_rows([(1, zip(starts.tolist(), lengths.tolist()))], seq_len + 1, buffer_size)
    available = seq_len * sum(1 for _ in one_pass)
    tmp = f"{cache}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"tokens": available}, f)
    os.replace(tmp, cache)
    return available


def eval_tokens_for(directory, seq_len=None):
    """The tokens evaluate_bpb scores: EVAL_TOKENS, or by default at most one pass of the val split.
    Fixed for a given prepared dataset, so every candidate is scored on the same tokens."""
    seq_len = seq_len or MAX_SEQ_LEN
    if _EVAL_TOKENS_EXPLICIT:
        return EVAL_TOKENS
    return max(min(EVAL_TOKENS, val_pass_tokens(directory, seq_len)), seq_len)


def check_val_split(directory, seq_len=None, eval_tokens=None, buffer_size=1000):
    """Raise PrepareError unless one pass of the val loader yields eval_tokens targets (nothing scored twice)."""
    seq_len = seq_len or MAX_SEQ_LEN
    if eval_tokens is None:
        eval_tokens = eval_tokens_for(directory, seq_len)
    available = val_pass_tokens(directory, seq_len, buffer_size)
    if available < eval_tokens:
        raise PrepareError(f"the validation split yields only {available:,} tokens per pass at "
                           f"MAX_SEQ_LEN={seq_len}, "
                           f"fewer than EVAL_TOKENS={eval_tokens:,}: lower AUTORESEARCH_EVAL_TOKENS (to at most "
                           f"{available:,}) or add data (a bigger --source, or --dataset climbmix)")
    return available

# ---------------------------------------------------------------------------
# Evaluation: the fixed metric
# ---------------------------------------------------------------------------

# the farm sets this for a candidate's training run: evaluate_bpb then hands the weights over instead
HANDOFF_ENV = "AUTORESEARCH_HANDOFF"
EVAL_CHUNK_ELEMENTS = 2**26  # logits turned into float32 at a time by target_nats (256 MB)

def target_nats(model, x, y, vocab_size):
    """
    Cross-entropy in nats of each target y[b, t] given row x[b, :t+1], as float32 [B, T]. The model
    only supplies logits: model(x) must return [B, T, V] with V >= vocab_size (extra columns can only
    take probability away); the softmax and the loss are computed here, so a model cannot report a
    loss of its own.
    """
    logits = model(x)
    if not (isinstance(logits, torch.Tensor) and logits.dim() == 3 and tuple(logits.shape[:2]) == tuple(x.shape)
            and logits.size(-1) >= vocab_size):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"model(x) must return logits of shape [B, T, >= {vocab_size}] for x of shape "
                         f"{tuple(x.shape)}, got {shape}")
    nats = torch.empty(y.shape, dtype=torch.float32, device=y.device)
    rows = max(1, EVAL_CHUNK_ELEMENTS // (x.size(1) * logits.size(-1)))
    for i in range(0, x.size(0), rows):
        chunk = logits[i:i + rows].float()
        nats[i:i + rows] = torch.nn.functional.cross_entropy(
            chunk.flatten(0, 1), y[i:i + rows].flatten(), reduction="none").view(chunk.shape[:2])
    return nats

def hand_off(model, path):
    """Save the trained weights where the farm's trusted evaluator reads them (atomically); return nan."""
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper holds the real module here
    state = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    tmp = f"{path}.{os.getpid()}.tmp"
    torch.save({"format": 1, "state_dict": state}, tmp)
    os.replace(tmp, path)
    print("evaluate_bpb: weights handed to the farm's trusted evaluator, which computes val_bpb "
          "(so this run prints nan)", flush=True)
    return float("nan")

@torch.no_grad()
def evaluate_bpb(model, tokenizer, batch_size):
    """
    Validation bits per byte, independent of the vocabulary: sum the per-token cross-entropy (nats) of
    EVAL_TOKENS target tokens, divide by the UTF-8 bytes those tokens stand for, convert to bits.
    Targets that are special tokens (0 bytes, i.e. BOS) count in neither sum. The val loader is fresh
    and deterministic, so every candidate is scored on the same tokens. model(x) must return logits
    [B, T, V] (see target_nats). The model's train/eval mode is left as the caller set it.

    Under the farm (AUTORESEARCH_HANDOFF set) the training process cannot read the validation split:
    the weights are saved for the farm's trusted evaluator, which rebuilds the model with train.py's
    build_model(vocab_size), loads them and calls this function in a process of its own; here nan is
    returned.
    """
    if os.environ.get(HANDOFF_ENV, "").strip():
        return hand_off(model, os.environ[HANDOFF_ENV].strip())
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    eval_tokens = eval_tokens_for(tokenizer.directory)
    batch_size = min(batch_size, eval_tokens // MAX_SEQ_LEN)  # a small val split is scored in smaller batches
    steps = eval_tokens // (batch_size * MAX_SEQ_LEN)
    assert steps >= 1, (f"EVAL_TOKENS={eval_tokens} is less than one batch of {batch_size} x {MAX_SEQ_LEN} tokens: "
                        f"lower the eval batch size or raise AUTORESEARCH_EVAL_TOKENS")
    token_bytes = get_token_bytes(device, tokenizer.directory)
    vocab_size = tokenizer.get_vocab_size()
    val_loader = make_dataloader(tokenizer, batch_size, MAX_SEQ_LEN, "val", device=device)
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=device)
    for _ in range(steps):
        x, y, epoch = next(val_loader)
        nats = target_nats(model, x, y, vocab_size)
        nbytes = token_bytes[y.reshape(-1)]
        counted = nbytes > 0
        total_nats += torch.where(counted, nats.reshape(-1).double(), 0.0).sum()
        total_bytes += nbytes.sum()
    if epoch > 1:
        warnings.warn("evaluation wrapped around the validation split, so some tokens were scored twice: "
                      "lower AUTORESEARCH_EVAL_TOKENS or prepare more data")
    return total_nats.item() / (math.log(2) * total_bytes.item())

# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description="Prepare data and tokenizer for autoresearch.",
                                     epilog="Environment knobs: see `pydoc prepare`.")
    parser.add_argument("--dataset", choices=["offline", "climbmix"],
                        help="offline: the Python stdlib's source, no network (default, or AUTORESEARCH_DATASET); "
                             "climbmix: Hugging Face shards")
    parser.add_argument("--source", metavar="DIR",
                        help="a folder of .txt/.md/.py/.jsonl/.parquet files instead of the stdlib")
    parser.add_argument("--num-shards", type=int, default=10,
                        help="climbmix training shards (-1: all); the val shard is always added")
    parser.add_argument("--download-workers", type=int, default=8, help="parallel climbmix downloads")
    parser.add_argument("--download-attempts", type=int, default=5, help="tries per shard, with exponential backoff")
    parser.add_argument("--vocab-size", type=int, default=VOCAB_SIZE, help=f"BPE vocab size (default {VOCAB_SIZE})")
    parser.add_argument("--force", action="store_true", help="rebuild even if the prepared data is complete")
    args = parser.parse_args(argv)
    env_dataset = os.environ.get("AUTORESEARCH_DATASET", "").strip()
    if args.dataset is None:  # --source implies offline; else follow AUTORESEARCH_DATASET where it names one
        use_env = not args.source and env_dataset in ("offline", "climbmix")
        args.dataset = env_dataset if use_env else "offline"
    if args.vocab_size < 257:
        parser.error("--vocab-size must be at least 257 (256 byte tokens + <|bos|>)")
    if args.source and args.dataset != "offline":
        parser.error("--source cannot be combined with --dataset climbmix")

    t0 = time.time()
    def log(msg):  # one write per line: download threads log concurrently
        sys.stdout.write(f"[{time.time() - t0:6.1f}s] {msg}\n")
        sys.stdout.flush()
    log(f"profile={PROFILE} cache={CACHE_DIR} MAX_SEQ_LEN={MAX_SEQ_LEN} EVAL_TOKENS={EVAL_TOKENS:,}")
    try:
        meta = prepare_dataset(args.dataset, args.source, args.vocab_size, num_shards=args.num_shards,
                               download_workers=args.download_workers, download_attempts=args.download_attempts,
                               force=args.force, log=log)
        available = check_val_split(meta["directory"])
    except PrepareError as e:
        print(f"prepare.py: error: {e}", file=sys.stderr)
        return 1
    tmp = os.path.join(CACHE_DIR, f"default_dataset.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(meta["dataset"] + "\n")
    os.replace(tmp, os.path.join(CACHE_DIR, "default_dataset"))  # DATASET for later imports

    print(f"\ndataset {meta['dataset']}, vocab {meta['vocab_size']}: {meta['directory']} "
          f"(raw data: {data_dir(meta['dataset'])})")
    for split, s in meta["splits"].items():
        print(f"  {split:5s} {s['docs']:>9,} docs {s['tokens']:>13,} tokens")
    print(f"  val yields {available:,} tokens per pass at MAX_SEQ_LEN={MAX_SEQ_LEN} (EVAL_TOKENS={EVAL_TOKENS:,})")
    if args.vocab_size != VOCAB_SIZE:
        print(f"  note: train.py reads VOCAB_SIZE={VOCAB_SIZE}; to use this one, "
              f"set AUTORESEARCH_VOCAB_SIZE={args.vocab_size}")
    print(f"done in {time.time() - t0:.1f}s")
    return 0

if __name__ == "__main__":
    sys.exit(main())
