"""The static tripwire (worker.tripwire): each rule catches a realistic cheat and leaves its near-miss alone."""

from __future__ import annotations

import re
import textwrap
import time
from pathlib import Path

import pytest

from worker.tripwire import check, findings, seeding_calls, uses_farm_seed

TRAIN = (Path(__file__).resolve().parents[2] / "train.py").read_text()


def flags(src: str) -> list[str]:
    return findings(textwrap.dedent(src))


def assert_flagged(src: str, *expected: str):
    found = flags(src)
    assert found, f"nothing flagged in:\n{src}"
    for text in expected:
        assert any(text in f for f in found), f"{text!r} not in {found}"


# -- the repository's own train.py, and variants that only change constants -------------------------

def test_repository_train_py_is_clean():
    assert findings(TRAIN) == []
    assert check(TRAIN) is None


@pytest.mark.parametrize("name, value", [
    ("DEPTH", "12"), ("MATRIX_LR", "0.03"), ("WINDOW_PATTERN", '"L"'), ("VALUE_EMBEDS", "False"),
    ("TOTAL_BATCH_SIZE", "2**18"), ("ADAM_BETAS", "(0.9, 0.95)"), ("CPU_DEPTH", "2"),
])
def test_constant_variants_are_clean(name, value):
    variant, n = re.subn(rf"^{name} = [^#\n]+", f"{name} = {value}  ", TRAIN, count=1, flags=re.MULTILINE)
    assert n == 1
    assert findings(variant) == []


def test_ordinary_additions_to_train_py_are_clean():
    extra = '''
    import os
    import time
    import torch
    import torch._inductor.config as inductor_config
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch._dynamo.config.cache_size_limit = 64
    torch._inductor.config.coordinate_descent_tuning = True
    inductor_config.triton.cudagraphs = False
    torch.set_float32_matmul_precision("high")

    def log_step(step, time, val_loss):  # a parameter named like a module hides it
        time.last = step
        print(f"val_bpb: {val_loss:.4f} | interval {time.last}")

    class Timer:
        def __init__(self):
            self.time = time.time()
    '''
    assert findings(TRAIN + textwrap.dedent(extra)) == []


# -- 1. monkeypatching the harness ---------------------------------------------------------------------

@pytest.mark.parametrize("src, expected", [
    ("import prepare as p\np.TIME_BUDGET = 600\n", "line 2: assigns prepare.TIME_BUDGET (monkeypatching"),
    ("import prepare\nprepare.EVAL_TOKENS //= 8\n", "assigns prepare.EVAL_TOKENS"),
    ("import prepare\ndel prepare.evaluate_bpb\n", "deletes prepare.evaluate_bpb"),
    ("import prepare\nsetattr(prepare, 'TIME_BUDGET', 900)\n", "setattr(prepare"),
    ("import prepare\nvars(prepare)['EVAL_TOKENS'] = 1024\n", "vars(prepare)"),
    ("import prepare\nprepare.__dict__.update(EVAL_TOKENS=1024)\n", "prepare.__dict__"),
    ("from prepare import Tokenizer\nTokenizer.decode = lambda self, ids: ''\n", "assigns prepare.Tokenizer.decode"),
    ("harness = __import__('prepare')\nharness.EVAL_TOKENS = 2048\n", "assigns prepare.EVAL_TOKENS"),
    ("import prepare\nh = prepare\nh.evaluate_bpb = lambda *a: 0.5\n", "assigns prepare.evaluate_bpb"),
    ("import importlib, prepare\nos.environ['X'] = '1'\nimportlib.reload(prepare)\n", "reloads a module"),
    ("import sys\nsys.modules['prepare'].TIME_BUDGET = 1e9\n", "sys.modules"),
    ("import builtins\nbuiltins.print = lambda *a, **k: None\n", "builtins"),
    ("g = __builtins__\n", "__builtins__"),
])
def test_monkeypatching_the_harness(src, expected):
    assert_flagged(src, expected)


def test_reading_the_harness_is_not_patching_it():
    assert flags("""
        import prepare
        from prepare import TIME_BUDGET, evaluate_bpb
        budget = prepare.TIME_BUDGET * 0.9
        tok = prepare.Tokenizer.from_directory()
        score = evaluate_bpb(model, tok, 32)
        params = {}
        params["TIME_BUDGET"] = TIME_BUDGET
    """) == []


# -- 2. rebinding a name imported from prepare -----------------------------------------------------------

@pytest.mark.parametrize("src, expected", [
    ("from prepare import evaluate_bpb, TIME_BUDGET\nTIME_BUDGET = 600\n", "line 2: assigns TIME_BUDGET (rebinding"),
    ("from prepare import TIME_BUDGET\nTIME_BUDGET: float = 600.0\n", "assigns TIME_BUDGET"),
    ("from prepare import evaluate_bpb\n\ndef evaluate_bpb(model, tokenizer, batch_size):\n    return 0.5\n",
     "line 3: defines evaluate_bpb"),
    ("from prepare import Tokenizer\nclass Tokenizer:\n    pass\n", "defines Tokenizer"),
    ("from prepare import evaluate_bpb\nfrom my_eval import fast_bpb as evaluate_bpb\n", "imports over evaluate_bpb"),
    ("from prepare import *\n", "from prepare import *"),
    ("from prepare import TIME_BUDGET\ndef main():\n    global TIME_BUDGET\n    TIME_BUDGET *= 2\n",
     "line 4: assigns TIME_BUDGET"),
    ("from prepare import TIME_BUDGET\nglobals()['TIME_BUDGET'] = 900\n", "globals()[TIME_BUDGET]"),
    ("from prepare import TIME_BUDGET\nfor k, v in overrides.items():\n    globals()[k] = v\n", "<computed key>"),
    ("import prepare\nprepare = FakeHarness()\n", "assigns prepare"),
])
def test_rebinding_harness_names(src, expected):
    assert_flagged(src, expected)


def test_local_names_like_harness_names_are_fine():
    assert flags("""
        from prepare import TIME_BUDGET, MAX_SEQ_LEN
        def main():
            TIME_BUDGET = 10  # a local: the harness's value is untouched
            return TIME_BUDGET
        class Config:
            MAX_SEQ_LEN = 1024
        globals()["DEPTH"] = 12
    """) == []


# -- 3. introspection that reaches into other code --------------------------------------------------------

@pytest.mark.parametrize("src, expected", [
    ("import sys\nframe = sys._getframe(1)\nframe.f_globals['TIME_BUDGET'] = 1e9\n", "sys._getframe"),
    ("import sys\nframe = sys._getframe(1)\nframe.f_globals['TIME_BUDGET'] = 1e9\n", ".f_globals"),
    ("import gc\nfor obj in gc.get_objects():\n    if getattr(obj, '__name__', '') == 'evaluate_bpb':\n        pass\n",
     "gc.get_objects"),
    ("from gc import get_referrers as refs\nrefs(model)\n", "line 2: uses gc.get_referrers"),
    ("from prepare import evaluate_bpb\nevaluate_bpb.__code__ = my_eval.__code__\n", ".__code__"),
    ("def f():\n    pass\nf.__globals__['TIME_BUDGET'] = 1\n", ".__globals__"),
    ("import inspect\ncaller = inspect.currentframe().f_back\n", "inspect.currentframe"),
    ("import inspect\ncaller = inspect.stack()[1]\n", "inspect.stack"),
    ("import ctypes\n", "ctypes"),
])
def test_introspection(src, expected):
    assert_flagged(src, expected)


def test_ordinary_gc_and_inspect_use_is_fine():
    assert flags("""
        import gc, inspect
        gc.collect(); gc.freeze(); gc.disable()
        sig = inspect.signature(GPT.forward)
        code = "x"  # not .__code__
    """) == []


# -- 4. patching the clock or the evaluation's tools -------------------------------------------------------

@pytest.mark.parametrize("src, expected", [
    ("import time\ntime.time = lambda: 0.0\n", "line 2: assigns time.time (patching a module the evaluation uses)"),
    ("import time as _t\n_real = _t.perf_counter\n_t.perf_counter = lambda: _real() * 0.5\n",
     "assigns time.perf_counter"),
    ("def main():\n    time.monotonic = lambda: 0\nimport time\n", "assigns time.monotonic"),
    ("import time\ndef slow(clock=time):\n    clock.time = lambda: 0\n", "assigns time.time"),
    ("import math\nsetattr(math, 'log', lambda x: 0.0)\n", "setattr(math"),
    ("import os\nos.getpid = lambda: 1\n", "assigns os.getpid"),
    ("import sys\nsys.stdout = open('/dev/null', 'w')\n", "assigns sys.stdout"),
    ("import torch.nn.functional as F\nF.cross_entropy = lambda *a, **k: a[0].sum() * 0\n",
     "assigns torch.nn.functional.cross_entropy"),
    ("import torch\ntorch.Tensor.item = lambda self: 0.0\n", "assigns torch.Tensor.item"),
    ("from torch import Tensor\nTensor.float = lambda self: self\n", "assigns torch.Tensor.float"),
    ("import torch.nn as nn\nnn.Module.__call__ = patched_call\n", "assigns torch.nn.Module.__call__"),
    ("import torch\ntorch.no_grad = contextlib.nullcontext\n", "assigns torch.no_grad"),
    ("import numpy as np\nnp.log2 = lambda x: x * 0\n", "assigns numpy.log2"),
])
def test_patching_the_clock_and_tools(src, expected):
    assert_flagged(src, expected)


def test_torch_configuration_and_own_attributes_are_fine():
    assert flags("""
        import time
        import torch
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        torch._dynamo.config.cache_size_limit = 64
        torch._inductor.config.coordinate_descent_tuning = True
        torch._inductor.config.triton.cudagraphs = False
        model.time_budget = 300
        GPT.forward = torch.compile(GPT.forward)
        def record(stats, time):
            time.elapsed = stats
    """) == []


# -- 5. the harness's settings through the environment ----------------------------------------------------

@pytest.mark.parametrize("src, expected", [
    ("import os\nos.environ['AUTORESEARCH_TIME_BUDGET'] = '900'\n", "writes os.environ[AUTORESEARCH_TIME_BUDGET]"),
    ("import os\nos.environ.update({'AUTORESEARCH_EVAL_TOKENS': '2048'})\n", "AUTORESEARCH_EVAL_TOKENS"),
    ("import os\nos.environ.update(AUTORESEARCH_TIME_BUDGET='900')\n", "AUTORESEARCH_TIME_BUDGET"),
    ("import os\nos.environ.setdefault('AUTORESEARCH_SEQ_LEN', '64')\n", "AUTORESEARCH_SEQ_LEN"),
    ("from os import environ as env\nenv.pop('AUTORESEARCH_HANDOFF', None)\n", "AUTORESEARCH_HANDOFF"),
    ("import os\nfor k in list(os.environ):\n    if k.startswith('AUTORESEARCH_'):\n        del os.environ[k]\n",
     "line 4: writes os.environ[<computed key>]"),
    ("import os\nos.environ |= {'AUTORESEARCH_TIME_BUDGET': '900'}\n", "AUTORESEARCH_TIME_BUDGET"),
    ("import os\nos.environ.update(settings)\n", "<computed key>"),
    ("import os\nos.environ.clear()\n", "<computed key>"),
    ("import os\nos.putenv('AUTORESEARCH_DATASET', 'mine')\n", "os.putenv(AUTORESEARCH_DATASET)"),
    ("import os\nos.unsetenv(name)\n", "os.unsetenv(<computed key>)"),
    ("import os\nos.environ['XDG_CACHE_HOME'] = '/tmp/mine'\n", "writes os.environ[XDG_CACHE_HOME]"),
])
def test_environment_writes(src, expected):
    assert_flagged(src, expected, "changes the harness's settings through the environment")


def test_other_environment_writes_and_all_reads_are_fine():
    assert flags("""
        import os
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
        os.environ.update({"OMP_NUM_THREADS": "8"}, TOKENIZERS_PARALLELISM="false")
        os.environ |= {"CUDA_LAUNCH_BLOCKING": "0"}
        os.environ.pop("NCCL_DEBUG", None)
        device = os.environ.get("AUTORESEARCH_DEVICE") or "cuda"
        budget = os.environ["AUTORESEARCH_TIME_BUDGET"]
    """) == []


# -- 6. the validation split ------------------------------------------------------------------------------

@pytest.mark.parametrize("src, expected", [
    ("val_loader = make_dataloader(tokenizer, B, T, 'val')\n", "line 1: string 'val' (reads the validation split)"),
    ("loader = make_dataloader(tokenizer, B, T, split='val', device=device)\n", "string 'val'"),
    ("toks = np.fromfile(os.path.join(d, 'val.bin'), dtype=np.uint16)\n", "val.bin"),
    ("starts = np.load(f'{d}/val_offsets.npy')\n", "val_offsets"),
    ("path = 'shard_06542.parquet'\n", "shard_06542"),
    ("from prepare import _open_split\n", "_open_split"),
    ("import prepare\ntokens, starts, lengths = prepare._open_split(tok.directory, split)\n", "_open_split"),
    ("import prepare\nshard = prepare.VAL_SHARD\n", "VAL_SHARD"),
    ("from prepare import VAL_FRACTION\n", "VAL_FRACTION"),
])
def test_validation_split(src, expected):
    assert_flagged(src, expected)


def test_val_named_variables_and_messages_are_fine():
    assert flags("""
        val_loss = 0.0
        val_bpb = evaluate_bpb(model, tokenizer, 32)
        print(f"val_bpb: {val_bpb:.6f}")
        interval = 5
        value = {"value": 1, "eval": 2, "valid_steps": 3}
        loader = make_dataloader(tokenizer, B, T, "train")
    """) == []


# -- 7. the harness's data cache and files ----------------------------------------------------------------

@pytest.mark.parametrize("src, expected", [
    ("root = os.path.expanduser('~/.cache/autoresearch')\n", ".cache/autoresearch"),
    ("root = os.environ.get('AUTORESEARCH_CACHE', '')\n", "AUTORESEARCH_CACHE"),
    ("d = os.path.join(root, 'tokenized', 'offline-v2048')\n", "'tokenized'"),
    ("from prepare import CACHE_DIR\n", "uses prepare.CACHE_DIR"),
    ("import prepare\nd = prepare.tokenized_dir()\n", "uses prepare.tokenized_dir"),
    ("import prepare\ndocs = list(prepare.iter_offline_docs())\n", "uses prepare.iter_offline_docs"),
    ("with open('prepare.py', 'w') as f:\n    f.write(src)\n", "string 'prepare.py'"),
])
def test_data_cache_and_harness_files(src, expected):
    assert_flagged(src, expected, "reads the harness's data cache or the farm's files")


def test_prose_about_the_harness_is_fine():
    assert flags('''
        """Pretrain a GPT; `prepare.py` is the frozen harness and its tokenizer is cached."""
        tokenizer = Tokenizer.from_directory()
        print("tokenizer loaded from the cache")
    ''') == []


# -- code chosen at run time ------------------------------------------------------------------------------

@pytest.mark.parametrize("src, expected", [
    ("exec(open('patch.py').read())\n", "calls exec()"),
    ("harness = __import__('pre' + 'pare')\n", "imports a module by a computed name"),
    ("import importlib\nm = importlib.import_module(name)\n", "imports a module by a computed name"),
])
def test_dynamic_code(src, expected):
    assert_flagged(src, expected, "cannot be checked")


def test_methods_named_like_builtins_are_fine():
    assert flags("""
        model.eval()
        model = torch.compile(model)
        from torch import compile
        compiled = compile(model)
    """) == []


def test_dynamic_spellings_pass_as_documented():
    # The module docstring's stated limit: names assembled at run time are not seen.
    assert flags("import torch\nsetattr(getattr(torch, 'Ten' + 'sor'), 'item', lambda self: 0.0)\n") == []


# -- seeding: the farm assigns the seed (prepare.seed()), admission compares seeding_calls with the base's -----

TRAIN_SEEDING = ["torch.manual_seed(seed())", "torch.cuda.manual_seed(seed())", "make_dataloader(..., seed=seed())"]
UPSTREAM = """
import torch
from prepare import MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, make_dataloader, evaluate_bpb

t_start = time.time()
torch.manual_seed(42)
torch.cuda.manual_seed(42)
torch.set_float32_matmul_precision("high")
train_loader = make_dataloader(tokenizer, DEVICE_BATCH_SIZE, MAX_SEQ_LEN, "train")
"""


def edit(old: str, new: str, count: int = 1) -> str:
    assert TRAIN.count(old) == count, old
    return TRAIN.replace(old, new)


def test_the_repository_train_py_seeds_torch_cuda_and_its_loader_from_the_farm():
    assert seeding_calls(TRAIN) == TRAIN_SEEDING
    assert uses_farm_seed(TRAIN)
    assert findings(TRAIN) == []


def test_an_upstream_style_file_seeds_itself():
    """Upstream autoresearch's train.py seeds torch with 42 and its loader with the harness's default."""
    assert seeding_calls(textwrap.dedent(UPSTREAM)) == ["torch.manual_seed(42)", "torch.cuda.manual_seed(42)"]
    assert not uses_farm_seed(textwrap.dedent(UPSTREAM))
    assert findings(textwrap.dedent(UPSTREAM)) == []


SEEDING = "    torch.manual_seed(seed())\n"


@pytest.mark.parametrize("what, candidate", [
    ("a seed constant of its own", edit("torch.manual_seed(seed())", "torch.manual_seed(42)")),
    ("every seed a constant", TRAIN.replace("seed()", "1234")),
    ("a fixed data order", edit("seed=seed())", "seed=0)")),
    ("the loader's seed dropped", edit(', seed=seed())', ')')),
    ("an extra RNG seeded", edit(SEEDING, SEEDING + "    random.seed(7)\n").replace("import gc\n", "import gc\nimport random\n")),
    ("an extra torch seeding", edit(SEEDING, SEEDING + "    torch.manual_seed(seed() + 1)\n")),
    ("a seed derived from the farm's", edit("torch.manual_seed(seed())", "torch.manual_seed(seed() % 2)")),
    ("the seeding dropped", edit(SEEDING, "")),
    ("the seed through a name", edit(SEEDING, "    s = 7\n    torch.manual_seed(s)\n")),
    ("seed() rebound inside main", edit(SEEDING, "    seed = lambda: 7\n" + SEEDING)),
    ("a seeded generator of its own", edit(SEEDING, SEEDING + "    g = torch.Generator().manual_seed(3)\n")),
])
def test_a_candidate_that_changes_the_seeding_has_other_seeding_calls(what, candidate):
    assert seeding_calls(candidate) != seeding_calls(TRAIN), what


def test_the_tripwire_alone_lets_seed_engineering_through():
    """Neither change is a finding: the admission check on seeding_calls is what refuses them."""
    constant = TRAIN.replace("seed()", "1234")
    assert not uses_farm_seed(constant) and findings(constant) == []
    partly = edit("torch.manual_seed(seed())", "torch.manual_seed(42)")
    assert uses_farm_seed(partly) and findings(partly) == []  # CUDA and the loader still read the farm's seed
    assert seeding_calls(partly) != TRAIN_SEEDING


@pytest.mark.parametrize("name, value", [
    ("DEPTH", "12"), ("MATRIX_LR", "0.03"), ("WARMDOWN_RATIO", "0.4"), ("CPU_TOTAL_BATCH_SIZE", "2**13"),
])
def test_constant_variants_keep_the_seeding(name, value):
    variant, n = re.subn(rf"^{name} = [^#\n]+", f"{name} = {value}  ", TRAIN, count=1, flags=re.MULTILINE)
    assert n == 1
    assert seeding_calls(variant) == TRAIN_SEEDING and uses_farm_seed(variant)


@pytest.mark.parametrize("src, expected", [
    ("import torch as T\nT.manual_seed(1)\nT.cuda.manual_seed_all(1)\nT.random.manual_seed(1)\n",
     ["T.manual_seed(1)", "T.cuda.manual_seed_all(1)", "T.random.manual_seed(1)"]),
    ("from torch import manual_seed as ms\nms(3)\n", ["ms(3)"]),
    ("from torch.cuda import manual_seed_all\nmanual_seed_all(3)\n", ["manual_seed_all(3)"]),
    ("import random\nrandom.seed( 7 )\nr = random.Random(8)\nrandom.Random()\n", ["random.seed(7)", "random.Random(8)"]),
    ("from random import seed\nseed(7)\n", ["seed(7)"]),
    ("import numpy as np\nnp.random.seed(1)\nrng = np.random.default_rng(2)\nnp.random.RandomState(seed=3)\n"
     "np.random.default_rng()\n", ["np.random.seed(1)", "np.random.default_rng(2)", "np.random.RandomState(seed=3)"]),
    ("import numpy\nfrom numpy.random import default_rng as rng\nrng(5)\nnumpy.random.seed(6)\n",
     ["rng(5)", "numpy.random.seed(6)"]),
    ("import torch\ng = torch.Generator(device='cpu')\ng.manual_seed(9)\n", ["g.manual_seed(9)"]),
    ("import torch\nt = torch\nt.manual_seed(1)\n", ["t.manual_seed(1)"]),
    ("import torch\ntorch.set_rng_state(state)\n", ["torch.set_rng_state(state)"]),
    ("import torch\nBASE = 40\nSEED = BASE + 2\ndef main():\n    torch.manual_seed(SEED)\n",
     ["torch.manual_seed(SEED) where BASE = 40; SEED = BASE + 2"]),
    ("import prepare as h\nloader = h.make_dataloader(tok, 8, 256, 'train', None, 1000, 5)\n",
     ["h.make_dataloader(..., seed=5)"]),
])
def test_seeding_calls_resolve_aliases_and_keep_source_order(src, expected):
    assert seeding_calls(src) == expected


def test_names_in_a_seed_resolve_in_pythons_scopes():
    """A seed read through a name shows that name's assignments in the scope Python reads it from:
    not another function's variable of the same name, not a class body from its methods."""
    src = """
import torch
s = 1
def init():
    s = 0.02
def main():
    s = 7
    torch.manual_seed(s)
def helper(s):
    torch.manual_seed(s)
def move():
    global s
    s = 5
class C:
    s = 9
    def m(self):
        torch.manual_seed(s)
"""
    assert seeding_calls(src) == ["torch.manual_seed(s) where s = 7", "torch.manual_seed(s)",
                                  "torch.manual_seed(s) where s = 1; s = 5"]
    assert seeding_calls(edit(SEEDING, "    s = 7\n    torch.manual_seed(s)\n"))[0] == "torch.manual_seed(s) where s = 7"


def test_what_is_not_seeding():
    assert seeding_calls("""
import random, torch, prepare
import numpy as np
torch.use_deterministic_algorithms(True)
g = torch.Generator()
rng = np.random.default_rng()
x = random.random() + torch.randn(3).sum().item()
print(prepare.seed())
loader = prepare.make_dataloader(tok, 8, 256, "train")
def seed_everything():
    pass
""") == []


@pytest.mark.parametrize("src", [
    "import torch, prepare\ntorch.manual_seed(prepare.seed())\n",
    "import torch\nimport prepare as harness\ntorch.manual_seed(harness.seed())\n",
    "import torch\nfrom prepare import seed as farm_seed\ntorch.manual_seed(farm_seed() + 1)\n",
    "import torch, prepare\ndef main():\n    s = prepare.seed()\n    torch.manual_seed(s)\n",
    "import torch, prepare\ndef get_seed():\n    return prepare.seed()\ntorch.manual_seed(get_seed())\n",
    "import os, torch\nSEED = int(os.environ.get('AUTORESEARCH_SEED', 42))\ntorch.manual_seed(SEED)\n",
    "import os, torch\ntorch.manual_seed(int(os.getenv('AUTORESEARCH_SEED', '0')))\n",
    "from os import environ\nimport numpy as np\nnp.random.seed(int(environ['AUTORESEARCH_SEED']))\n",
    "from prepare import make_dataloader, seed\nloader = make_dataloader(tok, 8, 256, 'train', seed=seed())\n",
])
def test_uses_farm_seed(src):
    assert uses_farm_seed(src)


@pytest.mark.parametrize("src", [
    "import torch\ntorch.manual_seed(42)\n",
    "import torch\n",
    "import torch, prepare\nprint(prepare.seed())\ntorch.manual_seed(0)\n",  # read, but not what seeds
    "import os, torch\ntorch.manual_seed(int(os.environ.get('MY_SEED', 42)))\n",
    "import torch\ntorch.manual_seed(len('AUTORESEARCH_SEED'))\n",  # the name, not the environment
    "import torch, prepare\ns = prepare.seed()\ns = 7\ntorch.manual_seed(7)\n",
    "def main(:\n",
])
def test_does_not_use_farm_seed(src):
    assert not uses_farm_seed(src)


def test_unparsable_source_has_no_seeding_calls():
    assert seeding_calls("def main(:\n    torch.manual_seed(1)\n") == []
    assert seeding_calls("x = 1\0") == []


# -- the API ---------------------------------------------------------------------------------------------

def test_syntax_errors_are_not_findings():
    assert findings("def main(:\n    pass\n") == []
    assert findings("x = 1\0") == []
    assert check("def (") is None


def test_code_too_deep_to_walk_is_a_finding_not_a_pass():
    src = "x = " + "+".join(["1"] * 3000) + "\nimport time\ntime.time = lambda: 0.0\n"
    assert findings(src) == ["line 1: code nested too deeply to check (cannot be checked)"]


def test_findings_are_ordered_by_line_and_joined_by_check():
    src = "import time, os\nos.environ['AUTORESEARCH_SEQ_LEN'] = '64'\ntime.time = lambda: 0.0\n"
    found = findings(src)
    assert [f.split(":")[0] for f in found] == ["line 2", "line 3"]
    assert check(src) == "; ".join(found)


def test_fast_on_a_600_line_file():
    body = TRAIN[TRAIN.index("def norm"):TRAIN.index("def lr_multiplier")]
    src = TRAIN + body.replace("class ", "class X").replace("def ", "def x_")
    assert len(src.splitlines()) >= 600
    for check_source in (findings, seeding_calls):
        best = min(_timed(check_source, src) for _ in range(10))
        # about 10 ms, half of it ast.parse; the bound only catches a gross slowdown on a busy machine
        assert best < 0.1, f"{check_source.__name__}: {best * 1000:.1f} ms"


def _timed(check_source, src: str) -> float:
    t0 = time.perf_counter()
    check_source(src)
    return time.perf_counter() - t0
