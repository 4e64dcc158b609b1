"""Reading a harness from its source (worker/harness.py): the project's own is the farm's shape; a
pair shaped like karpathy/autoresearch is `upstream`, with its budget constant, its CUDA evidence, its
kernel repositories and its imports; a CPU fallback is no CUDA evidence; anything else is `unknown`
with the reasons said as what to change. Nothing is imported or run."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.harness import read_harness

ROOT = Path(__file__).resolve().parents[2]

UPSTREAM_PREPARE = '''
import os
import pickle

import pyarrow.parquet as pq
import torch

MAX_SEQ_LEN = 512
TIME_BUDGET = 300  # seconds
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "autoresearch")
DATA_DIR = os.path.join(CACHE_DIR, "data")


def make_dataloader(tokenizer, B, T, split):
    buf = torch.empty(2 * B * T, dtype=torch.long, device="cuda")
    yield buf


def evaluate_bpb(model, tokenizer, batch_size):
    return 1.0
'''

UPSTREAM_TRAIN = '''
import math
import time

import torch
import numpy as np
from kernels import get_kernel

import helpers  # the repository's own module
from .local import thing

cap = torch.cuda.get_device_capability()
name = "org/hopper-kernel" if cap == (9, 0) else "org/other-kernel"
attn = get_kernel(name).flash_attn_interface

from prepare import MAX_SEQ_LEN, TIME_BUDGET, evaluate_bpb, make_dataloader

torch.manual_seed(1234)
device = torch.device("cuda")
step = 0
while time.time() < TIME_BUDGET:
    step += 1
print(f"val_bpb: {evaluate_bpb(None, None, 8):.6f}")
'''

FALLBACK_TRAIN = '''
import torch
from prepare import TIME_BUDGET, evaluate_bpb

device = "cuda" if torch.cuda.is_available() else "cpu"
if device == "cuda":
    torch.cuda.synchronize()
x = torch.zeros(3, device=device)
try:
    import kernels
except ImportError:
    kernels = None
'''

FALLBACK_PREPARE = '''
import torch

TIME_BUDGET = 5 * 60
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def evaluate_bpb(model, tokenizer, batch_size):
    return torch.empty(1, device="cuda")
'''


def upstream_files(**extra: str) -> dict[str, str]:
    return {"train.py": UPSTREAM_TRAIN, "prepare.py": UPSTREAM_PREPARE, "helpers.py": "", "README.md": "", **extra}


def test_the_projects_own_harness_is_the_farms():
    h = read_harness({"train.py": (ROOT / "train.py").read_text(), "prepare.py": (ROOT / "prepare.py").read_text()})
    assert h.kind == "farm" and h.problems == ()
    assert h.budget is None and "AUTORESEARCH_TIME_BUDGET" in h.budget_source
    assert h.needs_cuda == "", "train.py and prepare.py test torch.cuda.is_available() and fall back to the CPU"
    assert "torch" in h.imports and "kernels" not in h.imports, "the kernels import is guarded: optional"
    assert not {"os", "sys", "math", "prepare", "train"} & set(h.imports)


def test_an_upstream_shaped_pair_is_read_whole():
    h = read_harness(upstream_files())
    assert h.kind == "upstream" and h.problems == ()
    assert h.budget == 300.0 and h.budget_source == "the constant prepare.TIME_BUDGET = 300"
    assert h.needs_cuda == "train.py line 12: torch.cuda.get_device_capability()"
    assert h.kernels == ("org/hopper-kernel", "org/other-kernel")  # both arms of the IfExp, in order
    # distributions' top-level names, from both files; not the standard library, the repository's own
    # modules (helpers.py, prepare.py) or a relative import
    assert h.imports == ("kernels", "numpy", "pyarrow", "torch")
    assert h.imported_by("kernels") == "train.py" and h.imported_by("pyarrow") == "prepare.py"
    assert h.cache_default == "~/.cache/autoresearch"


def test_cuda_evidence_comes_from_the_harness_when_train_py_has_none():
    train = UPSTREAM_TRAIN.replace("cap = torch.cuda.get_device_capability()", "cap = (8, 0)").replace(
        'device = torch.device("cuda")', 'device = "cpu"')
    h = read_harness(upstream_files(**{"train.py": train}))
    assert h.kind == "upstream"
    assert h.needs_cuda.startswith("prepare.py line 15: torch.empty(2 * B * T"), h.needs_cuda


def test_a_cpu_fallback_is_no_cuda_evidence():
    h = read_harness({"train.py": FALLBACK_TRAIN, "prepare.py": FALLBACK_PREPARE})
    assert h.kind == "upstream" and h.budget == 300.0 and h.budget_source.endswith("TIME_BUDGET = 5 * 60")
    assert h.needs_cuda == ""
    assert h.imports == ("torch",), "an import inside try/except ImportError is optional"


def test_an_unknown_shape_names_what_is_missing():
    h = read_harness({"train.py": "import torch\nprint('val_bpb: 1.0')\n", "prepare.py": '"""a stand-in"""\n'})
    assert h.kind == "unknown"
    text = "\n".join(h.problems)
    assert "TIME_BUDGET" in text and "AUTORESEARCH_TIME_BUDGET" in text  # the two ways to give a budget
    assert "evaluate_bpb" in text and "from prepare import" in text

    knob_only = read_harness({"train.py": "print(1)\n",
                              "prepare.py": "import os\nB = os.environ['AUTORESEARCH_TIME_BUDGET']\n"})
    assert knob_only.kind == "unknown"
    assert any("evaluate_bpb" in p for p in knob_only.problems)
    assert any("build_model" in p and "train.py" in p for p in knob_only.problems)

    docstring = UPSTREAM_PREPARE.replace("import os", '"""Not AUTORESEARCH_TIME_BUDGET."""\nimport os', 1)
    assert read_harness(upstream_files(**{"prepare.py": docstring})).kind == "upstream", "a docstring reads no knob"
    assert read_harness({"train.py": "x = (\n"}).problems[0].startswith("train.py does not parse (line 1")
    missing = read_harness({"train.py": UPSTREAM_TRAIN})
    assert missing.kind == "unknown" and "prepare.py is not in the repository" in missing.problems[0]


def test_a_budget_that_is_no_literal_or_not_positive_is_named():
    computed = read_harness(upstream_files(**{
        "prepare.py": UPSTREAM_PREPARE.replace("TIME_BUDGET = 300", "TIME_BUDGET = int(os.environ['B'])")}))
    assert computed.kind == "unknown" and any("fixes no time budget" in p for p in computed.problems)
    zero = read_harness(upstream_files(**{"prepare.py": UPSTREAM_PREPARE.replace("TIME_BUDGET = 300", "TIME_BUDGET = 0")}))
    assert zero.kind == "unknown" and any("positive number" in p for p in zero.problems)


def test_the_cpu_fixture_of_upstreams_shape_is_upstream():
    d = ROOT / "tests" / "fixtures" / "upstream_shape"
    if not (d / "prepare.py").is_file():
        pytest.skip("no CPU fixture of upstream's shape in this checkout")
    files = {p.name: p.read_text() for p in d.glob("*.py")}
    h = read_harness(files)
    assert h.kind == "upstream" and h.budget and h.budget > 0 and h.needs_cuda == ""
