"""The coding-agent proposer (kind "agent"): a coding-agent CLI edits train.py in a scratch directory.

Each proposal is one run of the agent (``opencode run <prompt>`` by default; any command
template, so ``claude -p``, ``codex exec`` or a user's own script work too) in a fresh directory
holding the main line's train.py, the frozen harness (prepare.py) and program.md. The candidate
is whatever the agent left in train.py, validated exactly like an LLM's answer.

The agent is trusted to run, not to obey: every file is hashed before and after, and a run that
changed, added or deleted anything but train.py is refused (its train.py may depend on the
other change). A deadline bounds each run and kills the agent's whole process group; its output
is kept, bounded, in ``meta["log"]``. The proposer runs in a Ray actor on any node, so the files
it needs come in as text (``files``), never from a repository on disk.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

from proposer.base import History, Proposal, ProposerBase, fingerprint
from proposer.patching import Claims, check_source
from proposer.prompts import FALLBACK_PROGRAM, Request, derive_description, plan, task_text

log = logging.getLogger(__name__)

DEFAULT_COMMAND = ("opencode", "run", "{prompt}")
IGNORED_DIRS = ("__pycache__",)  # plus every dot-directory: agents keep their state there
_DESC_RE = re.compile(r"^\s*\**DESCRIPTION\**\s*:\s*(.+?)\s*$", re.I | re.M)


class AgentUnavailable(RuntimeError):
    """The agent command cannot be started at all (not installed, not executable)."""


def _instructions(editable: str) -> str:
    return (f"Edit {editable} in the current directory to implement exactly ONE experiment (edit the file "
            f"itself: program.md's response contract is for chat models, not for you). Do not change, "
            f"create or delete any other file (prepare.py is the frozen harness; any other change gets the "
            f"experiment refused). There is no GPU and no data here: do not train; checking that {editable} "
            f"still parses is fine. When you are done, print a last line of the form\n"
            f"DESCRIPTION: <one line, under 100 characters, saying what you changed>")


def _snapshot(root: Path) -> dict[str, str]:
    """relative path -> content hash (or link target) of every file outside dot-dirs and caches."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in IGNORED_DIRS]
        for name in filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_file():
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _tail(path: Path, limit: int) -> str:
    data = path.read_bytes()
    text = data[-limit:].decode("utf-8", "replace")
    return (f"[... {len(data) - limit} bytes cut ...]\n" + text) if len(data) > limit else text


class AgentProposer(ProposerBase):
    name = "agent"

    def __init__(self, command: Sequence[str] = DEFAULT_COMMAND, *, program: str = "",
                 files: Mapping[str, str] | None = None, editable: str = "train.py", timeout: float = 1800.0,
                 concurrency: int = 1, max_log_chars: int = 20000, env: Mapping[str, str] | None = None,
                 history_limit: int = 20, near_miss_bpb: float = 0.002, crash_repair: bool = True) -> None:
        if not command:
            raise ValueError("the agent command is empty; e.g. ['opencode', 'run', '{prompt}']")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, not {concurrency}")
        self.command, self.program, self.editable = list(command), program, editable
        self.files = dict(files or {})  # e.g. {"prepare.py": text}; copied into every scratch directory
        self.timeout, self.concurrency, self.max_log_chars = timeout, concurrency, max_log_chars
        self.env = dict(env or {})
        self.history_limit, self.near_miss, self.crash_repair = history_limit, near_miss_bpb, crash_repair
        self.last_error: str | None = None
        self.failed_requests = 0  # runs of the latest call that could not start the agent
        self._lock = threading.Lock()

    def propose(self, n: int, history: History) -> list[Proposal]:
        """Up to n proposals (valid, or marked meta["invalid"]); [] with last_error if the agent is missing."""
        self.failed_requests = 0
        claims, dead = Claims(history.tried), threading.Event()

        def one(req: Request) -> Proposal | None:
            if dead.is_set():
                self._fail(None)
                return None
            prompt = self._prompt(task_text(history, req, self.history_limit, self.near_miss))
            meta: dict[str, Any] = {"focus": req.focus} | ({"idea": req.idea} if req.idea else {})
            try:
                return self._run(prompt, history.base_source, claims, meta)
            except AgentUnavailable as e:
                dead.set()
                self._fail(e)
                return None

        if n <= 0:
            return []
        with ThreadPoolExecutor(max_workers=min(n, self.concurrency), thread_name_prefix="agent") as pool:
            out = [p for p in pool.map(one, plan(n, history)) if p is not None]
        if self.failed_requests:
            log.warning("agent: %d of %d runs could not start: %s", self.failed_requests, n, self.last_error)
        return out

    def repair(self, meta: dict[str, Any], source: str, log_tail: str, tried: set[str] | None = None
               ) -> Proposal | None:
        """A fix for a crashed candidate of this proposer, or None (see LLMProposer.repair)."""
        self.failed_requests = 0
        if not self.crash_repair or not meta.get("repairable") or meta.get("parent"):
            return None
        description = str(meta.get("description") or "(no description)")
        task = (f"# A candidate crashed\n\nThe {self.editable} here is a tried change ({description}) exactly as "
                f"it ran, and it crashed. The end of its log:\n\n```\n{log_tail.strip()[-6000:]}\n```\n\n"
                f"Fix the crash while keeping the idea of the change.")
        link = {"parent": meta.get("candidate") or meta.get("fingerprint") or fingerprint(source),
                "repair_of": description, "repairable": False}
        try:
            return self._run(self._prompt(task), source, Claims(tried or ()), link)
        except AgentUnavailable as e:
            self._fail(e)
            return None

    def _prompt(self, task: str) -> str:
        program = "program.md (in this directory)" if self.program else f"this program:\n{FALLBACK_PROGRAM}"
        return (f"You are running one experiment of an autonomous research loop. Read {program}, then "
                f"{self.editable} and prepare.py.\n\n{task}\n\n{_instructions(self.editable)}\n")

    def _fail(self, e: Exception | None) -> None:
        with self._lock:
            self.failed_requests += 1
            if e is not None:
                self.last_error = str(e)

    def _run(self, prompt: str, base: str, claims: Claims, meta: dict[str, Any]) -> Proposal:
        """One agent run in a fresh scratch directory; the proposal (valid or invalid) it yields."""
        with tempfile.TemporaryDirectory(prefix="farm-agent-", ignore_cleanup_errors=True) as tmp:
            work = Path(tmp, "work")
            work.mkdir()
            for rel, content in self.files.items():
                Path(work, rel).parent.mkdir(parents=True, exist_ok=True)
                Path(work, rel).write_text(content)
            if self.program:
                (work / "program.md").write_text(self.program)
            (work / self.editable).write_text(base)
            prompt_file = Path(tmp, "prompt.md")
            prompt_file.write_text(prompt)
            before = _snapshot(work)
            subs = {"{prompt}": prompt, "{prompt_file}": str(prompt_file), "{workdir}": str(work)}
            argv = [_substitute(a, subs) for a in self.command]
            log_path = Path(tmp, "agent.log")
            started = time.monotonic()
            rc, timed_out = self._execute(argv, work, log_path)
            output = _tail(log_path, self.max_log_chars)
            after = _snapshot(work)
            new = (work / self.editable).read_text(errors="replace") if (work / self.editable).is_file() else ""
        meta = dict(meta, log=output, exit_code=rc, seconds=round(time.monotonic() - started, 1))
        others = sorted(p for p in before.keys() | after.keys() if p != self.editable and before.get(p) != after.get(p))
        reason = None
        if timed_out:
            reason = f"the agent ran past its {self.timeout:.0f} s timeout and was killed"
        elif others:
            reason = f"the agent changed {', '.join(others)}; only {self.editable} may change"
        elif after.get(self.editable, "").startswith("link:") or self.editable not in after:
            reason = f"the agent deleted {self.editable} or replaced it with a link"
        else:
            reason = check_source(base, new, editable=self.editable)
            if reason is None and not claims.claim(new):
                reason = "this exact change was already tried or queued on this main line"
        found = _DESC_RE.findall(output)
        description = found[-1][:120] if found else (derive_description(base, new) if new and new != base else "")
        if reason is not None:
            if rc:
                reason += f" (the agent exited with status {rc})"
            log.info("agent: run refused: %s", reason)
            desc = description or "invalid agent proposal"
            return Proposal(desc, new if new != base else "", self.name,
                            dict(meta, description=desc, invalid=reason))
        full = {"repairable": self.crash_repair} | meta | {"description": description}
        return Proposal(description, new, self.name, full)

    def _execute(self, argv: list[str], cwd: Path, log_path: Path) -> tuple[int, bool]:
        """Run argv in its own process group; (exit status, timed out). The group dies either way."""
        env = dict(os.environ, **self.env)
        with open(log_path, "wb") as out:
            try:
                proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, env=env, start_new_session=True)
            except OSError as e:
                raise AgentUnavailable(f"cannot start the agent {argv[0]!r}: {e}; install it or set "
                                       f"proposer.agent_command") from None
            timed_out = False
            try:
                proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                try:  # kill the group: the agent on a timeout, and any helpers it left running
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            rc = proc.wait()
        return rc, timed_out


def _substitute(arg: str, subs: dict[str, str]) -> str:
    """One pass, so a prompt that mentions "{workdir}" is passed on as written."""
    return re.sub(r"\{(?:prompt|prompt_file|workdir)\}", lambda m: subs[m.group(0)], arg)


def from_settings(settings: dict[str, Any]) -> Any:
    """The "agent" proposer from the [proposer] settings, wrapped in the fallback like "llm"."""
    from proposer.llm import with_fallback

    agent = AgentProposer(
        command=settings.get("agent_command", DEFAULT_COMMAND), program=settings.get("program", ""),
        files=settings.get("files"), editable=settings.get("editable", "train.py"),
        timeout=settings.get("agent_timeout", 1800.0), concurrency=settings.get("concurrency", 1),
        env=settings.get("agent_env"), history_limit=settings.get("history_limit", 20),
        near_miss_bpb=settings.get("near_miss_bpb", 0.002), crash_repair=settings.get("crash_repair", True))
    return with_fallback(agent, settings)
