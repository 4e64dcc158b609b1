"""The noise floor `status` reports, from recorded results: measured from the main line's
seed-varied repeats, pooled per accelerator, with a prior that disagrees made visible."""

from __future__ import annotations

import dataclasses

import numpy as np

from cluster.records import Result
from cluster.report.status import _noise_lines, noise_floor

META = {"config": {"judge": {"default_noise": 0.002}}, "seeding": "farm"}


def runs(commit: str, vals, acc: str = "cpu") -> list[Result]:
    return [Result(job=f"{commit}-{i}", cand="c", commit=commit, attempt=1, status="ok", val_bpb=float(v),
                   accelerator=acc, purpose="baseline", seed=i + 1) for i, v in enumerate(vals)]


def test_a_measured_floor_twice_the_prior_is_reported_with_the_prior_flagged():
    rng = np.random.default_rng(0)
    lineage = [runs(f"m{k}", 1.0 + rng.normal(0, 0.004, 3)) for k in range(20)]
    n = noise_floor(META, lineage)
    cpu = n["by_accelerator"]["cpu"]
    assert (cpu["runs"], cpu["commits"]) == (60, 20)
    assert 0.003 < cpu["measured"] < 0.006 and cpu["prior_disagrees"], cpu
    assert 0.002 < cpu["sigma"] < cpu["measured"], "the prior still weighs a little"
    (line,) = _noise_lines(n)
    assert line.startswith("noise 0.00") and "from 60 runs of 20 main-line commits on cpu" in line
    assert "the prior disagrees with what was measured" in line


def test_a_floor_that_agrees_with_the_prior_is_not_flagged_and_a_self_seeding_target_claims_none():
    rng = np.random.default_rng(1)
    lineage = [runs(f"m{k}", 1.0 + rng.normal(0, 0.002, 3)) for k in range(20)]
    assert not noise_floor(META, lineage)["by_accelerator"]["cpu"]["prior_disagrees"]
    same = noise_floor(dict(META, seeding="itself"), lineage)
    assert same["by_accelerator"] == {}
    assert "seeds itself" in _noise_lines(same)[0] and "prior 0.0020" in _noise_lines(same)[0]
    assert "until the main line has repeats" in _noise_lines(noise_floor(META, [runs("m0", [1.0])]))[0]


def test_runs_recorded_without_a_seed_or_on_one_seed_are_not_a_measured_floor():
    """A run stored before the farm assigned seeds repeated its commit's one seed: its spread is jitter."""
    old = [dataclasses.replace(r, seed=None) for r in runs("m0", [1.0, 1.0001, 0.9999])]
    one_seed = [dataclasses.replace(r, seed=1) for r in runs("m1", [1.0, 1.0001, 0.9999])]
    assert noise_floor(META, [old, one_seed])["by_accelerator"] == {}
