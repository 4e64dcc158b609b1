"""The farm with the proposers that take outside input: an LLM over the real `openai` client (a
loopback OpenAI-compatible server, tests/openai_stub.py), and human patches and ideas sent with
`submit`. Ray, Redis, git and the workers are real; training is the scripted stand-in."""

from __future__ import annotations

import difflib
import json
import subprocess
import sys

import pytest

from cluster.records import State
from tests.farmkit import Farm, farm_config, git, make_repo
from tests.openai_stub import OpenAIStub, text

pytestmark = pytest.mark.slow


def diff_setting(repo, name: str, old: str, new: str) -> str:
    """A unified diff of train.py changing one constant, as a model would write it."""
    src = (repo / "train.py").read_text()
    line = next(ln for ln in src.splitlines() if ln.startswith(f"{name} = "))
    changed = src.replace(line, line.replace(f"{name} = {old}", f"{name} = {new}"), 1)
    # in memory: the stub may answer two requests at once
    return "".join(difflib.unified_diff(src.splitlines(True), changed.splitlines(True), "a/train.py", "b/train.py"))


def test_llm_candidates_crash_repair_and_invalid_answers_flow_through_the_farm(ray_local, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-123")
    repo = make_repo(tmp_path / "target")
    crash = diff_setting(repo, "MODE", '"ok"', '"crash"')
    fresh = iter(range(10**6))

    def respond(body, index):
        last = body["messages"][-1]["content"]
        if "# A candidate crashed" in last:  # the crash repair: a fix that is also a clear win
            fixed = (repo / "train.py").read_text().replace("BONUS = 0.001", "BONUS = 0.05")
            return text("Fix the crash and raise BONUS\n```python\n" + fixed + "```")
        if len(body["messages"]) > 2:  # the repair round after a refused answer: still no code
            return text("I would rather not write code.")
        k = next(fresh)
        if k == 0:
            return text("Try a crash\n```diff\n" + crash + "```")
        if k == 1:
            return text("Just thinking out loud, no code here.")
        return text(f"Neutral change {k}\n```diff\n" + diff_setting(repo, "UNUSED", "10", str(100 + k)) + "```")

    with OpenAIStub(responder=respond) as stub:
        cfg = farm_config(repo, **{
            "workers.count": 1, "judge.baseline_runs": 2, "proposer.queue_margin": 0, "run.max_experiments": 4,
            "proposer.kind": "llm", "proposer.base_url": stub.url, "proposer.model": "stub-model",
            "proposer.fallback": "", "proposer.concurrency": 1, "proposer.max_retries": 0,
        })
        farm = Farm(cfg, program="# program\nLower val_bpb.\n")
        try:
            why = farm.run()
            cands = [c for c in farm.store.candidates() if c.origin != "baseline"]
            crash_results = [r.status for r in farm.store.results(next(
                c for c in cands if c.description == "Try a crash").id)]
            everything = {k: farm.store.r.dump(k) for k in farm.store.r.scan_iter(f"{farm.store.p}*")}
            secrets_seen = {r.summary.get("secret_seen") for r in farm.store.results() if r.status == "ok"}
        finally:
            farm.close()
    assert why == "4 experiments done"
    crashed = next(c for c in cands if c.description == "Try a crash")
    assert crashed.state == State.DISCARDED.value
    assert crash_results == ["crash"]
    fix = next(c for c in cands if c.parent == crashed.id)
    assert fix.origin == "llm" and fix.state == State.MERGED.value, "the repair was measured and merged"
    assert fix.meta["tokens"] == {"prompt": 100, "completion": 50}
    invalid = [c for c in cands if c.state == State.INVALID.value]
    assert len(invalid) == 1 and "no ```diff or ```python block" in invalid[0].decision["reason"]
    assert invalid[0].meta["rounds"] == 2, "refused only after one repair round"
    assert stub.bodies()[0]["model"] == "stub-model"
    assert stub.requests[0]["headers"]["authorization"] == "Bearer sk-test-secret-123", "the proposer has the key"
    assert secrets_seen == {"no"}, "no training run sees it"
    assert not any(b"sk-test-secret-123" in (v or b"") for v in everything.values()), "no record holds it"
    assert "Lower val_bpb." in stub.bodies()[0]["messages"][0]["content"] + stub.bodies()[0]["messages"][-1]["content"]


def test_a_submitted_patch_is_validated_queued_and_merged(ray_local, tmp_path):
    repo = make_repo(tmp_path / "target")
    farm = Farm(farm_config(repo, **{"judge.baseline_runs": 2}), [])
    try:
        farm.store.send("patch", diff_setting(repo, "BONUS", "0.001", "0.05"), "a human's idea")
        farm.store.send("patch", "--- a/prepare.py\n+++ b/prepare.py\n@@ -1 +1 @@\n-x\n+y\n")
        farm.run()
        by = farm.by_description()
        refused = [c for c in farm.store.candidates() if c.state == State.INVALID.value]
    finally:
        farm.close()
    assert by["a human's idea"].origin == "human" and by["a human's idea"].state == State.MERGED.value
    assert len(refused) == 1 and "prepare.py" in refused[0].decision["reason"]


def test_submit_command_checks_the_patch_and_queues_it_for_a_stopped_run(ray_local, tmp_path):
    repo = make_repo(tmp_path / "target")
    farm = Farm(farm_config(repo, **{"judge.baseline_runs": 1}), [])
    farm.run()
    farm.close()
    patch = tmp_path / "win.diff"
    patch.write_text(diff_setting(repo, "BONUS", "0.001", "0.05"))
    cli = [sys.executable, "-m", "cluster.cli", "submit", "--repo", str(repo), "--tag", "t1"]
    good = subprocess.run(cli + ["--patch", str(patch), "--description", "win"], capture_output=True, text=True)
    assert good.returncode == 0 and "patch sent to run t1" in good.stdout and "--resume" in good.stdout
    bad = tmp_path / "bad.diff"
    bad.write_text("--- a/train.py\n+++ b/train.py\n@@ -1,1 +1,1 @@\n-no such line\n+x\n")
    refused = subprocess.run(cli + ["--patch", str(bad)], capture_output=True, text=True)
    assert refused.returncode == 2 and "does not apply" in refused.stderr
    idea = subprocess.run(cli + ["--idea", "try a deeper model"], capture_output=True, text=True)
    assert idea.returncode == 0 and "idea sent" in idea.stdout
    resumed = Farm(farm_config(repo, **{"judge.baseline_runs": 1}), [], resume=True)
    try:
        resumed.run()
        assert resumed.by_description()["win"].state == State.MERGED.value
        assert [i["text"] for i in resumed.store.ideas()] == ["try a deeper model"]
        assert git(repo, "rev-parse", "autoresearch/t1").strip() == resumed.by_description()["win"].commit
    finally:
        resumed.close()
    assert json.loads(subprocess.run([sys.executable, "-m", "cluster.cli", "status", "--repo", str(repo), "--tag", "t1",
                                      "--json"], capture_output=True, text=True).stdout)["status"] == "done"


def test_run_with_the_llm_flags_records_origin_tokens_and_cost(tmp_path):
    """The issue's command line, against a loopback server that answers per the contract."""
    repo = make_repo(tmp_path / "target")
    counter = iter(range(10**6))

    def respond(body, index):
        k = next(counter)
        return text(f"Neutral change {k}\n```diff\n" + diff_setting(repo, "UNUSED", "10", str(200 + k)) + "```")

    cfg = tmp_path / "farm.toml"
    cfg.write_text("[train]\nbudget = 1.0\ngrace = 20.0\nprepare_command = []\ntrusted_eval = false\n"
                   "[workers]\ngpus_per_worker = 0.0\nprice_per_gpu_hour = 2.0\n[judge]\nbaseline_runs = 2\n"
                   "[proposer]\nfallback = \"\"\nprice_per_mtok_in = 1.0\nprice_per_mtok_out = 4.0\n")
    with OpenAIStub(responder=respond) as stub:
        run = subprocess.run([sys.executable, "-m", "cluster.cli", "run", "--config", str(cfg), "--proposer", "llm",
                              "--base-url", stub.url, "--model", "stub-model", "--workers", "2", "--budget", "1",
                              "--max-experiments", "4", "--tag", "L", "--no-dashboard"],
                             cwd=repo, capture_output=True, text=True, timeout=300)
        requests = len(stub.requests)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "4 experiments done" in run.stdout
    base = [sys.executable, "-m", "cluster.cli"]
    status = json.loads(subprocess.run(base + ["status", "--config", str(cfg), "--tag", "L", "--json"], cwd=repo,
                                       capture_output=True, text=True).stdout)
    cost = status["cost"]
    admitted = sum(status["candidates"].values()) - 1  # the baseline aside
    # every answer is billed (100 prompt + 50 completion tokens each), also one that arrived after the
    # last experiment was admitted and never became a candidate
    billed = cost["prompt_tokens"] // 100
    assert cost["prompt_tokens"] == 100 * billed and cost["completion_tokens"] == 50 * billed
    assert 4 <= admitted <= billed <= requests, (admitted, billed, requests)
    assert cost["gpu_hours"] == 0.0, "CPU workers hold no GPU"
    assert cost["usd"] == pytest.approx((100 * billed * 1.0 + 50 * billed * 4.0) / 1e6)
    assert cost["per_experiment"]["usd"] == pytest.approx(cost["usd"] / 4)
    rows = json.loads(subprocess.run(base + ["results", "--config", str(cfg), "--tag", "L", "--format", "json"],
                                     cwd=repo, capture_output=True, text=True).stdout)
    measured = [r for r in rows if r["purpose"] == "measure"]
    assert len(measured) == 4 and all(r["origin"] == "llm" and r["llm_prompt_tokens"] == 100 for r in measured)
    human = subprocess.run(base + ["status", "--config", str(cfg), "--tag", "L"], cwd=repo, capture_output=True,
                           text=True).stdout
    assert "per experiment" in human and "LLM tokens" in human
