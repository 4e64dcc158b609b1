"""The loss curve: parsed from the real train.py's output, kept in the Result (old records still load),
filled in by the worker at the end and shown while the run goes on (its heartbeat info)."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest

from tests.worker.test_train import run, small_corpus, workdir  # noqa: F401 -- small_corpus is a fixture
from worker.actor import Worker
from worker.contract import Result
from worker.curve import MAX_POINTS, CurveFollower, parse_curve, parse_line, parse_points
from worker.settings import WorkerSettings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def farm_line(step: int, loss: float, spent: float, budget: float = 60) -> str:
    return (f"step {step:05d} | loss {loss:.6f} | smooth {loss:.4f} | lr x1.000 | 95 ms | 43,000 tok/s "
            f"| epoch 1 | {spent:.1f}/{budget:.0f}s")


@pytest.mark.slow
def test_the_curve_of_a_real_train_py_run(small_corpus, tmp_path):  # noqa: F811
    _, env = small_corpus
    out = run(workdir(tmp_path), dict(env, AUTORESEARCH_TIME_BUDGET="3"), "train.py", timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    printed = [float(x) for x in re.findall(r"^step \d+ \| loss (\S+) ", out.stdout, flags=re.M)]
    curve = parse_curve(out.stdout, budget=3.0)
    assert len(printed) >= 3 and len(curve) == len(printed), "every step line is a point (fewer than 200)"
    assert [c[1] for c in curve] == pytest.approx(printed)
    progress = [c[0] for c in curve]
    assert progress == sorted(progress) and progress[0] == 0.0, "the first step is outside the budget"
    assert progress[-1] == 1.0, "the last step spends the budget"
    assert curve[-1][1] < curve[0][1], "it learns"
    assert parse_curve(out.stdout) == curve, "the printed budget (3s) gives the same progress"


def test_thinning_keeps_at_most_max_points_and_averages_groups():
    text = "\n".join(farm_line(i + 1, 6.0 - i / 1000, 60 * i / 999) for i in range(1000))
    curve = parse_curve(text, budget=60)
    assert len(curve) <= MAX_POINTS and len(curve) >= MAX_POINTS // 2
    assert curve[0] == [pytest.approx(sum(60 * i / 999 for i in range(5)) / 5 / 60, abs=1e-3),
                        pytest.approx(6.0 - 0.002, abs=1e-6)], "a group of 5 steps, averaged"
    assert curve[-1][0] == pytest.approx(1.0, abs=0.01)
    assert len(parse_curve(text, max_points=10)) == 10


def test_junk_lines_bad_losses_and_a_second_run_are_tolerated():
    text = "\n".join([
        "device: cpu | seed: 1 | params: 1.05M",
        farm_line(1, 6.2, 0.0),
        "UserWarning: something in the middle",
        farm_line(2, float("nan"), 0.5) + "\r" + farm_line(3, 6.0, 1.0),  # a carriage return ends a line
        "step 00004 | loss abc | smooth x | 2.0/60s",  # not a number: skipped
        "step 00005 | loss 5.9 no budget figure",
        farm_line(6, 5.8, 66.0),  # past the budget: progress 1
        "---", "val_bpb: 1.0",
    ])
    assert parse_points(text, budget=60) == [(0.0, 6.2), (1.0 / 60, 6.0), (1.0, 5.8)]
    again = text + "\n" + farm_line(1, 7.0, 0.0) + "\n" + farm_line(2, 6.5, 30.0)
    assert parse_points(again, budget=60) == [(0.0, 7.0), (0.5, 6.5)], "the last run counts"
    assert parse_curve("no step lines at all\n---\nval_bpb: 1.0\n") == []


def test_the_budget_figures():
    line = farm_line(3, 5.0, 1.5, budget=2)  # a 2.4 s budget prints as "2s"
    assert parse_line(line, budget=2.4) == (3, pytest.approx(1.5 / 2.4), 5.0), "the caller's, rounded alike"
    assert parse_line(line) == (3, 0.75, 5.0), "else the printed one"
    assert parse_line(line, budget=60) == (3, 0.75, 5.0), "a caller's budget the run did not have is not used"
    assert parse_line(farm_line(3, 5.0, 0.0, budget=0)) is None, "a budget printed as 0s gives no progress"


def test_an_upstream_step_line_gives_its_printed_percentage():
    line = "\rstep 00120 (41.5%) | loss: 3.412345 | lrm: 1.00 | dt: 310ms | tok/sec: 1,690,000 | mfu: 40.1% | epoch: 1 | remaining: 175s    "
    assert parse_line(line.strip()) == (120, pytest.approx(0.415), 3.412345)
    assert parse_points("\r".join([line, line.replace("00120 (41.5%)", "00121 (41.9%)")])) == [
        (pytest.approx(0.415), 3.412345), (pytest.approx(0.419), 3.412345)]


def test_a_follower_fed_chunk_by_chunk_equals_the_whole_parse():
    lines = [farm_line(i + 1, 6 - i / 10, i) for i in range(30)]
    f = CurveFollower(budget=60)
    for i in range(0, 30, 7):
        f.feed("\n".join(lines[i : i + 7]))
    assert f.curve() == parse_curve("\n".join(lines), budget=60)


def test_the_result_keeps_its_curve_and_old_records_still_load():
    r = Result(job="j1", cand="c1", commit="abc", attempt=1, status="ok", val_bpb=1.0,
               loss_curve=[[0.0, 6.2], [0.5, 4.1], [1.0, 3.7]])
    back = Result.from_json(r.to_json())
    assert back == r and back.loss_curve == [[0.0, 6.2], [0.5, 4.1], [1.0, 3.7]]
    assert json.loads(r.to_json())["loss_curve"] == [[0.0, 6.2], [0.5, 4.1], [1.0, 3.7]]
    records = json.loads((FIXTURES / "pre_layout_run" / "records.json").read_text())
    stored = [json.loads(v) for k, rec in records.items() if k.endswith(":results") for v in rec["value"]]
    assert stored and all("loss_curve" not in d for d in stored), "the fixture predates the curve"
    for d in stored:
        old = Result.from_dict(d)
        assert old.loss_curve == [] and old.job == d["job"] and old.val_bpb == d.get("val_bpb")


STEPPING = """\
import time
for step in range(1, 21):
    spent = (step - 1) * 0.05
    print(f"step {step:05d} | loss {6.0 - step / 10:.6f} | smooth 6.0 | lr x1.000 | 50 ms | 1 tok/s | epoch 1 | {spent:.1f}/1s", flush=True)
    time.sleep(0.1)
print("---")
print("val_bpb:          1.500000")
print("training_seconds: 1.0")
"""


def test_the_worker_records_the_curve_and_shows_it_while_the_run_goes_on(tmp_path):
    s = WorkerSettings(name="w0", work_root=str(tmp_path / "work"), command=["python", "train.py"], budget=1.0,
                       grace=20.0, isolate_network=False, cpu_threads=1, device="cpu")
    w = Worker(s)
    assert "curve" not in w.info(), "no run, no curve"
    seen: list[dict] = []
    stop = threading.Event()

    def watch() -> None:  # as the controller's heartbeat asks, from another thread (the actor's second one)
        while not stop.is_set():
            if (c := w.info().get("curve")) and c["points"]:
                seen.append(c)
            time.sleep(0.2)

    t = threading.Thread(target=watch)
    t.start()
    try:
        job = {"id": "j000009", "cand": "c0003", "commit": "abc", "attempt": 1, "purpose": "measure"}
        t0 = time.time()
        out = w.run(job, {"train.py": STEPPING.encode(), "prepare.py": b""}, harness_digest="d")
    finally:
        stop.set()
        t.join()
    r = Result.from_dict(out["result"])
    assert r.status == "ok" and len(r.loss_curve) == 20
    assert r.loss_curve[0] == [0.0, pytest.approx(5.9)]
    assert r.loss_curve[-1] == [pytest.approx(float(f"{19 * 0.05:.1f}")), pytest.approx(4.0)]
    assert seen and all(c["job"] == "j000009" for c in seen)
    assert all(t0 <= c["since"] <= time.time() for c in seen), "when the run started: the dashboard's elapsed time"
    assert any(len(c["points"]) < 20 for c in seen), "the curve so far, before the run ended"
    assert "curve" not in w.info(), "gone with the run"
