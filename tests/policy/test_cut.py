"""The early-cut rule: a candidate's loss at the checkpoint against the main line's curves there."""

from __future__ import annotations

import pytest

from cluster.loop.cut import Rule, decide, loss_at, reference


def curve(start: float, end: float, n: int = 21, upto: float = 1.0) -> list[list[float]]:
    """A straight curve from ``start`` at progress 0 to ``end`` at 1, sampled at n points up to ``upto``."""
    pts = [[i / (n - 1), start + (end - start) * i / (n - 1)] for i in range(n)]
    return [p for p in pts if p[0] <= upto + 1e-9]


LINE = [curve(6.0, 3.0), curve(6.0, 3.1), curve(6.0, 2.9)]  # at p = 0.3: 5.1, 5.07, 5.13: mean 5.1, sd 0.03


def test_loss_at_averages_the_window_and_interpolates_a_sparse_curve():
    c = curve(6.0, 3.0)
    assert loss_at(c, 0.3, window=0.1) == pytest.approx((5.4 + 5.25 + 5.1) / 3), "points at 0.2, 0.25, 0.3"
    assert loss_at(c, 0.3, window=0.0) == pytest.approx(5.1)
    sparse = [[0.0, 6.0], [0.5, 5.0], [1.0, 4.0]]
    assert loss_at(sparse, 0.3, window=0.1) == pytest.approx(5.4), "no point in [0.2, 0.3]: interpolated"
    assert loss_at(curve(6.0, 3.0, upto=0.25), 0.3) is None, "not there yet"
    assert loss_at([], 0.3) is None
    assert loss_at([[0.0, float("nan")], [0.5, 5.0]], 0.3) == pytest.approx(5.0), "a non-finite loss is skipped"


def test_reference_is_the_mean_and_spread_of_the_curves_that_reach_it():
    mean, sd, n = reference(LINE, 0.3, window=0.0)
    assert (mean, n) == (pytest.approx(5.1), 3) and sd == pytest.approx(0.03)
    assert reference([curve(6, 3, upto=0.2)], 0.3) is None
    assert reference([curve(6, 3), curve(6, 3, upto=0.2)], 0.3, 0.0)[2] == 1, "only those that reach p"


def test_relative_rule_cuts_a_candidate_clearly_above_the_line_and_spares_one_near_it():
    rule = Rule(progress=0.3, threshold=0.05, kind="relative", window=0.0)
    bad = decide(curve(6.5, 4.5, upto=0.3), LINE, rule)  # 5.9 at p = 0.3 > 5.1 * 1.05 = 5.355
    assert bad.cut and bad.numbers["bar"] == pytest.approx(5.355) and "cut" in bad.reason
    near = decide(curve(6.0, 3.5, upto=0.3), LINE, rule)  # 5.25 < 5.355
    assert near.action == "go" and not near.cut
    assert decide(curve(6.5, 4.5, upto=0.2), LINE, rule).action == "wait", "before the checkpoint"


def test_spread_rule_uses_the_lines_spread_and_needs_two_curves():
    rule = Rule(progress=0.3, threshold=3.0, kind="spread", window=0.0)
    assert decide(curve(6.0, 3.5, upto=0.3), LINE, rule).cut, "5.25 > 5.1 + 3 * 0.03"
    assert not decide(curve(6.0, 3.25, upto=0.3), LINE, rule).cut, "5.175 < 5.19"
    one = decide(curve(9.0, 9.0, upto=0.3), LINE[:1], rule)
    assert one.action == "go" and "no spread" in one.reason, "one line curve: no spread, no cut"


def test_no_line_curve_at_the_checkpoint_never_cuts():
    rule = Rule(progress=0.5)
    v = decide(curve(9.0, 9.0), [curve(6, 3, upto=0.4)], rule)
    assert v.action == "go" and "nothing to compare" in v.reason
    assert decide(curve(9.0, 9.0), [], rule).action == "go"


def test_rule_parameters_are_checked():
    for bad in (dict(progress=0.0), dict(progress=1.0), dict(kind="absolute"), dict(threshold=-0.1)):
        with pytest.raises(ValueError):
            Rule(**bad)
    assert Rule(0.3, 0.05).label() == "p=0.3 +5%" and Rule(0.5, 3.0, "spread").label() == "p=0.5 +3 sd"


def test_the_benchmark_counts_saved_time_and_wrongful_cuts():
    """bench/early_cut.py's arithmetic on planted runs: one clear loser is cut at p and saves the rest of
    its run, a winner near the line is not cut, a crash before p cannot be."""
    from bench import early_cut

    def run(kind, seed, val, start, end, wall, n=11):
        pts = [[i / (n - 1), start + (end - start) * i / (n - 1), 2.0 + (wall - 4.0) * i / (n - 1)] for i in range(n)]
        return {"kind": kind, "seed": seed, "status": "ok" if val else "crash", "val_bpb": val, "steps": n,
                "wall_seconds": wall, "curve": [p[:2] for p in pts], "points": pts, "description": kind}

    data = {"budget": 10.0, "runs": [
        run("baseline", 1, 2.00, 6.0, 3.0, 14.0), run("baseline", 2, 2.01, 6.0, 3.05, 14.0),
        run("baseline", 3, 1.99, 6.0, 2.95, 14.0),
        run("candidate", 1, 2.50, 6.5, 4.5, 14.0),  # clearly losing from the start
        run("candidate", 1, 1.90, 6.0, 2.9, 14.0),  # a win (beats 2.00 by more than the margin)
        {**run("candidate", 1, None, 6.0, 6.0, 2.5, n=2), "points": [[0.0, 6.0, 2.0], [0.1, 6.0, 2.4]]},  # crashed at 0.1
    ]}
    assert early_cut.schedule(3, 4) == [("baseline", 1), ("candidate", 0), ("candidate", 1), ("baseline", 2),
                                        ("candidate", 2), ("candidate", 3), ("baseline", 3)]
    ev = early_cut.evaluate(data)
    assert ev["wins"] == 1 and ev["n_cand"] == 3 and ev["baseline_mean"] == pytest.approx(2.0)
    row = next(r for r in ev["rows"] if r["rule"] == "p=0.3 +5%")
    # the loser reaches p = 0.3 at 2 + 10 * 0.3 = 5 s of its 14 s: 9 s saved of 14 + 14 + 2.5
    assert row["cut"] == 1 and row["saved"] == pytest.approx(9.0 / 30.5) and row["wrongful_n"] == 0
    assert row["meets"] and row["baseline_cut"] == 0
    assert "p=0.3 +5% | 1 | 29.5% | 0.0% (0/1)" in early_cut.report(data, ev)


def test_the_config_keys_are_off_checked_and_make_the_rule():
    from dataclasses import replace

    from cluster import config
    from cluster.errors import ConfigError
    from cluster.loop.cut import configured

    cfg = config.FarmConfig().judge
    assert cfg.early_cut is False and configured(cfg) is None, "off by default: no rule met the bar"
    assert configured(replace(cfg, early_cut=True)) == Rule(0.2, 0.02, "relative")
    for key, value, words in [("early_cut", True, "cannot be switched on yet"),
                              ("early_cut_progress", 1.5, "between 0 and 1"),
                              ("early_cut_threshold", -0.1, ">= 0")]:
        with pytest.raises(ConfigError, match=words):
            config.from_dict({"judge": {key: value}})
    assert config.from_dict({"judge": {"early_cut_progress": 0.3}}).judge.early_cut_progress == 0.3
