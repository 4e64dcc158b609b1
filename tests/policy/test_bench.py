"""The benchmarks' own arithmetic, and bench/search.py end to end on a tiny setting. No Ray starts here
and no speed target is checked: those live in docs/BENCHMARKS.md, measured by the scripts."""

from __future__ import annotations

import math
import random

import pytest

from bench import farm_overhead as fo
from bench import search, simfarm
from proposer import mutate
from proposer.base import History, fingerprint


def test_percentile_interpolates_between_ranks_like_numpy():
    xs = [float(i) for i in range(1, 101)]
    random.Random(0).shuffle(xs)
    assert fo.percentile(xs, 50) == pytest.approx(50.5)
    assert fo.percentile(xs, 99) == pytest.approx(99.01)
    assert fo.percentile(xs, 0) == 1.0 and fo.percentile(xs, 100) == 100.0
    assert fo.percentile([3.0], 99) == 3.0
    assert math.isnan(fo.percentile([], 50))
    s = fo.summarize([0.1, 0.2, 0.3, 10.0])
    assert s["n"] == 4 and s["median"] == pytest.approx(0.25) and s["max"] == 10.0
    assert s["p99"] == pytest.approx(0.3 + 0.97 * 9.7)


def _runs(worker, starts, length):
    return [{"worker": worker, "started_at": s, "finished_at": s + length} for s in starts]


def test_cycles_and_gaps_are_per_worker_and_start_after_the_cut():
    # worker a: runs of 10 s back to back with 0.5 s gaps; worker b: 2 s gaps; runs listed out of order
    runs = _runs("a", [0.0, 10.5, 21.0, 31.5], 10.0) + _runs("b", [24.0, 0.0, 12.0], 10.0)
    cycles, gaps = fo.worker_cycles(runs, after=0.0)
    assert sorted(gaps) == pytest.approx([0.5, 0.5, 0.5, 2.0, 2.0])
    assert sorted(cycles) == pytest.approx([10.5, 10.5, 10.5, 12.0, 12.0])
    cycles, gaps = fo.worker_cycles(runs, after=15.0)  # only pairs whose earlier run finished at/after 15 s
    assert sorted(gaps) == pytest.approx([0.5, 0.5, 2.0])


def test_throughput_fraction_is_duration_over_mean_cycle():
    assert fo.throughput_fraction([10.0] * 8, 10.0) == pytest.approx(1.0)
    assert fo.throughput_fraction([10.5, 10.5, 12.0, 12.0], 10.0) == pytest.approx(40 / 45)
    assert math.isnan(fo.throughput_fraction([], 10.0))
    assert fo.per_run(12.0, 4) == 3.0 and math.isnan(fo.per_run(1.0, 0))


def test_memory_fit_keeps_a_reserve():
    gib = 2**30
    assert fo.memory_fit(24 * gib, gib / 8) == 176
    assert fo.memory_fit(1 * gib, gib / 8) == 0
    assert fo.memory_fit(24 * gib, 0) == 0


def test_bench_proposer_makes_unique_neutral_edits_and_planted_wins():
    src = fo.set_constant(fo.TRAIN_PY, "SLEEP", "0.5")
    assert fo.get_constant(src, "SLEEP") == "0.5" and fo.get_constant(src, "KNOB") == "0"
    p = fo.BenchProposer(seed=1, win_prob=0.3)
    props = p.propose(40, History(base_commit="x", base_source=src))
    wins = [q for q in props if q.meta["win"]]
    assert 0 < len(wins) < 40
    assert len({fingerprint(q.source) for q in props}) == 40, "every proposal is a distinct experiment"
    assert all(fo.get_constant(q.source, "GAIN") == "0.01" for q in wins)
    assert all(fo.get_constant(q.source, "GAIN") == "0.0" for q in props if not q.meta["win"])
    compile(props[0].source, "train.py", "exec")


def test_landscape_scores_the_real_train_py_and_has_a_crash_region():
    consts = {k: c.value for k, c in mutate._Surface(simfarm.TRAIN_PY.read_text()).consts.items()}
    base = simfarm.true_bpb(consts)
    assert 0.99 < base < 1.0
    assert simfarm.true_bpb(consts | {"DEVICE_BATCH_SIZE": 256}) is None
    better = simfarm.true_bpb(consts | {"TOTAL_BATCH_SIZE": 2**18})
    assert better < base - 0.01
    # interaction: after halving the batch, the best Muon lr is lower
    lrs = [0.03, 0.04, 0.06]
    at_small = min(lrs, key=lambda lr: simfarm.true_bpb(consts | {"TOTAL_BATCH_SIZE": 2**18, "MATRIX_LR": lr}))
    at_large = min(lrs, key=lambda lr: simfarm.true_bpb(consts | {"MATRIX_LR": lr}))
    assert at_small < at_large


def test_text_fingerprint_agrees_with_the_real_one_on_mutate_proposals():
    src = simfarm.TRAIN_PY.read_text()
    props = mutate.MutateProposer(seed=3, profile="gpu").propose(12, History(base_commit="x", base_source=src))
    sources = [src, *(p.source for p in props), props[0].source]
    real = [fingerprint(s) for s in sources]
    fast = [simfarm.text_fingerprint(s) for s in sources]
    assert [[a == b for b in real] for a in real] == [[a == b for b in fast] for a in fast]


def test_time_to_speedup_and_gpu_hours_per_merge():
    traj = [(0.0, 1.0), (100.0, 0.99), (250.0, 0.98)]
    assert simfarm.time_to(traj, 0.99) == 100.0
    assert simfarm.time_to(traj, 0.5) == math.inf
    assert simfarm.speedup([100.0, 200.0, 300.0], [10.0, 20.0, 40.0]) == pytest.approx(10.0)
    assert simfarm.speedup([100.0, math.inf, math.inf], [10.0, 20.0, 40.0]) == math.inf
    assert math.isnan(simfarm.speedup([math.inf], [math.inf]))
    lo, hi = simfarm.bootstrap([100.0, 200.0, 300.0], [10.0, 20.0, 30.0])
    assert 100 / 30 <= lo <= 10.0 <= hi <= 30.0
    out = simfarm.Outcomes(workers=4, seed=0, trajectory=traj, merges=[{"t": 100.0}, {"t": 250.0}])
    assert simfarm.gpu_hours_per_merge(out, 3600.0) == pytest.approx(2.0)
    assert simfarm.gpu_hours_per_merge(out, 50.0) == math.inf


def test_the_simulated_farm_merges_real_gains_and_restores_the_proposer():
    before = mutate.fingerprint
    sim = simfarm.Sim(4, seed=0)
    out = sim.run(2 * 3600)
    assert mutate.fingerprint is before
    assert out.runs["baseline"] >= 3 and out.runs["measure"] > 0
    assert out.merges, "a 4-worker farm finds something in 2 simulated hours"
    assert all(m["after"] < m["before"] for m in out.merges)
    assert [v for _, v in out.trajectory] == sorted((v for _, v in out.trajectory), reverse=True)
    assert out.end == pytest.approx(2 * 3600)


def test_search_runs_end_to_end_and_prints_its_headline_last(capsys):
    assert search.main(["--seeds", "1", "--hours", "2", "--workers", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("HEADLINE search: 2 workers reach the target")
    assert any(line.startswith("| 1 |") for line in lines) and any(line.startswith("| 2 |") for line in lines)
