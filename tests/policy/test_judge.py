"""The merge gate on hand-built records: failures, like-with-like, confirmation, noise, simplicity."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from cluster.config import JudgeSettings
from cluster.loop.judge import Decision, Line, decide, line_sigma, margin_now, noise_sigma, pick_merge, repeats
from cluster.records import Candidate, Purpose, Result

H100 = "NVIDIA H100 80GB HBM3"
H200 = "NVIDIA H200"
MAIN = "m1"
_jobs = itertools.count()


def res(
    val: float | None,
    *,
    cand: str = "c0001",
    commit: str = "x1",
    status: str = "ok",
    acc: str = H100,
    purpose: str = Purpose.MEASURE.value,
    vram: float | None = 40000.0,
    reason: str = "",
    t: float = 0.0,
) -> Result:
    n = next(_jobs)
    return Result(
        job=f"j{n:06d}", cand=cand, commit=commit, attempt=1, status=status, val_bpb=val,
        peak_vram_mb=vram, accelerator=acc, purpose=purpose, reason=reason, finished_at=t or float(n),
    )  # fmt: skip


def cand(cid: str = "c0001", base: str = MAIN, added: int = 0, removed: int = 0) -> Candidate:
    return Candidate(
        id=cid, commit=f"x{cid}", base=base, branch=f"candidates/t/{cid}", description="test",
        origin="mutate", lines_added=added, lines_removed=removed,
    )  # fmt: skip


def line(vals: list[float], acc: str = H100, commit: str = MAIN, **kw) -> Line:
    return Line(commit, [res(v, cand="c0000", commit=commit, acc=acc, purpose="baseline") for v in vals], **kw)


BASE3 = [1.000, 1.002, 0.998]  # mean 1.000, sample sd 0.002


# --- failures -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["crash", "timeout", "no-metric"])
def test_failed_runs_are_discarded_with_their_status(status: str) -> None:
    d = decide(cand(), [res(None, status=status, reason="boom at step 3")], line(BASE3))
    assert d.action == "discard"
    assert d.reason.startswith(f"{status}: boom at step 3")


def test_cheat_is_discarded_even_next_to_an_ok_run() -> None:
    rs = [res(0.90), res(None, status="cheat", reason="printed a fake val_bpb")]
    d = decide(cand(), rs, line(BASE3))
    assert d.action == "discard" and d.reason == "cheat: printed a fake val_bpb"


def test_ok_without_a_number_counts_as_no_metric() -> None:
    assert decide(cand(), [res(None)], line(BASE3)).reason.startswith("no-metric")


def test_no_results_waits() -> None:
    assert decide(cand(), [], line(BASE3)).action == "wait"


# --- like with like -------------------------------------------------------------------------


def test_h200_result_against_h100_only_line_asks_for_line_runs() -> None:
    d = decide(cand(), [res(0.99, acc=H200)], line(BASE3, acc=H100))
    assert d.action == "measure_line"
    assert d.numbers["accelerator"] == H200 and d.numbers["line_runs_needed"] == 3


def test_too_few_line_runs_asks_for_the_rest() -> None:
    d = decide(cand(), [res(0.99)], line([1.0]))
    assert d.action == "measure_line" and d.numbers["line_runs_needed"] == 2


def test_uses_the_line_runs_of_the_candidates_accelerator() -> None:
    ln = Line(MAIN, line(BASE3, acc=H100).results + line([0.980, 0.982, 0.978], acc=H200).results)
    # 0.985 would be a big win against H100's 1.000 but is worse than H200's 0.980
    d = decide(cand(), [res(0.985, acc=H200)], ln)
    assert d.numbers["line_mean"] == pytest.approx(0.980)
    assert d.numbers["accelerator"] == H200
    assert d.action == "discard"


def test_most_common_accelerator_wins_and_others_are_ignored() -> None:
    ln = Line(MAIN, line(BASE3, acc=H100).results + line([0.98] * 3, acc=H200).results)
    rs = [res(0.99, acc=H100), res(0.99, acc=H100, purpose="confirm"), res(0.5, acc=H200)]
    d = decide(cand(), rs, ln)
    assert d.numbers["accelerator"] == H100 and d.numbers["n_cand"] == 2
    assert d.action == "merge"


# --- clear winners --------------------------------------------------------------------------


def test_clear_winner_confirms_after_one_run_and_merges_after_two() -> None:
    d1 = decide(cand(), [res(0.990)], line(BASE3))
    assert d1.action == "confirm"
    assert "-0.0100 bpb vs main" in d1.reason and "1 run vs 3" in d1.reason
    d2 = decide(cand(), [res(0.990), res(0.991, purpose="confirm")], line(BASE3))
    assert d2.action == "merge", d2.reason
    for key in ("delta", "margin", "sigma", "n_cand", "n_line", "accelerator", "cand_mean", "line_mean"):
        assert key in d2.numbers
    assert d2.numbers["n_cand"] == 2 and d2.numbers["n_line"] == 3


def test_without_confirm_a_winner_merges_at_once() -> None:
    assert decide(cand(), [res(0.990)], line(BASE3), JudgeSettings(confirm=False)).action == "merge"


def test_a_confirmation_that_does_not_replicate_is_discarded() -> None:
    # the mean of both (0.9925) still clears the pooled margin, the confirmation alone does not
    d = decide(cand(), [res(0.985), res(1.000, purpose="confirm")], line(BASE3))
    assert d.action == "discard" and "did not replicate" in d.reason


def test_a_loss_is_discarded_with_its_numbers() -> None:
    d = decide(cand(), [res(1.004)], line(BASE3))
    assert d.action == "discard" and "+0.0040 bpb vs main" in d.reason


# --- noise ----------------------------------------------------------------------------------


def test_noise_sigma_pools_with_the_prior_and_has_a_floor() -> None:
    cfg = JudgeSettings()
    assert noise_sigma([1.0], cfg) == cfg.default_noise
    assert noise_sigma([1.0], cfg, prior=0.003) == 0.003
    assert noise_sigma([1.0, 1.0, 1.0], JudgeSettings(noise_prior_df=0)) == cfg.min_noise
    assert noise_sigma(BASE3, JudgeSettings(noise_prior_df=0)) == pytest.approx(0.002)
    # a tight baseline is pulled towards the prior, not trusted on 2 degrees of freedom
    tight = noise_sigma([1.0, 1.0001, 0.9999], cfg)
    assert 0.0015 < tight < cfg.default_noise


def _simulate(effect: float, n: int, seed: int, cfg: JudgeSettings = JudgeSettings(), sd: float = 0.002) -> float:
    """Fraction of n candidates with true effect `effect` that merge, each against a fresh 3-run baseline."""
    rng = np.random.default_rng(seed)
    merged = 0
    c = cand()
    for _ in range(n):
        ln = line(list(1.0 + rng.normal(0, sd, 3)))
        rs = [res(float(1.0 + effect + rng.normal(0, sd)))]
        d = decide(c, rs, ln, cfg)
        if d.action == "confirm":
            rs.append(res(float(1.0 + effect + rng.normal(0, sd)), purpose="confirm"))
            d = decide(c, rs, ln, cfg)
        assert d.action in ("merge", "discard"), d
        merged += d.action == "merge"
    return merged / n


def test_pure_noise_rarely_merges() -> None:
    rate = _simulate(0.0, 2000, seed=1)
    assert rate < 0.01, rate


def test_real_improvement_of_001_merges() -> None:
    rate = _simulate(-0.01, 2000, seed=2)
    assert rate > 0.95, rate


# --- simplicity -----------------------------------------------------------------------------


def test_deletion_within_noise_merges_after_confirm() -> None:
    c = cand(added=3, removed=40)
    d1 = decide(c, [res(1.001)], line(BASE3))
    assert d1.action == "confirm" and d1.reason.startswith("simpler: deletes 37 lines within noise")
    d2 = decide(c, [res(1.001), res(1.0005, purpose="confirm")], line(BASE3))
    assert d2.action == "merge", d2.reason


def test_deletion_that_is_clearly_worse_is_discarded() -> None:
    assert decide(cand(removed=40), [res(1.008)], line(BASE3)).action == "discard"


def test_deletion_is_not_special_when_simplify_merges_is_off() -> None:
    assert decide(cand(removed=40), [res(1.001)], line(BASE3), JudgeSettings(simplify_merges=False)).action == "discard"


def test_added_lines_raise_the_bar() -> None:
    rs = [res(0.993), res(0.993, purpose="confirm")]  # -0.007: clears the noise margin, not 200 lines
    small = decide(cand(added=1), rs, line(BASE3))
    big = decide(cand(added=200), rs, line(BASE3))
    assert small.action == "merge", small.reason
    assert big.action == "discard" and "200 added lines" in big.reason
    assert big.numbers["required"] == pytest.approx(big.numbers["margin"] + 0.02)


# --- vram, old base, picking ----------------------------------------------------------------


def test_vram_cap_discards() -> None:
    cfg = JudgeSettings(max_vram_mb=50000)
    assert decide(cand(), [res(0.99, vram=60000)], line(BASE3), cfg).action == "discard"
    assert decide(cand(), [res(0.99, vram=45000)], line(BASE3), cfg).action == "confirm"


def test_old_base_winner_is_rebased_and_loser_discarded() -> None:
    new_line = line([0.990, 0.992, 0.988], commit="m2")
    old = line(BASE3).results
    win = decide(cand(base=MAIN), [res(0.990)], new_line, base_results=old)
    assert win.action == "rebase" and "its base" in win.reason
    lose = decide(cand(base=MAIN), [res(0.999)], new_line, base_results=old)
    assert lose.action == "discard" and "not better than its base" in lose.reason


def test_old_base_without_base_runs_is_rebased() -> None:
    assert decide(cand(base=MAIN), [res(0.99)], line(BASE3, commit="m2")).action == "rebase"


def test_pick_merge_takes_the_lowest_mean() -> None:
    ln = line(BASE3)
    ds = [
        decide(cand(cid), [res(v, cand=cid), res(v, cand=cid, purpose="confirm")], ln)
        for cid, v in (("c1", 0.990), ("c2", 0.985), ("c3", 0.999))
    ]
    assert [d.action for d in ds] == ["merge", "merge", "discard"]
    assert pick_merge(ds) == "c2"
    assert pick_merge([ds[2]]) is None
    assert pick_merge([Decision("merge", "x", {"cand": "a", "delta": -0.01, "cand_mean": 0.99})]) == "a"


# --- training past the budget -------------------------------------------------------------------


def timed(r: Result, wall: float) -> Result:
    return dataclasses.replace(r, train_wall_seconds=wall)


def test_a_candidate_that_trains_past_the_main_lines_wall_time_is_a_cheat() -> None:
    ln = line(BASE3)
    ln = Line(ln.commit, [timed(r, w) for r, w in zip(ln.results, [65.0, 66.0, 64.0])])
    long = decide(cand(), [timed(res(0.980), 78.0)], ln)  # 13 s past the median 65 s; 20 % allows 13 s
    assert long.action == "confirm", "within the allowance: judged on its number"
    longer = decide(cand(), [timed(res(0.980), 80.5)], ln)
    assert longer.action == "discard" and longer.reason.startswith("cheat: trained past its budget")
    assert "ran 80.5 s, the main line's 65.0 s (allowed 13.0 s more)" in longer.reason
    assert longer.numbers["status"] == "cheat"
    off = decide(cand(), [timed(res(0.980), 80.5)], ln, JudgeSettings(max_overtime=0.0))
    assert off.action == "confirm"


def test_overtime_needs_worker_timings_on_both_sides_and_allows_at_least_five_seconds() -> None:
    from cluster.loop.judge import overtime

    short = [timed(res(1.0), 10.0)]
    assert overtime([timed(res(1.0), 14.9)], short) is None  # 20 % of 10 s is 2 s, but 5 s at least
    assert "ran 15.1 s" in overtime([timed(res(1.0), 15.1)], short)
    assert overtime([res(1.0)], short) is None and overtime([timed(res(1.0), 99.0)], [res(1.0)]) is None


# --- seeds and the measured noise floor -------------------------------------------------------


def seeded(val: float, seed: int, **kw) -> Result:
    return dataclasses.replace(res(val, **kw), seed=seed)


def test_the_measured_spread_of_earlier_main_lines_replaces_the_prior_as_it_grows():
    cfg = JudgeSettings()
    tight = [seeded(1.0 + d, s, commit="old", purpose="baseline") for s, d in enumerate([0.0, 0.0004, -0.0004])]
    history = {acc: (h["ss"], h["df"]) for acc, h in repeats([tight] * 10).items()}
    assert history[H100][1] == 20, "2 degrees of freedom per commit of 3 repeats"
    prior_only = noise_sigma([], cfg)
    measured = noise_sigma([], cfg, history=history[H100])
    assert prior_only == cfg.default_noise and measured < prior_only / 2, (prior_only, measured)
    # ... and the judge uses it: a gain that is noise under the prior wins against a tight measured floor
    gain = [res(0.9975)]
    assert decide(cand(), gain, line(BASE3), JudgeSettings(confirm=False)).action == "discard"
    quiet = line([1.0, 1.0004, 0.9996], history=history)
    assert decide(cand(), gain, quiet, JudgeSettings(confirm=False)).action == "merge"


def test_a_target_that_seeds_itself_claims_no_measured_floor_and_counts_repeats_as_one_draw():
    history = {H100: (1e-9, 30.0)}  # a floor that would look tiny, from same-seed repeats
    same = line([1.0, 1.00001, 0.99999], history=history, same_seed=True)
    assert line_sigma(same, H100) == JudgeSettings().default_noise, "the prior, not the jitter of one draw"
    # two runs of a same-seed candidate are one draw: its margin is that of one run vs one
    runs = [seeded(0.9965, 1, purpose="measure"), seeded(0.9965, 1, purpose="confirm")]
    d = decide(cand(), runs, same, JudgeSettings())
    assert d.action == "discard" and "margin 0.0057" in d.reason, d.reason  # 2 * 0.002 * sqrt(2)
    assert margin_now(same, H100) == pytest.approx(2 * 0.002 * 2**0.5)


def test_a_candidate_whose_seed_varied_runs_are_identical_is_a_cheat():
    runs = [seeded(0.990, 1, purpose="measure"), seeded(0.990, 2, purpose="confirm")]
    d = decide(cand(), runs, line(BASE3))
    assert d.action == "discard" and d.reason.startswith("cheat:") and "seeds [1, 2]" in d.reason, d.reason
    honest = [seeded(0.990, 1, purpose="measure"), seeded(0.9903, 2, purpose="confirm")]
    assert decide(cand(), honest, line(BASE3)).action == "merge"
