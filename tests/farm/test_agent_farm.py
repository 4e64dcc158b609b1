"""`autoresearch-farm run --proposer agent` with the real coding-agent CLIs (opencode, the default
preset; codex) against a scripted model of the tests' own on loopback (tests/agentkit.py), started
from inside the user's repository, as a user starts it: the agent edits its scratch copy through
its own edit tool, the candidates train (the scripted train.py) and get a result, the user's
working tree and HEAD stay as they were, and the tokens the CLI reported are recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.agentkit import API_KEY_ENV, AgentServer, Context, Script, codex_edit, down_url, opencode_edit
from tests.farmkit import SCRIPTED_CONFIG, git, make_repo

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]
KEY = "sk-farm-test-agent"
MODEL = "farm-coder-1"
SCRIPTED = Path(__file__).resolve().parents[1] / "fixtures" / "scripted_train.py"  # make_repo's train.py


class Rotating(Script):
    """A new conversation (no tool results yet, tools offered) takes the next of ``scripts``: each
    candidate edits another line, so none is refused as a duplicate."""

    def __init__(self, scripts: list[Script]):
        super().__init__(steps=scripts[0].steps)
        self.scripts, self.turn, self.lock = scripts, -1, threading.Lock()
        self.current = scripts[0]

    def step(self, ctx: Context):
        with self.lock:
            if not ctx.tool_results:
                self.turn += 1
                self.current = self.scripts[self.turn % len(self.scripts)]
            return self.current.step(ctx)


def farm(args: list[str], cwd: Path, env: dict, timeout: float = 360) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def run_agent_farm(tmp_path: Path, clis, preset: str, base_url: str, *, fallback: str = "",
                   experiments: int = 2) -> tuple[subprocess.CompletedProcess, Path, dict, Path]:
    repo = make_repo(tmp_path / "target")
    cfg = tmp_path / "farm.toml"
    cfg.write_text(SCRIPTED_CONFIG + f'agent = "{preset}"\nconcurrency = 1\nfallback = "{fallback}"\n'
                   f'fallback_cooldown = 600.0\napi_key_env = "{API_KEY_ENV}"\n')
    env = {**os.environ, "PATH": f"{clis.bin_dir}{os.pathsep}{os.environ['PATH']}", API_KEY_ENV: KEY}
    before = {"head": git(repo, "rev-parse", "HEAD"), "branch": git(repo, "symbolic-ref", "HEAD"),
              "status": git(repo, "status", "--porcelain"), "train": (repo / "train.py").read_text()}
    out = farm(["run", "--config", str(cfg), "--tag", "A", "--proposer", "agent", "--base-url", base_url,
                "--model", MODEL, "--max-experiments", str(experiments), "--no-dashboard"], cwd=repo, env=env)
    (tmp_path / "before.json").write_text(json.dumps(before))
    return out, repo, env, cfg


def assert_untouched(tmp_path: Path, repo: Path) -> None:
    before = json.loads((tmp_path / "before.json").read_text())
    assert git(repo, "symbolic-ref", "HEAD") == before["branch"] and git(repo, "rev-parse", "HEAD") == before["head"]
    assert git(repo, "status", "--porcelain") == before["status"] == ""
    assert (repo / "train.py").read_text() == before["train"]


def records(repo: Path, cfg: Path, env: dict) -> list[dict]:
    return json.loads(farm(["results", "--config", str(cfg), "--tag", "A", "--format", "json"], cwd=repo,
                           env=env).stdout)


@pytest.mark.parametrize("preset", ["opencode", "codex"])
def test_the_agent_preset_yields_candidates_that_train_and_leaves_the_users_tree_alone(tmp_path, agent_clis, preset):
    edit = opencode_edit if preset == "opencode" else codex_edit
    line = next(ln for ln in SCRIPTED.read_text().splitlines() if ln.startswith("UNUSED = 10"))  # whole: a patch's line
    script = Rotating([edit(line, line.replace("10", "11", 1), "UNUSED to 11"),
                       edit(line, line.replace("10", "12", 1), "UNUSED to 12")])
    with AgentServer(script) as server:
        out, repo, env, cfg = run_agent_farm(tmp_path, agent_clis, preset, server.base_url)
        said = out.stdout + out.stderr
        assert out.returncode == 0, said
        assert server.model_requests(), "the CLI reached the scripted model"
        assert {r.model for r in server.model_requests()} == {MODEL}
        assert all(r.authorization == f"Bearer {KEY}" for r in server.model_requests())
    assert_untouched(tmp_path, repo)
    rows = [r for r in records(repo, cfg, env) if r["purpose"] == "measure"]
    agent_rows = [r for r in rows if r["origin"] == "agent"]
    assert len(agent_rows) == 2 and all(r["status"] == "ok" and r["val_bpb"] for r in agent_rows), rows
    assert {r["description"] for r in agent_rows} == {"UNUSED to 11", "UNUSED to 12"}
    assert all(r["llm_prompt_tokens"] > 0 and r["llm_completion_tokens"] > 0 for r in agent_rows), agent_rows


def test_with_the_endpoint_down_the_fallback_feeds_the_run_and_status_shows_the_agents_error(tmp_path, agent_clis):
    out, repo, env, cfg = run_agent_farm(tmp_path, agent_clis, "opencode", down_url(), fallback="mutate",
                                         experiments=2)
    said = out.stdout + out.stderr
    assert out.returncode == 0 and "2 experiments done" in said, said
    assert_untouched(tmp_path, repo)
    rows = [r for r in records(repo, cfg, env) if r["purpose"] == "measure"]
    assert rows and {r["origin"] for r in rows} == {"mutate"}, rows
    status = farm(["status", "--config", str(cfg), "--tag", "A"], cwd=repo, env=env).stdout
    assert "proposer: last error" in status, status
