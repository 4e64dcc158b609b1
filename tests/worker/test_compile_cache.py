"""The workers of a node share one torch compile cache (``<work_root>/compile-cache``): two runs in
their workers' views compiling at once into it both succeed, and the next run, in a third worker,
starts warm (inductor's FX graph cache hits instead of compiling). On CPU, inductor compiles C++
with the system compiler; the GPU's Triton kernels go to the same directory's ``triton``."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from worker.actor import Worker
from worker.sandbox import scrubbed_env, start_sandboxed
from worker.settings import WorkerSettings

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                                   reason="inductor on CPU needs a C++ compiler")]

COMPILE = """
import torch
from torch._dynamo.utils import counters
f = torch.compile(lambda x: (x.sin() * 3 + x.cos()).cumsum(0), backend="inductor")
x = torch.linspace(0, 1, 256)
print("value", float(f(x).sum()))
print("cache", counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"])
"""


def worker(root: Path, name: str) -> Worker:
    return Worker(WorkerSettings(name=name, work_root=str(root), command=["python", "train.py"], budget=1, grace=1))


def test_the_workers_of_a_node_name_one_compile_cache_and_their_runs_may_write_it(tmp_path):
    a, b = worker(tmp_path, "gpu0"), worker(tmp_path, "gpu1")
    for key, sub in (("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TRITON_CACHE_DIR", "triton")):
        assert a._env()[key] == b._env()[key] == str(tmp_path / "compile-cache" / sub)
    view = a._view([a.root / "runs"])
    if view is not None:
        assert {tmp_path / "compile-cache" / "inductor", tmp_path / "compile-cache" / "triton"} <= set(view.writable)


def _start(w: Worker, log: Path):
    run = w.root / "runs" / "r1"
    run.mkdir(parents=True)
    env = scrubbed_env({**w._env(), "OMP_NUM_THREADS": "1"})
    return start_sandboxed([sys.executable, "-c", COMPILE], run, env, open(log, "wb"), isolate_network=False,
                           view=w._view([run]))


def _finish(proc, log: Path) -> tuple[float, int, int]:
    with proc:
        assert proc.wait_exit(600), "the compile did not finish"
        code = proc.reap()
    text = log.read_text()
    assert code == 0, text[-3000:]
    value = next(float(ln.split()[1]) for ln in text.splitlines() if ln.startswith("value "))
    hits, misses = next(map(int, ln.split()[1:]) for ln in text.splitlines() if ln.startswith("cache "))
    return value, hits, misses


def test_two_workers_compiling_at_once_share_the_cache_and_a_third_starts_warm(tmp_path):
    a, b, c = worker(tmp_path, "gpu0"), worker(tmp_path, "gpu1"), worker(tmp_path, "gpu2")
    procs = [(_start(w, tmp_path / f"{w.name}.log"), tmp_path / f"{w.name}.log") for w in (a, b)]
    cold = [_finish(p, log) for p, log in procs]
    assert cold[0][0] == cold[1][0]
    assert all(hits + misses >= 1 for _, hits, misses in cold)  # each compiled, or found the other's entry
    assert any((tmp_path / "compile-cache" / "inductor").rglob("*")), "nothing was cached"
    value, hits, misses = _finish(_start(c, tmp_path / "gpu2.log"), tmp_path / "gpu2.log")
    assert value == cold[0][0] and hits >= 1 and misses == 0  # the third worker's first run: warm
