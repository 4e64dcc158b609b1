"""The benchmarks' own arithmetic, and bench/search.py end to end on a tiny setting. No Ray starts here
and no speed target is checked: those live in docs/BENCHMARKS.md, measured by the scripts."""

from __future__ import annotations

import math
import random

import pytest

from bench import farm_overhead as fo
from bench import search, simfarm
from cluster.config import SearchSettings
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
    inf = math.inf  # "never"s on both sides: some resamples are nan, which must not scramble the order
    lo, hi = simfarm.bootstrap([37.6, 27.8, inf, 30.8, 22.6, inf], [3.9, 4.7, inf, 1.3, 1.0, 4.5], n=300)
    assert lo <= hi
    out = simfarm.Outcomes(workers=4, seed=0, trajectory=traj, merges=[{"t": 100.0}, {"t": 250.0}])
    assert simfarm.gpu_hours_per_merge(out, 3600.0) == pytest.approx(2.0)
    assert simfarm.gpu_hours_per_merge(out, 50.0) == math.inf


def test_the_simulated_farm_merges_real_gains_and_restores_the_proposer():
    before = (mutate.fingerprint, mutate._Surface, mutate.arm_scores)
    sim = simfarm.Sim(4, seed=0)
    out = sim.run(2 * 3600)
    assert (mutate.fingerprint, mutate._Surface, mutate.arm_scores) == before
    assert not hasattr(mutate, "compile"), "the proposer's compile check is its own again"
    assert out.runs["baseline"] >= 3 and out.runs["measure"] > 0
    assert out.merges, "a 4-worker farm finds something in 2 simulated hours"
    assert all(m["after"] < m["before"] for m in out.merges)
    assert [v for _, v in out.trajectory] == sorted((v for _, v in out.trajectory), reverse=True)
    assert out.end == pytest.approx(2 * 3600)


def test_search_runs_end_to_end_and_prints_its_headline_last(capsys):
    assert search.main(["--seeds", "1", "--hours", "2", "--workers", "2", "--pairing-draws", "200"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("HEADLINE search: 2 workers ") and "x sooner than 1" in lines[-1]
    assert lines[-1].endswith("min_workers 4, diversity True")
    assert any(line.startswith("| 1 |") for line in lines) and any(line.startswith("| 2 |") for line in lines)


def test_search_compares_noise_models_and_worker_counts_in_one_invocation(capsys):
    assert search.main(["--seeds", "1", "--hours", "2", "--workers", "2,3", "--noise", "gpu,iid", "--pairing-draws", "200"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = [line for line in lines if line.startswith(("| gpu |", "| iid |"))]
    assert [line.split(" | ")[:2] for line in summary] == [["| gpu", "1"], ["| gpu", "2"], ["| gpu", "3"],
                                                          ["| iid", "1"], ["| iid", "2"], ["| iid", "3"]]
    assert any(line.startswith("pairing, gpu-like noise") for line in lines)
    assert lines[-1].startswith("HEADLINE search: 2 workers ") and " | 3 workers " in lines[-1]


def _sd(xs):
    mean = sum(xs) / len(xs)
    return math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


def test_gpu_noise_repeats_a_code_and_seed_up_to_jitter_and_moves_by_seed_sd_across_seeds():
    noise = simfarm.Noise()  # gpu-like: seed sd 0.002, jitter 0.0003
    assert (noise.model, noise.seed_sd, noise.jitter_sd, noise.seed_corr) == ("gpu", 0.002, 0.0003, 0.0)
    rng = random.Random(0)  # the fresh jitter; the rest is a fixed function of (world, code, seed)
    rerun, new_seed, new_code = [], [], []
    for i in range(2000):
        code = simfarm.text_fingerprint(f"X = {i}\n")
        first = noise.error(0, code, 1, rng)
        assert noise.seed_effect(0, code, 1) == noise.seed_effect(0, code, 1)
        rerun.append(noise.error(0, code, 1, rng) - first)  # the same code, the same seed: jitter only
        new_seed.append(noise.error(0, code, 2, rng) - first)  # the same code on the next seed
        new_code.append(noise.error(0, simfarm.text_fingerprint(f"X = {i}.0\n"), 1, rng) - first)
    # differences of two runs: sqrt(2) x the per-run sd (2,000 pairs: the sd is within ~3 % of its value)
    assert _sd(rerun) / math.sqrt(2) == pytest.approx(0.0003, rel=0.1)
    assert _sd(new_seed) / math.sqrt(2) == pytest.approx(math.hypot(0.002, 0.0003), rel=0.1)
    assert _sd(new_code) / math.sqrt(2) == pytest.approx(math.hypot(0.002, 0.0003), rel=0.1)
    # another replicate of the simulation (world) is another draw of the whole function
    assert noise.seed_effect(1, code, 1) != noise.seed_effect(0, code, 1)
    # the old model: every measurement a fresh N(0, 0.002), re-runs included
    iid = simfarm.Noise("iid")
    rerun_iid = [iid.error(0, "c", 1, rng) - iid.error(0, "c", 1, rng) for _ in range(2000)]
    assert _sd(rerun_iid) / math.sqrt(2) == pytest.approx(0.002, rel=0.1)
    with pytest.raises(ValueError):
        simfarm.Noise("gaussian")


def test_pairing_buys_nothing_without_a_cross_code_seed_correlation():
    p0 = simfarm.pairing(simfarm.Noise(), n=4000)
    assert p0["paired"] == pytest.approx(p0["unpaired"], rel=0.1)
    assert p0["paired"] == pytest.approx(math.sqrt(2) * math.hypot(0.002, 0.0003), rel=0.1)
    p5 = simfarm.pairing(simfarm.Noise(seed_corr=0.5), n=4000)  # an assumed correlation
    assert p5["paired"] < 0.8 * p5["unpaired"]
    # a merged line's runs are seeds 3-5, a candidate's first seed 1: no pairing, but a shared draw
    assert p5["vs_merged_line_mean"] == pytest.approx(p0["vs_merged_line_mean"], rel=0.1)
    assert p5["between_candidates_corr"] > p0["between_candidates_corr"] + 0.2


def test_the_simulated_farm_hands_out_seeds_and_measures_a_merged_line_afresh():
    sim = simfarm.Sim(4, seed=0)
    out = sim.run(3 * 3600)
    k0 = sorted(r.seed for r in sim.by_commit["k0"])  # (results are in finish order)
    assert k0 == list(range(1, len(k0) + 1)) and len(k0) >= 3  # the baseline, then beside confirmations
    assert len(out.merges) >= 2
    extra = 0
    for m in out.merges[:-1]:  # the last merge's line runs may still be running
        runs = sim.by_commit[sim.cands[m["id"]].commit]
        seeds = {p: sorted(r.seed for r in runs if r.purpose == p) for p in ("measure", "confirm", "baseline")}
        assert seeds["measure"] == [1] and seeds["confirm"] == [2]
        # baseline_runs fresh line runs after the merge, then one more beside each confirmation against it
        assert seeds["baseline"] == list(range(3, 3 + len(seeds["baseline"]))) and len(seeds["baseline"]) >= 3
        extra += len(seeds["baseline"]) - 3
    assert extra > 0, "some confirmation was judged against a merged line"
    line = sim.line()
    assert line.results and all(r.purpose == "baseline" for r in line.results)
    ss, df = line.history["sim"]  # the pooled floor: every other commit measured as a line, n - 1 df each
    others = [c for c in sim.line_commits if c != sim.main]
    assert set(sim.lineage[:-1]) <= set(others) and df == sum(len(sim.line_runs(c)) - 1 for c in others) and ss > 0
    assert sim.lineage[-1] == sim.main
    assert 0.0005 < sim.sigma() < 0.004
    classic = SearchSettings(combine=False, speculate=False, early_line_runs=False, preempt_seconds=0.0)
    old = simfarm.Sim(4, seed=0, line="all-runs", floor="line", search=classic)
    old.run(3 * 3600)
    merged = old.cands[old.out.merges[0]["id"]].commit
    assert {r.purpose for r in old.line_runs(merged)} >= {"measure", "confirm"}
    assert sum(r.purpose == "baseline" for r in old.by_commit[merged]) == 1  # 2 candidate runs + 1 = 3



def test_each_parallel_search_rule_of_the_simulated_farm_can_be_switched_off_alone():
    """The sim models every rule of cluster/loop/plan.py, and each switch turns exactly its rule off."""
    full = simfarm.Sim(16, seed=1)
    out = full.run(2 * 3600)
    assert out.combos > 0 and out.combos_merged > 0 and out.speculative > 0 and out.preempted > 0
    merged_combo = next(full.cands[m["id"]] for m in out.merges if m["changes"] > 1)
    assert all(full.cands[i].state == "merged" for i in merged_combo.meta["combination"]), "members merged with it"
    early = [r for c in full.cands.values() if c.origin != "baseline" for r in full.by_commit[c.commit]
             if r.purpose == "baseline" and r.started_at < c.created_at + 2 * full.run_s]
    assert early, "a winner's own line runs start beside its confirmation"
    for switch, gone in (({"combine": False}, "combos"), ({"speculate": False}, "speculative"),
                         ({"preempt_seconds": 0.0}, "preempted")):
        got = simfarm.Sim(16, seed=1, search=SearchSettings(**switch)).run(2 * 3600)
        assert getattr(got, gone) == 0, switch
        assert all(getattr(got, k) > 0 for k in ("combos", "speculative", "preempted") if k != gone), switch
    few = simfarm.Sim(2, seed=1).run(2 * 3600)  # below min_workers: no speculation, preemption or early line runs
    assert few.speculative == 0 and few.preempted == 0


# ---------------------------------------------------------------------------------- bench/farm_search.py's pure parts

from bench import farm_search as fsearch  # noqa: E402
from bench import search_kit as kit  # noqa: E402


def _surface_gains(source):
    """Every single-constant step the mutate proposer can take from ``source``, with its TRUE gain."""
    surf = mutate._Surface(source)
    prop = mutate.MutateProposer(profile="gpu", exclude=kit.EXCLUDE)
    base = kit.true_value(source)
    out = {}
    for name in prop.targets(surf.consts):
        assert name not in surf.print_only
        out[name] = [(o, base - kit.true_value(surf.apply([o]))) for o in surf.options(name)]
    return out


def test_search_landscape_has_independent_gains_neutral_constants_and_a_crash_region():
    src = kit.train_source(3.0, 0)
    gains = _surface_gains(src)
    assert set(gains) == set(kit.BOWLS) | set(kit.NEUTRAL)  # SLEEP, NOISE, JITTER, REPLICATE... never mutated
    for name in kit.BOWLS:  # each bowl's best single step gains 0.005-0.01, and some steps hurt
        best = max(g for _, g in gains[name])
        assert 0.005 <= best <= 0.01, (name, best)
        assert min(g for _, g in gains[name]) < -0.002
    for name in kit.NEUTRAL:
        assert all(g == 0 for _, g in gains[name])
    # independent: a step's gain is the same on a main line where another constant has moved
    moved = src.replace("DEPTH = 4 ", "DEPTH = 8 ", 1)
    lr = dict((o.text, g) for o, g in gains["LEARNING_RATE"])
    assert {o.text: g for o, g in _surface_gains(moved)["LEARNING_RATE"]} == pytest.approx(lr)
    assert kit.baseline_true() == pytest.approx(kit.true_value(src)) and kit.optimum_true() == 1.0
    assert kit.baseline_true() - fsearch.DEFAULT_TARGET > 2 * max(max(g for _, g in gains[n]) for n in kit.BOWLS)
    opt = {n: b[1] for n, b in kit.BOWLS.items()}
    assert kit.crash_reason(opt) == ""  # the optimum just fits; a larger batch or depth on it does not
    assert "out of memory" in kit.crash_reason(opt | {"TOTAL_BATCH": 2**19})
    assert "out of memory" in kit.crash_reason(opt | {"DEPTH": 9})
    assert kit.true_value(src.replace("TOTAL_BATCH = 2**16", "TOTAL_BATCH = 2**20").replace("DEPTH = 4 ", "DEPTH = 8 "))\
        == math.inf


def test_search_landscape_optima_are_reachable_by_mutate_steps():
    """A greedy walk over the proposer's own steps reaches every bowl's optimum (the TRUE optimum, 1.0)."""
    src = kit.train_source(3.0, 0)
    for _ in range(30):
        steps = [(g, o) for opts in _surface_gains(src).values() for o, g in opts if g > 1e-12]
        if not steps:
            break
        src = mutate._Surface(src).apply([max(steps, key=lambda s: s[0])[1]])
    assert kit.true_value(src) == pytest.approx(1.0, abs=1e-9)
    assert kit.constants(src)["TOTAL_BATCH"] == 2**18 and kit.constants(src)["ADAM_BETA2"] == pytest.approx(0.98)


def test_search_true_value_reads_the_spellings_mutate_writes():
    src = kit.train_source(2.5, 3)
    c = kit.constants(src)
    assert c["SLEEP"] == 2.5 and c["REPLICATE"] == 3 and c["TOTAL_BATCH"] == 2**16 and c["DEPTH"] == 4
    for spelling, value in (("2**17", 2**17), ("3 * 2**15", 3 * 2**15), ("2 ** 18", 2**18)):
        assert kit.constants(src.replace("TOTAL_BATCH = 2**16", f"TOTAL_BATCH = {spelling}"))["TOTAL_BATCH"] == value
    assert kit.constants("X = 1\nY = foo()\nlower = 2\nZ = -0.5\n") == {"X": 1, "Z": -0.5}


def test_search_train_py_scores_its_landscape_with_gpu_like_noise_on_the_farms_seed(tmp_path):
    import os
    import subprocess
    import sys

    from worker import summary, tripwire

    src = kit.train_source(0.0, 0)
    assert tripwire.check(src) is None and tripwire.uses_farm_seed(src)  # the farm's seed: repeats are new draws

    def run(text, seed):
        (tmp_path / "train.py").write_text(text)
        p = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, capture_output=True, text=True,
                           env=dict(os.environ, AUTORESEARCH_SEED=str(seed)))
        return p

    def bpb(text, seed):
        p = run(text, seed)
        assert p.returncode == 0, p.stderr
        block = summary.parse_summary(p.stdout)
        assert summary.is_valid(block) is None and block["seed_seen"] == seed
        return block["val_bpb"]

    a1, a1b, a2 = bpb(src, 1), bpb(src, 1), bpb(src, 2)
    assert abs(a1 - a1b) < 6 * kit.JITTER  # same text, same seed: the jitter alone
    assert abs(a1 - kit.true_value(src)) < 5 * kit.NOISE and abs(a1 - a2) > 1e-6
    assert abs(bpb(kit.train_source(0.0, 1), 1) - a1) > 1e-6  # another replicate's text: another draw
    crash = src.replace("TOTAL_BATCH = 2**16", "TOTAL_BATCH = 2**20").replace("DEPTH = 4 ", "DEPTH = 8 ")
    p = run(crash, 1)
    assert p.returncode != 0 and "out of memory" in p.stderr


def test_search_time_to_merges_false_merges_and_speedup():
    traj = [(0.0, 1.06), (10.0, 1.05), (20.0, 1.05), (30.0, 1.039), (40.0, 1.03)]
    assert kit.time_to(traj, 1.04) == 30.0 and kit.time_to(traj, 1.0) == math.inf
    assert kit.merges_of(traj, 30.0) == (3, 1)  # the merge at 20 s did not lower the TRUE value
    assert kit.merges_of(traj, 5.0) == (0, 0)
    assert kit.speedup([100.0, 200.0, math.inf], [20.0, 40.0, 50.0]) == pytest.approx(5.0)
    assert kit.speedup([math.inf, math.inf], [10.0, 20.0]) == math.inf
    assert kit.speedup([10.0], [math.inf]) == 0.0
    assert math.isnan(kit.speedup([math.inf], [math.inf])) and math.isnan(kit.speedup([], [1.0]))
    lo, hi = kit.bootstrap([100.0, 120.0, 140.0], [20.0, 30.0, 40.0])
    assert 100 / 40 <= lo <= 4.0 <= hi <= 140 / 20
    assert kit.bootstrap([50.0], [10.0]) == (5.0, 5.0) and all(math.isnan(x) for x in kit.bootstrap([], [1.0]))
    reps = [{"time": 30.0, "wall": 31.0, "runs": 40, "merges": 3, "false": 1, "stale": 2, "crashes": 1},
            {"time": math.inf, "wall": 100.0, "runs": 90, "merges": 2, "false": 0},
            {"time": 50.0, "wall": 52.0, "runs": 60, "merges": 5, "false": 0}]
    x = kit.row(8, reps)
    assert x["median_s"] == 50.0 and x["reached"] == 2 and x["runs"] == 60 and x["merges"] == 3
    assert x["false"] == 1 and x["merged"] == 10 and x["gpu_s"] == 8 * 50.0
    assert x["gpu_s_per_merge"] == pytest.approx((8 * 30 / 3 + 8 * 50 / 5) / 2)
    line = kit.table_row(x)
    assert line.startswith("| 8 | 2 of 3 | 50 | 30, never, 50 |") and "1 of 10" in line
    assert kit.HEADER.count("|---") == len(kit.COLUMNS) == line.count(" | ") + 1


def test_search_features_and_config_overrides():
    from dataclasses import dataclass, field

    from cluster.config import FarmConfig

    @dataclass(frozen=True)
    class Search:
        combine: bool = True
        speculate: bool = False

    @dataclass(frozen=True)
    class WithSearch:
        search: Search = field(default_factory=Search)

    assert fsearch.search_features(WithSearch()) == {"search.combine": True, "search.speculate": False}
    assert fsearch.search_features(object()) == {}
    assert fsearch.parse_set(["judge.confirm=false", "proposer.queue_margin=4", "run.tag=x"]) == {
        "judge.confirm": False, "proposer.queue_margin": 4, "run.tag": "x"}
    with pytest.raises(SystemExit):
        fsearch.parse_set(["confirm"])
    cfg = fsearch.config(fsearch.Path("/tmp/x"), 8, 2, 2.5, {"judge.confirm": False})
    assert isinstance(cfg, FarmConfig) and cfg.workers.count == 8 and cfg.proposer.seed == 2
    assert cfg.proposer.kind == "mutate" and cfg.train.budget == 2.5 and not cfg.judge.confirm
    assert set(kit.EXCLUDE) <= set(cfg.proposer.exclude) and cfg.run.tag == "s8r2"
