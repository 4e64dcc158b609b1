"""The coding-agent proposer with stand-in agent CLIs: real subprocesses, written by the test, that
behave like the real ones where it matters to the farm: one edits train.py, edits prepare.py
(refused), hangs (killed at the timeout), does nothing, edits ``$PWD/train.py`` as opencode does,
writes into the user's repository (refused, loudly), fails as a CLI with its endpoint down does
(the fallback proposes), or echoes its prompt and then prints its final message and token counts in
opencode's, codex's or Claude Code's JSON shapes. The presets' commands, environments and
generated configs are checked as built.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from cluster import config
from cluster.errors import ConfigError
from cluster.report.status import format_status
from proposer import agents
from proposer.agent import AgentProposer, from_settings, start_notes
from proposer.base import History, Outcome, fingerprint
from proposer.llm import FallbackProposer
import worker.sandbox
from worker.sandbox import TOKEN_VAR, view_support
from worker.sandbox.view import Support

needs_view = pytest.mark.skipif(not view_support().view, reason="no private view on this machine: "
                                + view_support().why)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TRAIN = "import math\n\nDEPTH = 6  # layers\nMATRIX_LR = 0.04  # lr\n\nprint(math.pi * DEPTH)\n"
PREPARE = '"""frozen harness"""\nEVAL_TOKENS = 1000\n'

FAKE_AGENT = r'''
import json, os, subprocess, sys, tempfile, time
from pathlib import Path

prompt_file, workdir, mode = sys.argv[1], sys.argv[2], sys.argv[3]
prompt = Path(prompt_file).read_text()
assert Path.cwd() == Path(workdir), (Path.cwd(), workdir)
print("fake agent read", len(prompt), "chars of prompt")
train = Path("train.py")


def lr(path):
    path.write_text(path.read_text().replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.05"))


if mode == "edit":
    lr(train)
    Path(".agent-state").mkdir(exist_ok=True)
    Path(".agent-state", "session.json").write_text("{}")  # agent state in a dot-dir is ignored
    print("DESCRIPTION: Raise MATRIX_LR to 0.05")
elif mode == "edit-from-prompt":  # each run picks its depth from the focus line of its prompt
    depth = 7 + sum(map(ord, prompt.split("Focus on:")[1].split(".")[0])) % 50
    train.write_text(train.read_text().replace("DEPTH = 6", f"DEPTH = {depth}"))
    time.sleep(0.3)
elif mode == "pwd-edit":  # opencode: the directory is $PWD, the workspace root its git top level (else /)
    pwd = os.environ.get("PWD", "/")
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=pwd, capture_output=True, text=True)
    print(f"Working directory: {pwd}\nWorkspace root folder: {top.stdout.strip() if top.returncode == 0 else '/'}")
    lr(Path(pwd, "train.py"))
    print("DESCRIPTION: Raise MATRIX_LR to 0.05")
elif mode == "outside":  # a good edit here, and tries to write into the user's repository, as a tool would
    lr(train)
    repo = os.environ["USER_REPO"]
    for what, act in (("train.py", lambda: lr(Path(repo, "train.py"))),
                      ("notes.txt", lambda: Path(repo, "notes.txt").write_text("the agent was here\n")),
                      ("commit", lambda: subprocess.run(["git", "-c", "user.name=a", "-c", "user.email=a@a", "commit",
                                                         "-qam", "agent"], cwd=repo, check=True))):
        try:
            act()
            print("outside: wrote", what)
        except Exception as e:
            print("outside: could not write", what, type(e).__name__)
    print("DESCRIPTION: Raise MATRIX_LR to 0.05")
elif mode == "probe":  # looks around the machine, as a careless or curious agent might, then edits
    def attempt(what, act):
        try:
            act()
            print("probe: reached", what)
        except Exception as e:
            print("probe: refused", what, type(e).__name__)
    secret = os.environ["SECRET_HOME"]
    def read_in(d, name):  # list the directory, then read the file
        print(os.listdir(os.path.join(secret, d)))
        print(open(os.path.join(secret, d, name)).read())
    attempt("ssh", lambda: read_in(".ssh", "id_ed25519"))
    attempt("farm-home", lambda: read_in("autoresearch-farm", "redis.url"))
    attempt("shadow", lambda: open("/etc/shadow").read())
    attempt("repo", lambda: Path(os.environ["USER_REPO"], "notes.txt").write_text("x"))
    attempt("proposer", lambda: open(f"/proc/{os.environ['PROPOSER_PID']}/environ").read())
    lr(train)
    print("DESCRIPTION: Raise MATRIX_LR to 0.05")
elif mode == "fail":  # opencode with its endpoint down: retries, an error event, exit 1
    for i in range(30):
        print(f"retrying the request ({i + 1})")
    print(json.dumps({"type": "error", "error": {"name": "APIError", "data": {
        "message": "Cannot connect to API: connection refused"}}}))
    sys.exit(1)
elif mode.startswith("events-"):  # echo the prompt, edit, then the CLI's own JSON output
    print(prompt)
    lr(train)
    final = "I raised the matrix learning rate.\nDESCRIPTION: Raise MATRIX_LR to 0.05"
    cli = mode.split("-", 1)[1]
    if cli == "opencode":
        events = [{"type": "step_start", "part": {"type": "step-start"}},
                  {"type": "tool_use", "part": {"type": "tool", "tool": "edit", "state": {"status": "completed"}}},
                  {"type": "step_finish", "part": {"type": "step-finish", "reason": "tool-calls", "cost": 0,
                   "tokens": {"total": 1100, "input": 1000, "output": 100, "reasoning": 0,
                              "cache": {"write": 0, "read": 0}}}},
                  {"type": "text", "part": {"type": "text", "text": final}},
                  {"type": "step_finish", "part": {"type": "step-finish", "reason": "stop", "cost": 0,
                   "tokens": {"total": 1250, "input": 1200, "output": 30, "reasoning": 20,
                              "cache": {"write": 0, "read": 800}}}}]
    elif cli == "codex":
        events = [{"type": "thread.started", "thread_id": "t1"}, {"type": "turn.started"},
                  {"type": "item.completed", "item": {"id": "item_0", "type": "agent_message", "text": "Looking."}},
                  {"type": "item.completed", "item": {"id": "item_1", "type": "command_execution",
                   "command": "apply_patch", "exit_code": 0, "status": "completed"}},
                  {"type": "item.completed", "item": {"id": "item_2", "type": "agent_message", "text": final}},
                  {"type": "turn.completed", "usage": {"input_tokens": 3000, "cached_input_tokens": 1000,
                   "output_tokens": 150, "reasoning_output_tokens": 40}}]
    else:  # claude --output-format json: one result object
        events = [{"type": "result", "subtype": "success", "is_error": False, "num_turns": 3, "result": final,
                   "total_cost_usd": 0.0123, "usage": {"input_tokens": 10, "cache_creation_input_tokens": 1500,
                   "cache_read_input_tokens": 490, "output_tokens": 150}}]
    for ev in events:
        print(json.dumps(ev))
elif mode == "env":  # what the agent was given
    print("ENV-DUMP " + json.dumps({"env": dict(os.environ), "argv": sys.argv, "tmp": tempfile.gettempdir()}))
    lr(train)
elif mode == "prepare":
    train.write_text(train.read_text().replace("DEPTH = 6", "DEPTH = 8"))
    Path("prepare.py").write_text(Path("prepare.py").read_text().replace("1000", "10"))
    print("DESCRIPTION: deeper, and a smaller evaluation")
elif mode == "new-file":
    Path("helpers.py").write_text("X = 1\n")
    train.write_text("import helpers\n" + train.read_text())
elif mode == "hang":  # with a helper process, which must die with it
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", os.environ["MARK"]])
    print("thinking...", flush=True)
    time.sleep(60)
elif mode == "fix":
    assert "IndexError: boom" in prompt, prompt
    train.write_text(train.read_text().replace("DEPTH = 99", "DEPTH = 6"))
    print("DESCRIPTION: keep DEPTH at 6")
elif mode == "nothing":
    print("I looked around and changed nothing")
'''


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    path = tmp_path / "fake_agent.py"
    path.write_text(textwrap.dedent(FAKE_AGENT))
    return path


@pytest.fixture
def user_repo(tmp_path: Path) -> Path:
    """The user's repository (the target): a git repository the agent must leave alone."""
    repo = tmp_path / "user-repo"
    repo.mkdir()
    (repo / "train.py").write_text(TRAIN)
    (repo / "prepare.py").write_text(PREPARE)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "baseline"]):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                       capture_output=True)
    return repo


def command(fake: Path, mode: str) -> list[str]:
    return [sys.executable, str(fake), "{prompt_file}", "{workdir}", mode]


def agent(fake: Path, mode: str, **kw) -> AgentProposer:
    kw = {"program": "PROGRAM TEXT", "files": {"prepare.py": PREPARE}, "timeout": 20.0, **kw}
    return AgentProposer(command(fake, mode), **kw)


def history(**kw) -> History:
    return History(base_commit="f00dfeed" * 5, base_source=TRAIN, **kw)


def test_an_edit_of_train_py_becomes_a_proposal(fake):
    h = history(outcomes=[Outcome({"description": "DEPTH 6 -> 8"}, "ok", 0.01)], pending_descriptions=["queued X"],
                ideas=["try a cosine schedule"])
    [p] = agent(fake, "edit").propose(1, h)
    assert "invalid" not in p.meta, p.meta
    assert p.source == TRAIN.replace("0.04", "0.05") and p.origin == "agent"
    assert p.description == "Raise MATRIX_LR to 0.05" and p.meta["idea"] == "try a cosine schedule"
    assert "fake agent read" in p.meta["log"] and p.meta["exit_code"] == 0 and p.meta["repairable"] is True


def test_the_prompt_carries_history_queue_and_ideas(fake, tmp_path):
    cmd = ["sh", "-c", 'cat "$1"; sed -i s/0.04/0.06/ train.py; ls > /dev/null', "sh", "{prompt_file}"]
    h = history(outcomes=[Outcome({"description": "DEPTH 6 -> 8"}, "ok", 0.0123)], baseline_bpb=1.5,
                best_bpb=1.49, pending_descriptions=["queued X"], ideas=["idea A", "idea B"])
    [p] = AgentProposer(cmd, program="PROGRAM TEXT", files={"prepare.py": PREPARE}).propose(1, h)
    prompt = p.meta["log"]  # the prompt file, as the agent read it
    for part in ("program.md", "+0.012300  DEPTH 6 -> 8", "1.500000", "queued X", "idea A", "idea B",
                 "DESCRIPTION:", "Do not change, create or delete any other file"):
        assert part in prompt, part
    assert p.description == "MATRIX_LR 0.04 -> 0.06"  # derived: the agent printed no DESCRIPTION line


def test_the_agent_works_in_its_scratch_copy_whatever_pwd_the_farm_was_started_with(fake, user_repo, monkeypatch):
    """opencode takes its directory from $PWD, not from its cwd: started from the user's
    repository, it edited that repository's train.py. The scratch copy is its workspace root too."""
    monkeypatch.chdir(user_repo)
    monkeypatch.setenv("PWD", str(user_repo))
    [p] = agent(fake, "pwd-edit").propose(1, history())
    assert (user_repo / "train.py").read_text() == TRAIN  # the user's file is as it was
    assert "invalid" not in p.meta, p.meta
    assert p.source == TRAIN.replace("0.04", "0.05") and p.description == "Raise MATRIX_LR to 0.05"
    wd = p.meta["log"].split("Working directory: ")[1].splitlines()[0]
    assert Path(wd).name == "work" and f"Workspace root folder: {wd}\n" in p.meta["log"]


def test_the_agent_gets_a_scrubbed_environment_and_a_home_of_its_own(fake, tmp_path, monkeypatch):
    for name, value in (("OPENAI_API_KEY", "sk-the-key"), ("OTHER_API_KEY", "sk-not-for-agents"),
                        ("RAY_ADDRESS", "10.0.0.1:6379"), ("REDIS_URL", "redis://x"), ("AUTORESEARCH_X", "1"),
                        ("HOME", str(tmp_path / "user-home")), ("XDG_CONFIG_HOME", str(tmp_path / "user-config"))):
        monkeypatch.setenv(name, value)
    cmd = command(fake, "env") + ["--model={model}"]
    a = AgentProposer(cmd, model="m-1", api_key_env="OPENAI_API_KEY", env={"EXTRA": "from agent_env"})
    [p] = a.propose(1, history())
    assert "invalid" not in p.meta, p.meta
    got = json.loads(p.meta["log"].split("ENV-DUMP ", 1)[1].splitlines()[0])
    env, workdir = got["env"], Path(got["argv"][2])
    run = workdir.parent
    assert env["PWD"] == str(workdir) and env["OPENAI_API_KEY"] == "sk-the-key" and env["EXTRA"] == "from agent_env"
    assert env["HOME"] == str(run / "home") and env["TMPDIR"] == str(run / "tmp") == got["tmp"]
    for xdg in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
        assert env[xdg].startswith(str(run / "home") + "/"), xdg
    # the sandbox's own marker of the run's processes is the one AUTORESEARCH_ variable
    assert not [k for k in env if k.startswith(("RAY_", "REDIS", "AUTORESEARCH_")) and k != TOKEN_VAR
                or k == "OTHER_API_KEY"]
    assert got["argv"][-1] == "--model=m-1"
    assert not run.exists()  # the run's directory is gone with it


def test_an_agent_that_writes_into_the_users_repository_is_refused_loudly(fake, user_repo, caplog, monkeypatch):
    """Where the machine has no view (the guard is then all there is), or with the view off."""
    monkeypatch.setattr(worker.sandbox, "view_support", lambda: Support(False, None, why="forced off"))
    a = agent(fake, "outside", env={"USER_REPO": str(user_repo)}, watch=[str(user_repo / "subdir-less"),
                                                                          str(user_repo)])
    with caplog.at_level(logging.ERROR, logger="proposer.agent"):
        [p] = a.propose(1, history())
    reason = p.meta["invalid"]
    assert reason.startswith("the agent changed files outside its scratch copy: ")
    assert str(user_repo / "train.py") in reason and str(user_repo / "notes.txt") in reason
    assert f"{user_repo}: HEAD refs/heads/" in reason  # it committed there too
    assert p.source == ""
    # what the stand-in touched stays touched: the farm cannot undo it, and says so
    assert (user_repo / "train.py").read_text() == TRAIN.replace("0.04", "0.05")
    assert (user_repo / "notes.txt").is_file()
    assert any("cannot undo" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    assert "outside its scratch copy" in a.status()["last_error"]
    assert "view" not in p.meta["containment"].split(",")


@needs_view
def test_in_its_view_an_agent_reaches_nothing_of_the_user_or_the_farm(fake, user_repo, tmp_path, monkeypatch):
    """The agent runs where the farm runs (as root here, as on GPU nodes): it still cannot read the
    user's keys, the farm's home, /etc/shadow or the proposer's environment, nor write the user's
    repository; what it looked at among the credential paths is the proposal's ``denied``."""
    home = tmp_path / "user-home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY")
    (home / "autoresearch-farm").mkdir()
    (home / "autoresearch-farm" / "redis.url").write_text("redis://farm-secret")
    monkeypatch.setenv("HOME", str(home))
    a = agent(fake, "probe", env={"USER_REPO": str(user_repo), "SECRET_HOME": str(home),
                                  "PROPOSER_PID": str(os.getpid())}, watch=[str(user_repo)])
    [p] = a.propose(1, history())
    assert "invalid" not in p.meta, (p.meta.get("invalid"), p.meta["log"])
    assert p.source == TRAIN.replace("0.04", "0.05")  # its own edit came through
    for what in ("ssh", "farm-home", "shadow", "repo", "proposer"):
        assert f"probe: refused {what}" in p.meta["log"], p.meta["log"]
    assert "PRIVATE KEY" not in p.meta["log"] and "farm-secret" not in p.meta["log"]
    assert not (user_repo / "notes.txt").exists()
    assert {"view", "pidns", "unprivileged"} <= set(p.meta["containment"].split(","))
    assert p.meta["denied"] == [str(home / ".ssh"), str(home / "autoresearch-farm")]


@needs_view
def test_in_its_view_an_agent_that_writes_into_the_users_repository_changes_nothing(fake, user_repo):
    a = agent(fake, "outside", env={"USER_REPO": str(user_repo)}, watch=[str(user_repo)])
    [p] = a.propose(1, history())
    assert "invalid" not in p.meta, (p.meta.get("invalid"), p.meta["log"])
    for what in ("train.py", "notes.txt", "commit"):
        assert f"outside: could not write {what}" in p.meta["log"], p.meta["log"]
    assert (user_repo / "train.py").read_text() == TRAIN and not (user_repo / "notes.txt").exists()
    assert subprocess.run(["git", "status", "--porcelain"], cwd=user_repo, capture_output=True, text=True).stdout == ""


def test_a_head_on_a_branch_of_the_farm_may_move_with_a_merge():
    from proposer.agent import RepoGuard

    def state(ref, head):
        return {"/r": {"ref": ref, "head": head, "files": {"train.py": (1, 2)}}}

    farm = "refs/heads/autoresearch/t1"
    assert RepoGuard.changes(state(farm, "a" * 40), state(farm, "b" * 40)) == []
    assert RepoGuard.changes(state("refs/heads/main", "a" * 40), state("refs/heads/main", "b" * 40)) == [
        "/r: HEAD refs/heads/main aaaaaaaa -> refs/heads/main bbbbbbbb"]


def test_a_failing_agent_is_a_failed_request_and_the_fallback_keeps_proposing(fake, tmp_path):
    fb = from_settings({"agent": "custom", "agent_command": command(fake, "fail"),
                        "profile": "gpu", "fallback_cooldown": 1.0, "concurrency": 1})
    assert isinstance(fb, FallbackProposer)
    out = fb.propose(3, history())
    assert len(out) == 3 and {p.origin for p in out} == {"mutate"}
    assert all("invalid" not in p.meta for p in out)
    status = fb.status()
    assert status["usage"]["requests"] == 1  # the call's other runs are skipped, like an LLM's requests
    error = status["last_error"]
    assert error.startswith("the agent python exited with status 1 after ")
    assert "Cannot connect to API: connection refused" in error.splitlines()[0]
    assert "retrying the request (30)" in error and "retrying the request (5)" not in error  # the last 20 lines
    assert status["usage"]["failed"] == 1
    # within the cool-down the agent is not asked; the offline search keeps the workers fed
    again = fb.propose(2, history(tried={fingerprint(p.source) for p in out}))
    assert len(again) == 2 and {p.origin for p in again} == {"mutate"} and fb.status()["usage"]["requests"] == 1
    time.sleep(1.1)
    fb.propose(1, history())
    assert fb.status()["usage"]["requests"] == 2  # asked again after the cool-down
    # `autoresearch-farm status` shows it, with the output's tail
    text = format_status(_status_dict({"last_error": error, "last_error_at": status["last_error_at"]}))
    assert "proposer: last error at " in text and "  | retrying the request (30)" in text


def test_a_preset_whose_endpoint_takes_no_connections_fails_at_once(monkeypatch):
    """opencode retries a dead endpoint for about a minute, codex until its deadline: the farm
    asks the endpoint first, as the LLM proposer's client would find it refusing."""
    for var in agents.PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    fb = from_settings({"agent": "codex", "base_url": url, "model": "m", "profile": "gpu"})
    t0 = time.monotonic()
    out = fb.propose(2, history())
    assert time.monotonic() - t0 < 10 and {p.origin for p in out} == {"mutate"}
    error = fb.status()["last_error"]
    assert error.startswith(f"the agent codex was not started: cannot reach {url}")


def test_the_proposers_last_error_reaches_the_run_record_and_status(tmp_path, redis_client):
    """The path from the proposer actor's status() (ProposerCalls.status) to `autoresearch-farm status`."""
    from cluster.report.status import status_dict
    from tests.parts.test_control_plane import controller

    ctrl = controller(tmp_path, redis_client, 1)
    lines: list[str] = []
    ctrl.intake.report = lines.append
    error = "the agent opencode exited with status 1 after 69 s: Cannot connect to API\nretry 1\nretry 2"
    answers = [{"last_error": error, "last_error_at": 1.7e9, "usage": {"requests": 1, "failed": 1}}] * 2
    ctrl.intake.proposer = type("Calls", (), {"status": lambda self: answers.pop(0) if answers else None})()
    for _ in range(3):
        ctrl.intake._proposer_status()
    assert lines == [f"the proposer reports: {error}"]  # said once
    assert ctrl.store.run_meta()["proposer"]["last_error"] == error
    text = format_status(status_dict(ctrl.store))
    assert "proposer: last error at " in text and ": the agent opencode exited with status 1" in text
    assert "  | retry 2\n" in text


def test_proposer_calls_fetch_the_status_behind_each_round(ray_local):
    import ray

    from cluster.loop.fleet import ProposerCalls

    class _Silent:  # local classes: Ray ships them by value
        def propose(self, n, history):
            return []

    class _Failing(_Silent):
        def status(self):
            return {"last_error": "the agent codex exited with status 1", "usage": {}}

    for cls, want in ((_Failing, "the agent codex exited with status 1"), (_Silent, None)):
        calls = ProposerCalls(ray.remote(cls).options(num_cpus=0).remote())
        calls.ask(1, None)
        got, deadline = None, time.monotonic() + 30
        while time.monotonic() < deadline:
            came, _, why = calls.answer() if calls.asking else (True, [], "")
            assert not why, why
            got = calls.status() if got is None else got
            if came and (got is not None or want is None):
                break
            time.sleep(0.05)
        assert (got or {}).get("last_error") == want


@pytest.mark.slow
def test_a_farm_whose_agent_fails_keeps_its_workers_fed_and_says_why(ray_local, fake, tmp_path):
    """The whole loop: every agent run fails (its endpoint down); the offline search proposes, the
    run reaches its experiment budget instead of running dry after three rounds, and the agent's
    error is in the run's record, its output and `status`."""
    from cluster.report.status import status_dict
    from tests.farmkit import Farm, farm_config, make_repo

    repo = make_repo(tmp_path / "target")
    cfg = farm_config(repo, **{
        "workers.count": 1, "judge.baseline_runs": 2, "proposer.queue_margin": 0, "run.max_experiments": 4,
        "proposer.kind": "agent", "proposer.agent": "custom", "proposer.agent_command": command(fake, "fail"),
        "proposer.concurrency": 1, "proposer.fallback_cooldown": 600.0,
        "proposer.exclude": ["SEED", "MODE", "SLEEP", "NOISE", "JITTER"],
    })
    farm = Farm(cfg, edits=None)
    try:
        why = farm.run()
        cands = [c for c in farm.store.candidates() if c.origin != "baseline"]
        text = format_status(status_dict(farm.store))
        lines = list(farm.lines)
    finally:
        farm.close()
    assert why == "4 experiments done", (why, lines)
    # (the offline search's candidates, and perhaps the farm's own combination of two of them)
    assert {c.origin for c in cands} - {"combine"} == {"mutate"} and not [c for c in cands if c.state == "invalid"]
    assert any(ln.startswith("the proposer reports: the agent python exited with status 1") for ln in lines)
    assert "proposer: last error at " in text and "Cannot connect to API: connection refused" in text


def _status_dict(proposer: dict) -> dict:
    cost = {"gpu_hours": 0.0, "worker_hours": 0.0, "prompt_tokens": 0, "completion_tokens": 0, "usd": 0.0,
            "per_experiment": None, "per_merged": None}
    return {"tag": "t1", "status": "running", "best_bpb": None, "baseline_bpb": None, "candidates": {},
            "queued": 0, "running": [], "workers": {}, "merged": [], "cost": cost, "proposer": proposer}


@pytest.mark.parametrize("cli, prompt_tokens, completion_tokens, cli_cost", [
    ("opencode", 1000 + 1200 + 800, 100 + 30 + 20, None),
    ("codex", 3000, 150, None),
    ("claude", 10 + 1500 + 490, 150, 0.0123),
])
def test_the_final_message_gives_the_description_and_the_tokens_are_counted(fake, cli, prompt_tokens,
                                                                            completion_tokens, cli_cost):
    """The stand-in echoes its prompt (whose placeholder line reads "DESCRIPTION: <one line ...>")
    before its final message: the description is the final message's, never the echo's."""
    a = agent(fake, f"events-{cli}", model="m-1", price_per_mtok_in=2.0, price_per_mtok_out=8.0)
    [p] = a.propose(1, history())
    assert "invalid" not in p.meta, p.meta
    assert "DESCRIPTION: <one line" in p.meta["log"]  # the echo is there
    assert p.description == "Raise MATRIX_LR to 0.05"
    assert p.meta["tokens"] == {"prompt": prompt_tokens, "completion": completion_tokens}
    assert p.meta["cost_usd"] == round(prompt_tokens * 2.0 / 1e6 + completion_tokens * 8.0 / 1e6, 6)
    assert p.meta.get("agent_cost_usd") == cli_cost and p.meta["model"] == "m-1"
    assert a.status()["usage"] == {"requests": 1, "failed": 0, "prompt": prompt_tokens,
                                   "completion": completion_tokens}


def test_without_a_description_the_change_describes_itself():
    assert agents.description_in("DESCRIPTION: <one line, under 100 characters, saying what you changed>") is None
    assert agents.description_in("**DESCRIPTION:** Lower the LR\n") == "Lower the LR"
    cmd = ["sh", "-c", "echo 'DESCRIPTION: <one line, under 100 characters, saying what you changed>'; "
                       "sed -i s/0.04/0.07/ train.py"]
    [p] = AgentProposer(cmd).propose(1, history())
    assert p.description == "MATRIX_LR 0.04 -> 0.07"


def test_a_change_to_prepare_py_is_refused(fake):
    [p] = agent(fake, "prepare").propose(1, history())
    assert "prepare.py" in p.meta["invalid"] and "only train.py may change" in p.meta["invalid"]


def test_a_new_file_is_refused(fake):
    [p] = agent(fake, "new-file").propose(1, history())
    assert "helpers.py" in p.meta["invalid"]


def test_a_hanging_agent_is_killed_at_the_timeout_as_a_failed_request(fake, tmp_path):
    mark = f"helper-of-{tmp_path.name}"  # on the helper's command line: found from outside its PID namespace

    def helpers():
        return [p for p in psutil.process_iter(["cmdline", "status"])
                if mark in (p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE]

    t0 = time.monotonic()
    a = agent(fake, "hang", timeout=3.0, env={"MARK": mark})
    seen: list = []

    def watch():
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            seen.extend(helpers())
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert a.propose(1, history()) == []
    watcher.join()
    assert time.monotonic() - t0 < 20
    assert "ran past its 3 s timeout" in a.last_error and "thinking..." in a.last_error and a.failed_requests == 1
    assert seen, "the helper never started"
    deadline = time.monotonic() + 5
    while helpers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not helpers()  # the agent's helper died with it


def test_an_agent_that_changes_nothing_is_dropped_with_a_reason(fake):
    [p] = agent(fake, "nothing").propose(1, history())
    assert "exactly as it was" in p.meta["invalid"]
    assert p.source == "" and "changed nothing" in p.meta["log"]


def test_a_missing_agent_command_is_reported_and_the_fallback_fills_in():
    missing = AgentProposer(["definitely-not-an-agent-cli", "{prompt}"])
    assert missing.propose(2, history()) == []
    assert "definitely-not-an-agent-cli" in missing.last_error and missing.failed_requests == 2
    fb = from_settings({"agent_command": ["definitely-not-an-agent-cli"], "profile": "gpu"})
    assert isinstance(fb, FallbackProposer)
    out = fb.propose(2, history())
    assert len(out) == 2 and {p.origin for p in out} == {"mutate"}


def test_parallel_runs_give_distinct_candidates(fake):
    out = agent(fake, "edit-from-prompt", concurrency=3).propose(3, history())
    assert len(out) == 3 and all("invalid" not in p.meta for p in out), [p.meta.get("invalid") for p in out]
    assert len({p.source for p in out}) == 3


def test_crash_repair_once(fake):
    crashed = TRAIN.replace("DEPTH = 6", "DEPTH = 99")
    a = agent(fake, "fix")
    fix = a.repair({"description": "deep", "repairable": True, "candidate": "c0003"}, crashed, "IndexError: boom")
    assert fix is not None and "invalid" not in fix.meta and fix.meta["parent"] == "c0003"
    assert fix.source == TRAIN and fix.meta["repairable"] is False
    assert a.repair(fix.meta, fix.source, "IndexError: boom") is None


# ---------------------------------------------------------------------- the presets, as built

KEYED = {"PATH": "/usr/bin:/bin", "FARM_KEY": "sk-farm"}


def test_the_opencode_preset(tmp_path):
    spec = agents.launch("opencode", (), tmp_path, model="qwen-coder", base_url="http://gpu1:8000/v1",
                         api_key_env="FARM_KEY", source=KEYED)
    assert spec.argv == ["opencode", "run", "--dir", "{workdir}", "--format", "json", "-m", "{model}", "{prompt}"]
    assert agents.model_argument("opencode", "qwen-coder", "http://gpu1:8000/v1") == "farm/qwen-coder"
    assert spec.env == {"OPENCODE_CONFIG": str(tmp_path / "opencode.json"), "OPENCODE_DISABLE_AUTOUPDATE": "1",
                        "OPENCODE_DISABLE_LSP_DOWNLOAD": "1", "OPENCODE_DISABLE_MODELS_FETCH": "1"}
    cfg = json.loads((tmp_path / "opencode.json").read_text())
    assert cfg["model"] == "farm/qwen-coder" and cfg["autoupdate"] is False and cfg["share"] == "disabled"
    assert cfg["provider"]["farm"] == {
        "npm": "@ai-sdk/openai-compatible", "name": "autoresearch-farm endpoint",
        "options": {"baseURL": "http://gpu1:8000/v1", "apiKey": "{env:FARM_KEY}"},
        "models": {"qwen-coder": {"name": "qwen-coder"}}}
    # base_url "": opencode's own providers, the model as given (provider/model)
    own = agents.launch("opencode", (), tmp_path, model="anthropic/claude-sonnet-4", source=KEYED)
    assert "provider" not in json.loads((tmp_path / "opencode.json").read_text())
    assert own.argv[-3:-1] == ["-m", "{model}"]
    assert agents.model_argument("opencode", "anthropic/claude-sonnet-4", "") == "anthropic/claude-sonnet-4"


def test_the_codex_preset(tmp_path):
    spec = agents.launch("codex", (), tmp_path, model="gpt-5-codex", base_url="https://api.example.com/v1",
                         api_key_env="FARM_KEY", source=KEYED)
    assert spec.argv == ["codex", "exec", "--json", "--skip-git-repo-check", "--sandbox", "workspace-write",
                         "-C", "{workdir}", "-m", "{model}", "{prompt}"]
    assert spec.env == {"CODEX_HOME": str(tmp_path / ".codex")}
    cfg = tomllib.loads((tmp_path / ".codex" / "config.toml").read_text())
    assert cfg["model"] == "gpt-5-codex" and cfg["model_provider"] == "farm"
    assert cfg["model_providers"]["farm"] == {"name": "autoresearch-farm endpoint",
                                              "base_url": "https://api.example.com/v1", "wire_api": "responses",
                                              "env_key": "FARM_KEY", "request_max_retries": 2,
                                              "stream_max_retries": 2}
    assert cfg["features"] == {"unbounded_connection_retries": False}  # else a dead endpoint hangs it for ever
    assert cfg["sandbox_workspace_write"] == {"exclude_slash_tmp": True, "exclude_tmpdir_env_var": True,
                                              "network_access": False}


def test_the_claude_preset_and_its_endpoint_warning(tmp_path):
    spec = agents.launch("claude", (), tmp_path, model="claude-sonnet-4-5", base_url="http://litellm:4000",
                         api_key_env="FARM_KEY", source=KEYED)
    assert spec.argv == ["claude", "-p", "{prompt}", "--output-format", "json", "--model", "{model}",
                         "--permission-mode", "acceptEdits"]
    assert spec.env == {"ANTHROPIC_BASE_URL": "http://litellm:4000", "ANTHROPIC_API_KEY": "sk-farm",
                        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1"}
    assert agents.launch("claude", (), tmp_path, source=KEYED).argv == [
        "claude", "-p", "{prompt}", "--output-format", "json", "--permission-mode", "acceptEdits"]  # no model
    env = {"PATH": "", "FARM_KEY": "x"}
    warned = agents.notes("claude", base_url="http://vllm:8000/v1", api_key_env="FARM_KEY", environ=env)
    assert any("translating proxy such as LiteLLM" in n for n in warned)
    for ok in ("https://api.anthropic.com", "http://litellm:4000"):
        assert not any("proxy" in n for n in agents.notes("claude", base_url=ok, api_key_env="FARM_KEY", environ=env))
    assert any("not on this machine's PATH" in n and "@anthropic-ai/claude-code" in n for n in warned)


def test_a_custom_agent_needs_its_command_and_the_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match="agent_command"):
        start_notes({"agent": "custom", "agent_command": []})
    with pytest.raises(ValueError, match="proposer.agent must be one of"):
        start_notes({"agent": "aider"})
    custom = agents.launch("custom", ["my-agent", "{model}", "{prompt_file}"], tmp_path)
    assert custom.argv == ["my-agent", "{model}", "{prompt_file}"] and custom.env == {} and custom.files == []
    cfg = config.from_dict({"proposer": {"kind": "agent", "agent": "codex", "agent_env": {"RUST_LOG": "warn"}}})
    assert cfg.proposer.agent == "codex" and cfg.proposer.agent_env == {"RUST_LOG": "warn"}
    assert config.FarmConfig().proposer.agent == "opencode" and config.FarmConfig().proposer.agent_command == ()
    with pytest.raises(ConfigError, match="proposer.agent must be one of"):
        config.from_dict({"proposer": {"agent": "aider"}})
    with pytest.raises(ConfigError, match="proposer.agent_env must be a table of strings"):
        config.from_dict({"proposer": {"agent_env": {"N": 1}}})
