"""The coding-agent proposer with a fake agent CLI: a real subprocess, written by the test, that
edits train.py, edits prepare.py (refused), hangs (killed at the timeout), or does nothing.
"""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import pytest

from proposer.agent import AgentProposer, from_settings
from proposer.base import History, Outcome
from proposer.llm import FallbackProposer

TRAIN = "import math\n\nDEPTH = 6  # layers\nMATRIX_LR = 0.04  # lr\n\nprint(math.pi * DEPTH)\n"
PREPARE = '"""frozen harness"""\nEVAL_TOKENS = 1000\n'

FAKE_AGENT = r'''
import os, sys, time
from pathlib import Path

prompt_file, workdir, mode = sys.argv[1], sys.argv[2], sys.argv[3]
prompt = Path(prompt_file).read_text()
assert Path.cwd() == Path(workdir), (Path.cwd(), workdir)
print("fake agent read", len(prompt), "chars of prompt")
train = Path("train.py")
if mode == "edit":
    train.write_text(train.read_text().replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.05"))
    Path(".agent-state").mkdir(exist_ok=True)
    Path(".agent-state", "session.json").write_text("{}")  # agent state in a dot-dir is ignored
    print("DESCRIPTION: Raise MATRIX_LR to 0.05")
elif mode == "edit-from-prompt":  # each run picks its depth from the focus line of its prompt
    depth = 7 + sum(map(ord, prompt.split("Focus on:")[1].split(".")[0])) % 50
    train.write_text(train.read_text().replace("DEPTH = 6", f"DEPTH = {depth}"))
    time.sleep(0.3)
elif mode == "prepare":
    train.write_text(train.read_text().replace("DEPTH = 6", "DEPTH = 8"))
    Path("prepare.py").write_text(Path("prepare.py").read_text().replace("1000", "10"))
    print("DESCRIPTION: deeper, and a smaller evaluation")
elif mode == "new-file":
    Path("helpers.py").write_text("X = 1\n")
    train.write_text("import helpers\n" + train.read_text())
elif mode == "hang":  # with a helper process, which must die with it
    import subprocess
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    Path(os.environ["PID_FILE"]).write_text(str(helper.pid))
    print("thinking...", flush=True)
    time.sleep(60)
elif mode == "fix":
    assert "IndexError: boom" in prompt, prompt
    train.write_text(train.read_text().replace("DEPTH = 99", "DEPTH = 6"))
    print("DESCRIPTION: keep DEPTH at 6")
elif mode == "nothing":
    print("I looked around and changed nothing")
    sys.exit(3)
'''


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    path = tmp_path / "fake_agent.py"
    path.write_text(textwrap.dedent(FAKE_AGENT))
    return path


def agent(fake: Path, mode: str, **kw) -> AgentProposer:
    kw = {"program": "PROGRAM TEXT", "files": {"prepare.py": PREPARE}, "timeout": 20.0, **kw}
    return AgentProposer([sys.executable, str(fake), "{prompt_file}", "{workdir}", mode], **kw)


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
    copy = tmp_path / "prompt-copy.txt"
    cmd = ["sh", "-c", f'cp "$1" {copy}; sed -i s/0.04/0.06/ train.py; ls > /dev/null', "sh", "{prompt_file}"]
    h = history(outcomes=[Outcome({"description": "DEPTH 6 -> 8"}, "ok", 0.0123)], baseline_bpb=1.5,
                best_bpb=1.49, pending_descriptions=["queued X"], ideas=["idea A", "idea B"])
    [p] = AgentProposer(cmd, program="PROGRAM TEXT", files={"prepare.py": PREPARE}).propose(1, h)
    prompt = copy.read_text()
    for part in ("program.md", "+0.012300  DEPTH 6 -> 8", "1.500000", "queued X", "idea A", "idea B",
                 "DESCRIPTION:", "Do not change, create or delete any other file"):
        assert part in prompt, part
    assert p.description == "MATRIX_LR 0.04 -> 0.06"  # derived: the agent printed no DESCRIPTION line


def test_a_change_to_prepare_py_is_refused(fake):
    [p] = agent(fake, "prepare").propose(1, history())
    assert "prepare.py" in p.meta["invalid"] and "only train.py may change" in p.meta["invalid"]


def test_a_new_file_is_refused(fake):
    [p] = agent(fake, "new-file").propose(1, history())
    assert "helpers.py" in p.meta["invalid"]


def test_a_hanging_agent_is_killed_at_the_timeout(fake, tmp_path):
    pid_file = tmp_path / "pid"
    t0 = time.monotonic()
    [p] = agent(fake, "hang", timeout=1.0, env={"PID_FILE": str(pid_file)}).propose(1, history())
    assert time.monotonic() - t0 < 15
    assert "timeout" in p.meta["invalid"] and "thinking..." in p.meta["log"]
    helper = Path(f"/proc/{int(pid_file.read_text())}/status")
    deadline = time.monotonic() + 5
    while helper.exists() and "zombie" not in helper.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not helper.exists() or "zombie" in helper.read_text()  # the agent's helper died with it


def test_an_agent_that_changes_nothing_is_dropped_with_a_reason(fake):
    [p] = agent(fake, "nothing").propose(1, history())
    assert "exactly as it was" in p.meta["invalid"] and "exited with status 3" in p.meta["invalid"]
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
