"""The real coding-agent CLIs (opencode, codex; the pinned npm packages of tests/agentkit.py) against a
scripted model of the tests' own (tests/agentkit.py: a loopback OpenAI-compatible server), offline.

Each test runs the real CLI in a git-initialised scratch copy of a "user repository", configured as
the farm's agent proposer configures it (``agentkit.run_cli``: its own HOME and XDG dirs, a generated
provider config, cwd and PWD), and the scripted model drives the CLI's OWN edit tool: opencode's
``read`` then ``edit``, codex's ``apply_patch`` (through its ``exec_command`` tool), then a last
text with ``DESCRIPTION: ...``. The tests assert what the CLI did to the files, what it printed
(its JSON events: the texts and the token counts) and what it sent (model, key, tools).

They go through ``run_cli``, not through proposer/agent.py yet, so that they pin the CLIs' own
behaviour (the PWD test below documents one the farm must handle); pointing them at the proposer
is a swap of that one helper.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import agentkit
from tests.agentkit import AgentServer, Final, Script, codex_edit, down_url, opencode_edit, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

TRAIN = "import math\n\nDEPTH = 6  # layers\nMATRIX_LR = 0.04  # lr\n\nprint(math.pi * DEPTH)\n"
PREPARE = '"""frozen harness"""\nEVAL_TOKENS = 1000\n'
PROGRAM = "# program\nLower val_bpb.\n"
KEY = "sk-farm-test-7f3a"
MODEL = "farm-coder-1"
PROMPT = "Edit train.py to implement one experiment, then print DESCRIPTION: <what you changed>."
OLD, NEW = "MATRIX_LR = 0.04  # lr", "MATRIX_LR = 0.05  # lr"
EDITED = TRAIN.replace(OLD, NEW)
DESCRIPTION = "Raise MATRIX_LR to 0.05"


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main", *args],
                   cwd=cwd, check=True, capture_output=True)


def _tree(path: Path) -> Path:
    path.mkdir(parents=True)
    for name, text in (("train.py", TRAIN), ("prepare.py", PREPARE), ("program.md", PROGRAM)):
        (path / name).write_text(text)
    return path


@pytest.fixture
def user_repo(tmp_path: Path) -> Path:
    """The user's repository: a git repo whose files the agent must never touch."""
    repo = _tree(tmp_path / "user")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "baseline")
    return repo


@pytest.fixture
def scratch(tmp_path: Path, user_repo: Path) -> Path:
    """A git-initialised scratch copy of the user's files, where the agent runs."""
    path = tmp_path / "scratch"
    shutil.copytree(user_repo, path, ignore=shutil.ignore_patterns(".git"))
    _git(path, "init", "-q")
    return path


def _files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(root).parts}


def _assert_sent(server: AgentServer, api: str, tools: set[str]) -> None:
    reqs = server.model_requests(api)
    assert reqs, server.requests
    assert not server.errors, server.errors
    assert [r.path for r in server.requests if r not in reqs] == [], "the CLI asked for something else"
    assert {r.model for r in reqs} == {MODEL}
    assert {r.authorization for r in reqs} == {f"Bearer {KEY}"}
    assert all(r.body.get("stream") is True for r in reqs)
    agent = server.agent_requests(api)
    assert agent and tools <= set(agent[0].tools), agent[0].tools


def _edit_in_scratch(preset: str, clis, scratch: Path, user_repo: Path, tmp_path: Path):
    """One scripted edit of train.py by the real ``preset`` CLI in the scratch copy: it exits 0, the
    scratch copy holds exactly the edit, the user's repository is as it was. Returns (run, server)."""
    before = _files(user_repo)
    with AgentServer((opencode_edit if preset == "opencode" else codex_edit)(OLD, NEW, DESCRIPTION)) as server:
        run = run_cli(preset, scratch, PROMPT, server, clis=clis, home=tmp_path / "home", model=MODEL, api_key=KEY)
    assert run.returncode == 0, run.log
    assert _files(scratch) == {"train.py": EDITED, "prepare.py": PREPARE, "program.md": PROGRAM}, run.log
    assert _files(user_repo) == before
    return run, server


# --- opencode: chat completions, its read and edit tools ------------------------------------------

def test_opencode_edits_train_py_with_its_edit_tool(agent_clis, scratch, user_repo, tmp_path):
    run, server = _edit_in_scratch("opencode", agent_clis, scratch, user_repo, tmp_path)

    # its JSON events: the tool calls ran, the last text carries the DESCRIPTION, the tokens add up
    tools = [(e["part"]["tool"], e["part"]["state"]["status"]) for e in run.events if e.get("type") == "tool_use"]
    assert tools == [("read", "completed"), ("edit", "completed")], run.log
    assert any(f"DESCRIPTION: {DESCRIPTION}" in t for t in run.texts()), run.log
    assert run.tokens() == (120 + 120 + 200, 30 + 30 + 40), run.log  # the scripted usage of the 3 agent turns

    # what it sent: chat completions only, our model and key, its tools; the paths it was given
    _assert_sent(server, "chat", {"read", "edit", "write", "bash"})
    agent = server.agent_requests("chat")
    assert len(agent) == 3, [r.body.get("messages", [])[-1:] for r in agent]
    ctx = agentkit.chat_context(agent[-1].body)
    assert ctx.workdir == str(scratch)
    assert "Edit applied successfully" in ctx.tool_results[-1]
    assert PROMPT in " ".join(agentkit.texts_of(agent[0].body["messages"]))
    assert run.env["PWD"] == str(scratch) and run.env["HOME"] == str(tmp_path / "home")


def test_opencode_with_an_inherited_pwd_edits_that_directory(agent_clis, scratch, user_repo, tmp_path):
    """The farm's bug today: the agent started with cwd=scratch but the farm's own PWD inherited.
    opencode takes its working directory from $PWD, not from its cwd, so it edits the train.py
    where PWD points (here: the user's repository) and leaves the scratch copy alone."""
    with AgentServer(opencode_edit(OLD, NEW, DESCRIPTION)) as server:
        run = run_cli("opencode", scratch, PROMPT, server, clis=agent_clis, home=tmp_path / "home",
                      model=MODEL, api_key=KEY, pwd=str(user_repo))
    assert run.returncode == 0, run.log
    assert agentkit.chat_context(server.agent_requests("chat")[0].body).workdir == str(user_repo)
    assert (user_repo / "train.py").read_text() == EDITED, run.log
    assert (scratch / "train.py").read_text() == TRAIN


@pytest.mark.parametrize("preset", ["opencode", "codex"])
def test_the_directory_on_the_command_line_overrides_an_inherited_pwd(agent_clis, scratch, user_repo, tmp_path,
                                                                       preset):
    """The fix: name the scratch copy on the command line (opencode --dir, codex -C); then the
    inherited PWD does not matter and the scratch copy is what gets edited."""
    script = (opencode_edit if preset == "opencode" else codex_edit)(OLD, NEW, DESCRIPTION)
    with AgentServer(script) as server:
        run = run_cli(preset, scratch, PROMPT, server, clis=agent_clis, home=tmp_path / "home",
                      model=MODEL, api_key=KEY, pwd=str(user_repo), dir_flag=True)
    assert run.returncode == 0, run.log
    assert (scratch / "train.py").read_text() == EDITED, run.log
    assert (user_repo / "train.py").read_text() == TRAIN
    context = agentkit.chat_context if preset == "opencode" else agentkit.responses_context
    assert context(server.agent_requests()[0].body).workdir == str(scratch)


def test_codex_with_an_inherited_pwd_still_edits_its_cwd(agent_clis, scratch, user_repo, tmp_path):
    """codex takes its working directory from its cwd: an inherited PWD does not move it."""
    with AgentServer(codex_edit(OLD, NEW, DESCRIPTION)) as server:
        run = run_cli("codex", scratch, PROMPT, server, clis=agent_clis, home=tmp_path / "home",
                      model=MODEL, api_key=KEY, pwd=str(user_repo))
    assert run.returncode == 0, run.log
    assert (scratch / "train.py").read_text() == EDITED, run.log
    assert (user_repo / "train.py").read_text() == TRAIN


# --- codex: the Responses API, apply_patch through exec_command ------------------------------------

def test_codex_applies_a_patch_to_train_py(agent_clis, scratch, user_repo, tmp_path):
    run, server = _edit_in_scratch("codex", agent_clis, scratch, user_repo, tmp_path)

    changes = [e["item"] for e in run.events
               if e.get("type") == "item.completed" and e.get("item", {}).get("type") == "file_change"]
    assert [(c["path"], c["kind"]) for ch in changes for c in [ch["changes"][0]]] == \
        [(str(scratch / "train.py"), "update")], run.log
    assert any(f"DESCRIPTION: {DESCRIPTION}" in t for t in run.texts()), run.log
    assert run.tokens() == (120 + 200, 30 + 40), run.log

    _assert_sent(server, "responses", {"exec_command"})
    agent = server.agent_requests("responses")
    assert len(agent) == 2
    ctx = agentkit.responses_context(agent[-1].body)
    assert ctx.workdir == str(scratch)
    assert "Success. Updated the following files" in ctx.tool_results[-1], ctx.tool_results
    assert PROMPT in " ".join(agentkit.texts_of(agent[0].body["input"]))


# --- failures: an endpoint that is down, a script that finishes without editing --------------------

@pytest.mark.parametrize("preset", ["codex"])
def test_a_down_endpoint_fails_the_cli_in_bounded_time(agent_clis, scratch, tmp_path, preset):
    """Connection refused: codex (2 retries, as cli_files configures it) gives up in ~3 s. opencode's
    session retry is fixed in its code (5 retries, 2 s doubling: 69-76 s measured) and cannot be
    shortened; it is not run here (70 s of the suite), and the farm checks that the endpoint answers
    before it starts either CLI (tests/farm/test_agent_farm.py)."""
    run = run_cli(preset, scratch, PROMPT, down_url(), clis=agent_clis, home=tmp_path / "home",
                  model=MODEL, api_key=KEY, timeout=agentkit.DOWN_TIMEOUT[preset])
    assert run.returncode is not None, f"still running after {run.elapsed:.0f}s:\n{run.log}"
    assert run.returncode != 0, run.log
    assert (scratch / "train.py").read_text() == TRAIN
    errors = [e for e in run.events if e.get("type") in ("error", "turn.failed")]
    assert errors, run.log


@pytest.mark.parametrize("preset", ["opencode", "codex"])
def test_a_rejected_key_fails_the_cli_at_once(agent_clis, scratch, tmp_path, preset):
    with AgentServer(fail_status=401) as server:
        run = run_cli(preset, scratch, PROMPT, server, clis=agent_clis, home=tmp_path / "home",
                      model=MODEL, api_key=KEY, timeout=40)
    assert run.returncode not in (0, None), run.log
    assert run.elapsed < 30, run.log
    assert "401" in run.stdout, run.log
    assert (scratch / "train.py").read_text() == TRAIN


@pytest.mark.parametrize("preset", ["opencode", "codex"])
def test_an_answer_without_an_edit_leaves_the_files(agent_clis, scratch, tmp_path, preset):
    with AgentServer(Script([Final("I changed nothing.")])) as server:
        run = run_cli(preset, scratch, PROMPT, server, clis=agent_clis, home=tmp_path / "home",
                      model=MODEL, api_key=KEY)
    assert run.returncode == 0, run.log
    assert _files(scratch) == {"train.py": TRAIN, "prepare.py": PREPARE, "program.md": PROGRAM}
    assert run.texts() and "I changed nothing." in run.texts()[-1]


# --- containment: the CLI's own guards against edits outside its directory --------------------------

def test_codex_sandbox_keeps_patches_and_commands_in_the_scratch_dir(agent_clis, scratch, user_repo, tmp_path):
    """workspace-write with /tmp and $TMPDIR excluded (cli_files): a patch to the user's train.py
    (also under /tmp here) is refused, and a shell command cannot write there (read-only mount)."""
    before = _files(user_repo)
    target = user_repo / "train.py"
    patch = agentkit.apply_patch_text(str(target), OLD, NEW)
    script = Script([
        agentkit.Call("exec_command", {"cmd": f"apply_patch <<'PATCH'\n{patch}PATCH\n"}),
        agentkit.Call("exec_command", {"cmd": f"echo x >> {target}; echo outside=$?; echo y >> train.py; echo inside=$?"}),
        Final("DESCRIPTION: tried"),
    ])
    with AgentServer(script) as server:
        run = run_cli("codex", scratch, PROMPT, server, clis=agent_clis, home=tmp_path / "home",
                      model=MODEL, api_key=KEY)
    assert run.returncode == 0, run.log
    results = agentkit.responses_context(server.agent_requests("responses")[-1].body).tool_results
    assert "patch rejected: writing outside of the project" in results[0], results
    assert "outside=1" in results[1] and "inside=0" in results[1], results
    assert _files(user_repo) == before
    assert (scratch / "train.py").read_text() == TRAIN + "y\n"


def test_opencode_refuses_an_edit_outside_its_directory(agent_clis, scratch, user_repo, tmp_path):
    """`opencode run` auto-rejects the external_directory permission: reading or editing a path
    outside its working directory ($PWD's, see above) fails the tool call and ends the run."""
    before = _files(user_repo)
    target = str(user_repo / "train.py")
    script = Script([agentkit.Call("read", {"filePath": target}),
                     agentkit.Call("edit", {"filePath": target, "oldString": OLD, "newString": NEW}),
                     Final("DESCRIPTION: tried")])
    with AgentServer(script) as server:
        run = run_cli("opencode", scratch, PROMPT, server, clis=agent_clis, home=tmp_path / "home",
                      model=MODEL, api_key=KEY)
    assert _files(user_repo) == before
    assert (scratch / "train.py").read_text() == TRAIN
    tools = [(e["part"]["tool"], e["part"]["state"]["status"]) for e in run.events if e.get("type") == "tool_use"]
    assert tools == [("read", "error")], run.log
    assert "external_directory" in run.stderr, run.log


# --- through the farm's own proposer, in its view --------------------------------------------------

@pytest.mark.parametrize("preset", ["opencode", "codex"])
def test_the_proposer_runs_the_real_cli_in_its_view(preset, agent_clis, tmp_path, monkeypatch):
    """proposer/agent.py itself runs the CLI: its scratch copy, its generated config, and (where the
    machine has one) the sandbox's view as uid 65534; the CLI's own edit tool still works there."""
    from proposer.agent import AgentProposer
    from proposer.base import History
    from worker.sandbox import view_support

    monkeypatch.setenv("PATH", f"{agent_clis.bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}")
    monkeypatch.setenv("FARM_TEST_KEY", KEY)
    script = (opencode_edit if preset == "opencode" else codex_edit)(OLD, NEW, DESCRIPTION)
    with AgentServer(script) as server:
        proposer = AgentProposer(agent=preset, model=MODEL, base_url=server.base_url, api_key_env="FARM_TEST_KEY",
                                 program=PROGRAM, files={"prepare.py": PREPARE}, timeout=90.0)
        out = proposer.propose(1, History(base_commit="f00dfeed" * 5, base_source=TRAIN))
    assert len(out) == 1, proposer.last_error
    [p] = out
    assert "invalid" not in p.meta, (p.meta.get("invalid"), p.meta["log"])
    assert p.source == EDITED and p.description == DESCRIPTION, p.meta["log"]
    _assert_sent(server, "chat" if preset == "opencode" else "responses", set())
    layers = set(p.meta["containment"].split(","))
    assert {"view", "pidns", "unprivileged"} <= layers if view_support().view else "view" not in layers
