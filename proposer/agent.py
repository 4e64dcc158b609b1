"""The coding-agent proposer (kind "agent"): a coding-agent CLI edits train.py in a scratch copy.

Each proposal is one run of the agent (a preset of proposer/agents.py: opencode, codex, Claude Code,
or any command template) in a fresh scratch copy holding the main line's train.py, the frozen
harness (prepare.py) and program.md. The candidate is whatever the agent left in train.py,
validated exactly like an LLM's answer. The proposer runs in a Ray actor on any node, so the files
it needs come in as text (``files``), never from a repository on disk.

Confinement. The scratch copy is a git repository of its own (its files committed), so a CLI that
looks for its workspace root stops there; the agent runs with its cwd and $PWD in it, HOME, XDG_*
and TMPDIR in its run directory (where the preset's generated config lives) and a scrubbed
environment. The agent is trusted to run, not to obey: every file of the scratch copy is hashed
before and after (a run that changed, added or deleted anything but train.py is refused), and the
user's repositories (``watch``: the target, and where the farm was started) are fingerprinted
before and after: a change there refuses the candidate and is logged as an error, since the farm
cannot undo it. A deadline bounds each run and kills the agent's whole process tree.

Where the machine allows it, the agent runs in the sandbox's view (:mod:`worker.sandbox.view`)
as a training run does, with the network (it talks to its model): it sees its run directory
(read-write), the system and the interpreter, the agent's own installation and the paths its
command names (read-only), and nothing else of the user or the farm, as uid 65534 where the
farm is root. The canaries it touched are the proposal's ``denied``; its layers, ``containment``.

Failure. A run that exits non-zero or past its deadline is a failed request, like an endpoint that
cannot be reached: its exit status and the tail of its output are ``last_error`` (the proposer's
``status()``), it counts in ``failed_requests``, and FallbackProposer lets the offline search fill
in, asking the agent again after the cool-down. The description and the tokens come from the CLI's
structured output (its final message; see agents.read_report).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

from proposer import agents
from proposer.base import History, Proposal, ProposerBase, fingerprint
from proposer.patching import Claims, check_source
from proposer.prompts import FALLBACK_PROGRAM, Request, derive_description, plan, task_text
from worker.sandbox import View, start_sandboxed

log = logging.getLogger(__name__)

IGNORED_DIRS = ("__pycache__",)  # plus every dot-directory: agents keep their state there
TAIL_LINES = 20  # of a failed run's output, in its error
MAX_READ = 64 * 1024 * 1024  # bytes of an agent's output read for its structured report
SCRATCH_GIT = ("-c", "user.name=autoresearch-farm", "-c", "user.email=farm@localhost", "-c", "commit.gpgsign=false",
               "-c", "init.defaultBranch=main", "-c", "core.hooksPath=/dev/null")


class AgentUnavailable(RuntimeError):
    """The agent command cannot be started at all (not installed, not executable)."""


class AgentFailed(RuntimeError):
    """An agent run exited non-zero or ran past its deadline: a failed request."""


def _instructions(editable: str) -> str:
    return (f"Edit {editable} in the current directory to implement exactly ONE experiment (edit the file "
            f"itself: program.md's response contract is for chat models, not for you). Do not change, "
            f"create or delete any other file, here or anywhere else (prepare.py is the frozen harness; any "
            f"other change gets the experiment refused). There is no GPU and no data here: do not train; "
            f"checking that {editable} still parses is fine. When you are done, end your final message with "
            f"a line of the form\nDESCRIPTION: {agents.PLACEHOLDER}")


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


def _git(args: Sequence[str], cwd: str | Path, env: Mapping[str, str] | None = None) -> str | None:
    """git's stdout, or None when it fails."""
    try:
        done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.decode("utf-8", "surrogateescape") if done.returncode == 0 else None


FARM_BRANCHES = ("refs/heads/autoresearch/", "refs/heads/candidates/")  # moved by the farm itself, never by an agent


class RepoGuard:
    """Fingerprints of the user's repositories on this node: where HEAD points, the untracked files
    and the size and mtime of every tracked file. The agent never needs them; a change across an
    agent run means it wrote outside its scratch copy (or someone else did meanwhile). A HEAD on a
    branch of the farm's own (the user looking at a run's main line) may move with a merge."""

    def __init__(self, paths: Sequence[str] = ()):
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | {"GIT_OPTIONAL_LOCKS": "0"}
        self.roots: list[str] = []
        for p in paths:
            top = _git(["rev-parse", "--show-toplevel"], p, self.env) if p and Path(p).is_dir() else None
            if top and top.strip() and top.strip() not in self.roots:
                self.roots.append(top.strip())

    def state(self) -> dict[str, dict[str, Any]]:
        out = {}
        for root in self.roots:
            ref = (_git(["symbolic-ref", "-q", "HEAD"], root, self.env) or "(detached)").strip()
            head = (_git(["rev-parse", "-q", "--verify", "HEAD"], root, self.env) or "").strip()
            others = _git(["ls-files", "-z", "--others", "--exclude-standard"], root, self.env) or ""
            files: dict[str, tuple[int, int]] = {}
            for rel in (_git(["ls-files", "-z"], root, self.env) or "").split("\0"):
                try:
                    st = os.lstat(os.path.join(root, rel)) if rel else None
                except OSError:
                    st = None
                if st is not None:
                    files[rel] = (st.st_mtime_ns, st.st_size)
            for rel in others.split("\0"):
                if rel:
                    files.setdefault(rel, (-1, -1))  # untracked: its presence counts
            out[root] = {"ref": ref, "head": head, "files": files}
        return out

    @staticmethod
    def changes(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> list[str]:
        """What differs, as ``<repo>/<path>`` (and ``<repo>: HEAD a -> b``)."""
        out: list[str] = []
        for root, b in before.items():
            a = after.get(root) or {"ref": "", "head": "", "files": {}}
            if a["ref"] != b["ref"] or (a["head"] != b["head"] and not b["ref"].startswith(FARM_BRANCHES)):
                was, now = f"{b['ref']} {b['head'][:8] or '(none)'}", f"{a['ref']} {a['head'][:8] or '(none)'}"
                out.append(f"{root}: HEAD {was} -> {now}")
            changed = {p for p in a["files"].keys() | b["files"].keys() if a["files"].get(p) != b["files"].get(p)}
            out += [os.path.join(root, p) for p in sorted(changed)]
        return out


def _init_scratch(work: Path, env: Mapping[str, str]) -> None:
    """Make the scratch copy a git repository with its files committed: a CLI takes its workspace
    root from the enclosing repository (opencode without one says "Workspace root folder: /")."""
    git_env = {k: env[k] for k in ("PATH", "HOME", "LANG", "TZ") if k in env} | {"GIT_CONFIG_NOSYSTEM": "1"}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "--no-verify", "-m", "the main line's files"]):
        try:
            done = subprocess.run(["git", *SCRATCH_GIT, *args], cwd=work, env=git_env, capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise AgentUnavailable(f"cannot make the agent's scratch copy a git repository: {e}") from None
        if done.returncode:
            raise AgentUnavailable(f"cannot make the agent's scratch copy a git repository: git {args[0]}: "
                                   f"{done.stderr.decode(errors='replace').strip()[-300:]}")


class AgentProposer(ProposerBase):
    name = "agent"

    def __init__(self, command: Sequence[str] = (), *, agent: str = "custom", model: str = "", base_url: str = "",
                 api_key_env: str = "", price_per_mtok_in: float = 0.0, price_per_mtok_out: float = 0.0,
                 program: str = "", files: Mapping[str, str] | None = None, editable: str = "train.py",
                 timeout: float = 1800.0, concurrency: int = 1, max_log_chars: int = 20000,
                 env: Mapping[str, str] | None = None, watch: Sequence[str] = (), history_limit: int = 20,
                 near_miss_bpb: float = 0.002, crash_repair: bool = True, view: bool = True) -> None:
        if agent not in agents.PRESETS:
            raise ValueError(f"proposer.agent must be one of {', '.join(agents.PRESETS)}, not {agent!r}")
        if agent == "custom" and not command:
            raise ValueError("the agent command is empty; e.g. ['python', '/path/my_agent.py', '{prompt_file}', "
                             "'{workdir}'], or proposer.agent = 'opencode'")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, not {concurrency}")
        self.command, self.agent, self.program, self.editable = list(command), agent, program, editable
        self.model, self.base_url, self.api_key_env = model, base_url, api_key_env
        self.price_in, self.price_out = price_per_mtok_in, price_per_mtok_out
        self.files = dict(files or {})  # e.g. {"prepare.py": text}; copied into every scratch directory
        self.timeout, self.concurrency, self.max_log_chars = timeout, concurrency, max_log_chars
        self.env = dict(env or {})  # proposer.agent_env: on top of the preset's environment
        self.guard = RepoGuard(watch)
        self.view = view  # each run in the sandbox's view, where this machine has one
        self.history_limit, self.near_miss, self.crash_repair = history_limit, near_miss_bpb, crash_repair
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.failed_requests = 0  # runs of the latest call that failed (could not start, exited non-zero, timed out)
        self.usage = {"requests": 0, "failed": 0, "prompt": 0, "completion": 0}  # totals over the proposer's life
        self._lock = threading.Lock()

    def propose(self, n: int, history: History) -> list[Proposal]:
        """Up to n proposals (valid, or marked meta["invalid"]); a run that failed leaves last_error
        and counts in failed_requests, and the call's remaining runs are skipped."""
        self.failed_requests = 0
        claims, dead = Claims(history.tried), threading.Event()

        def one(req: Request) -> Proposal | None:
            if dead.is_set():  # the agent already failed in this call: don't pile on
                self._fail(None)
                return None
            prompt = self._prompt(task_text(history, req, self.history_limit, self.near_miss))
            meta: dict[str, Any] = {"focus": req.focus} | ({"idea": req.idea} if req.idea else {})
            try:
                return self._run(prompt, history.base_source, claims, meta)
            except (AgentUnavailable, AgentFailed) as e:
                dead.set()
                self._fail(e)
                return None

        if n <= 0:
            return []
        with ThreadPoolExecutor(max_workers=min(n, self.concurrency), thread_name_prefix="agent") as pool:
            out = [p for p in pool.map(one, plan(n, history)) if p is not None]
        if self.failed_requests:
            log.warning("agent: %d of %d runs failed: %s", self.failed_requests, n, self.last_error)
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
        except (AgentUnavailable, AgentFailed) as e:
            self._fail(e)
            return None

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"last_error": self.last_error, "last_error_at": self.last_error_at, "usage": dict(self.usage),
                    "agent": self.agent}

    def _prompt(self, task: str) -> str:
        program = "program.md (in this directory)" if self.program else f"this program:\n{FALLBACK_PROGRAM}"
        return (f"You are running one experiment of an autonomous research loop. Read {program}, then "
                f"{self.editable} and prepare.py.\n\n{task}\n\n{_instructions(self.editable)}\n")

    def _fail(self, e: Exception | None) -> None:
        with self._lock:
            self.failed_requests += 1
            if e is not None:
                self.usage["failed"] += 1
                self._error(str(e))

    def _error(self, text: str) -> None:
        self.last_error, self.last_error_at = text, time.time()

    def _run(self, prompt: str, base: str, claims: Claims, meta: dict[str, Any]) -> Proposal:
        """One agent run in a fresh scratch copy; the proposal (valid or invalid) it yields, or
        AgentFailed / AgentUnavailable."""
        with tempfile.TemporaryDirectory(prefix="farm-agent-", ignore_cleanup_errors=True) as tmp:
            run = Path(tmp)
            work = run / "work"
            work.mkdir()
            for rel, content in self.files.items():
                Path(work, rel).parent.mkdir(parents=True, exist_ok=True)
                Path(work, rel).write_text(content)
            if self.program:
                (work / "program.md").write_text(self.program)
            (work / self.editable).write_text(base)
            if self.agent != "custom" and self.base_url:
                problem = agents.unreachable(self.base_url)
                if problem:
                    raise AgentFailed(f"the agent {self.agent} was not started: {problem}")
            env = agents.base_environment(run, work, self.api_key_env)
            _init_scratch(work, env)
            prompt_file = run / "prompt.md"
            prompt_file.write_text(prompt)
            try:
                spec = agents.launch(self.agent, self.command, Path(env["HOME"]), model=self.model,
                                     base_url=self.base_url, api_key_env=self.api_key_env)
            except ValueError as e:
                raise AgentUnavailable(str(e)) from None
            env.update(spec.env)
            env.update(self.env)
            subs = {"{prompt}": prompt, "{prompt_file}": str(prompt_file), "{workdir}": str(work),
                    "{model}": agents.model_argument(self.agent, self.model, self.base_url)}
            argv = [_substitute(a, subs) for a in spec.argv]
            log_path = run / "agent.log"
            before, outside = _snapshot(work), self.guard.state()
            started = time.monotonic()
            rc, timed_out, layers, denied = self._execute(argv, work, log_path, env, self._view(run, argv, env))
            seconds = time.monotonic() - started
            touched = self.guard.changes(outside, self.guard.state())
            output = _tail(log_path, self.max_log_chars)
            with open(log_path, "rb") as f:
                report = agents.read_report(f.read(MAX_READ).decode("utf-8", "replace"))
            after = _snapshot(work)
            new = (work / self.editable).read_text(errors="replace") if (work / self.editable).is_file() else ""
        meta = dict(meta, log=output, exit_code=rc, seconds=round(seconds, 1), agent=self.agent,
                    containment=",".join(layers))
        if denied:
            meta["denied"] = denied
            log.warning("agent: the run looked at %s (empty decoys: it read nothing there)", ", ".join(denied))
        meta = self._account(meta, report)
        if touched:
            shown = ", ".join(touched[:10]) + (f" (+{len(touched) - 10} more)" if len(touched) > 10 else "")
            reason = f"the agent changed files outside its scratch copy: {shown}"
            log.error("agent: %s. The farm cannot undo this: look at those files (git status) and restore what "
                      "you need; the candidate is refused. (If you changed them yourself meanwhile, ignore this.)",
                      reason)
            with self._lock:
                self._error(reason + "; the farm cannot undo changes to your files")
            return Proposal("invalid agent proposal", "", self.name,
                            dict(meta, description="invalid agent proposal", invalid=reason))
        if timed_out or rc:
            raise AgentFailed(self._failure(argv[0], rc, timed_out, seconds, output, report))
        others = sorted(p for p in before.keys() | after.keys() if p != self.editable and before.get(p) != after.get(p))
        if others:
            reason = f"the agent changed {', '.join(others)}; only {self.editable} may change"
        elif after.get(self.editable, "").startswith("link:") or self.editable not in after:
            reason = f"the agent deleted {self.editable} or replaced it with a link"
        else:
            reason = check_source(base, new, editable=self.editable)
            if reason is None and not claims.claim(new):
                reason = "this exact change was already tried or queued on this main line"
        # the final message when the CLI reports one (never the prompt it may echo), else any line printed
        description = agents.description_in(report.message if report.message is not None else output, prompt)
        if description is None:
            description = derive_description(base, new) if new and new != base else ""
        if reason is not None:
            log.info("agent: run refused: %s", reason)
            desc = description or "invalid agent proposal"
            return Proposal(desc, new if new != base else "", self.name,
                            dict(meta, description=desc, invalid=reason))
        full = {"repairable": self.crash_repair} | meta | {"description": description}
        return Proposal(description, new, self.name, full)

    def _account(self, meta: dict[str, Any], report: agents.Report) -> dict[str, Any]:
        """Tokens (and cost at the configured prices) into meta and the proposer's totals, as the
        LLM proposer counts them; the CLI's own reckoning of its cost as ``agent_cost_usd``."""
        tokens = {"prompt": report.prompt_tokens, "completion": report.completion_tokens}
        with self._lock:
            self.usage["requests"] += 1
            self.usage["prompt"] += tokens["prompt"]
            self.usage["completion"] += tokens["completion"]
        meta = dict(meta, tokens=tokens) | ({"model": self.model} if self.model else {})
        if self.price_in or self.price_out:
            meta["cost_usd"] = round(tokens["prompt"] * self.price_in / 1e6
                                     + tokens["completion"] * self.price_out / 1e6, 6)
        if report.cost_usd:
            meta["agent_cost_usd"] = round(report.cost_usd, 6)
        return meta

    def _failure(self, cmd: str, rc: int, timed_out: bool, seconds: float, output: str,
                 report: agents.Report) -> str:
        what = (f"ran past its {self.timeout:.0f} s timeout and was killed" if timed_out
                else f"exited with status {rc} after {seconds:.0f} s")
        head = f"the agent {os.path.basename(cmd)} {what}"
        if report.errors:
            head += f": {report.errors[-1].strip()[:300]}"
        lines = [ln[:300] for ln in output.splitlines() if ln.strip()][-TAIL_LINES:]
        return head + ("\n" + "\n".join(lines) if lines else " (no output)")

    def _view(self, run: Path, argv: Sequence[str], env: Mapping[str, str]) -> View | None:
        """What one agent run may see (None: no view asked for): its run directory read-write; the
        agent's installation and the paths its command names read-only (see :func:`shown_paths`)."""
        if not self.view:
            return None
        return View(writable=[run], readable=shown_paths(argv, env.get("PATH", os.defpath), run))

    def _execute(self, argv: list[str], cwd: Path, log_path: Path, env: dict[str, str],
                 view: View | None) -> tuple[int, bool, list[str], list[str]]:
        """Run argv contained (its own session; in ``view`` where this machine allows it); (exit
        status, timed out, containment layers, canaries touched). Its whole tree dies either way."""
        with open(log_path, "wb") as out:
            try:
                proc = start_sandboxed(argv, cwd, env, out, view=view)
            except OSError as e:
                raise AgentUnavailable(f"cannot start the agent {argv[0]!r}: {e}; install it or set "
                                       f"proposer.agent / proposer.agent_command") from None
            with proc:
                timed_out = not proc.wait_exit(self.timeout)
                proc.kill_tree()  # the agent on a timeout, and any helpers it left running
                rc = proc.reap()
                denied = proc.denied()
        return (rc if rc is not None else -9), timed_out, list(proc.layers), denied


def shown_paths(argv: Sequence[str], path: str, run: Path) -> list[Path]:
    """The host paths an agent run needs to see, read-only, beyond the system and this interpreter:
    the installation of its command and of ``node`` (the prefix above the ``bin`` directory they are
    found in, and the package their link points into), ``/etc/resolv.conf``'s target where it lies
    outside ``/etc`` (systemd-resolved), and every existing absolute path its command names (a
    custom agent's script). Never the user's home or one of its parents: there the directory of the
    program itself is shown instead."""
    home = Path(os.path.abspath(os.path.expanduser("~")))
    too_wide = {Path("/"), home, *home.parents}
    out: list[Path] = []

    def show(p: Path) -> None:
        p = Path(os.path.abspath(p))
        if p.exists() and not p.is_relative_to(run) and p not in out:
            out.append(p)

    for name in dict.fromkeys([argv[0], "node"]):
        found = shutil.which(name, path=path) if os.sep not in name else name
        if not found:
            continue
        for exe in dict.fromkeys([Path(os.path.abspath(found)), Path(os.path.realpath(found))]):
            show(next((d for d in (exe.parent.parent, exe.parent) if d not in too_wide), exe))
    resolv = Path(os.path.realpath("/etc/resolv.conf"))
    if resolv.exists() and not resolv.is_relative_to("/etc"):
        show(resolv.parent)
    for arg in argv[1:]:
        if os.path.isabs(arg) and os.path.exists(arg) and Path(arg) not in too_wide:
            show(Path(arg))
    return out


def _substitute(arg: str, subs: dict[str, str]) -> str:
    """One pass, so a prompt that mentions "{workdir}" is passed on as written."""
    return re.sub(r"\{(?:prompt|prompt_file|workdir|model)\}", lambda m: subs[m.group(0)], arg)


def start_notes(settings: Mapping[str, Any]) -> list[str]:
    """What to say when a run with the agent proposer starts (see agents.notes); ValueError for
    settings no agent run can work with."""
    agent, command = settings.get("agent", "opencode"), settings.get("agent_command") or ()
    if agent not in agents.PRESETS:
        raise ValueError(f"proposer.agent must be one of {', '.join(agents.PRESETS)}, not {agent!r}")
    if agent == "custom" and not command:
        raise ValueError("proposer.agent = 'custom' needs proposer.agent_command, e.g. "
                         "['python', '/path/my_agent.py', '{prompt_file}', '{workdir}']")
    return agents.notes(agent, command=command, base_url=settings.get("base_url", ""),
                        api_key_env=settings.get("api_key_env", ""))


def from_settings(settings: dict[str, Any]) -> Any:
    """The "agent" proposer from the [proposer] settings, wrapped in the fallback like "llm"."""
    from proposer.llm import with_fallback

    agent = AgentProposer(
        settings.get("agent_command") or (), agent=settings.get("agent", "opencode"),
        model=settings.get("model", ""), base_url=settings.get("base_url", ""),
        api_key_env=settings.get("api_key_env", ""), price_per_mtok_in=settings.get("price_per_mtok_in", 0.0),
        price_per_mtok_out=settings.get("price_per_mtok_out", 0.0), program=settings.get("program", ""),
        files=settings.get("files"), editable=settings.get("editable", "train.py"),
        timeout=settings.get("agent_timeout", 1800.0), concurrency=settings.get("concurrency", 1),
        env=settings.get("agent_env"), watch=settings.get("watch", ()), history_limit=settings.get("history_limit", 20),
        near_miss_bpb=settings.get("near_miss_bpb", 0.002), crash_repair=settings.get("crash_repair", True))
    return with_fallback(agent, settings)
