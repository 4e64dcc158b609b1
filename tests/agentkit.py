"""A scripted model behind a loopback OpenAI-compatible server, for the real coding-agent CLIs.

The suite runs offline (``unshare -rn``: loopback only), so a real ``opencode`` or ``codex`` can
only talk to a server of the tests' own. ``AgentServer`` is that server: stdlib ``http.server`` in
a thread on 127.0.0.1 (port 0), speaking

- chat completions (``POST /v1/chat/completions``, SSE streaming with tool calls), which opencode's
  ``@ai-sdk/openai-compatible`` provider uses, and
- the Responses API (``POST /v1/responses``, SSE events ``response.created`` ...
  ``response.completed``), which codex uses (``wire_api = "responses"``).

What the "model" answers is a ``Script``: a list of steps, each a tool call of the CLI's own
(``Call("edit", {...})``) or a last text (``Final("DESCRIPTION: ...")``). The step a request gets is
the number of tool results already in its conversation, so the server keeps no state between
requests (a CLI's retry of a request gets the same answer) and a request without tools (opencode's
title generator) gets a short text of its own. Tool arguments may be callables of the request's
``Context`` (the working directory the CLI announced in its system prompt), as a model would write
the absolute paths the tools ask for.

Every request is recorded (path, headers, JSON body) for the tests to assert what the CLI sent.
``down_url()`` is an address where nothing listens (connection refused), and
``AgentServer(fail_status=401)`` one that refuses every request, for failure tests.

The second half is the real CLIs: ``CLI_PACKAGES`` pins them, ``python -m tests.agentkit install``
(run by .ci/run while the registries are reachable) npm-installs them into a cache dir keyed by
those pins, ``find_clis()`` finds and checks that install (the ``agent_clis`` fixture of
tests/conftest.py), and ``run_cli(preset, workdir, prompt, server, clis=...)`` runs one, configured
as the farm's agent proposer configures it (command, scrubbed environment, own HOME and XDG dirs,
generated provider config). Neither CLI needs anything else offline: opencode ships the
``@ai-sdk/openai-compatible`` provider in its binary, codex needs nothing but its config.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Sequence, Union

Args = Union[dict, Callable[["Context"], dict]]


@dataclass
class Call:
    """A tool call; ``tool`` is a name, or a list of names of which the first the CLI offers is used."""
    tool: str | Sequence[str]
    args: Args
    usage: tuple[int, int] = (120, 30)  # (input, output) tokens reported for this turn


@dataclass
class Final:
    text: str
    usage: tuple[int, int] = (200, 40)


Step = Union[Call, Final]


@dataclass
class Context:
    """What the scripted model knows of one request."""
    api: str  # "chat" or "responses"
    body: dict
    tools: list[str]  # names of the tools the CLI offered
    tool_results: list[str]  # outputs of the tool calls so far, oldest first
    workdir: str | None  # "Working directory: ..." / <cwd>...</cwd> from the prompt, if any

    def path(self, name: str) -> str:
        """An absolute path of ``name`` in the announced working directory (else ``name`` itself)."""
        return f"{self.workdir.rstrip('/')}/{name}" if self.workdir else name


@dataclass
class Script:
    steps: list[Step]
    title: str = "Scripted experiment"  # the answer to a request that offers no tools

    def step(self, ctx: Context) -> Step:
        i = len(ctx.tool_results)
        return self.steps[min(i, len(self.steps) - 1)]


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    time: float = field(default_factory=time.time)

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None

    @property
    def authorization(self) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == "authorization"), None)

    @property
    def tools(self) -> list[str]:
        return _tool_names(self.body) if isinstance(self.body, dict) else []


# --- reading a request ------------------------------------------------------------------------

_WORKDIR_RES = (re.compile(r"Working directory:\s*(\S+)"), re.compile(r"<cwd>\s*([^<\s]+)\s*</cwd>"))


def _tool_names(body: dict) -> list[str]:
    names = []
    for t in body.get("tools") or []:
        if isinstance(t, dict):
            name = t.get("name") or (t.get("function") or {}).get("name")
            if name:
                names.append(name)
    return names


def texts_of(obj: Any) -> list[str]:
    """Every string inside a JSON value (message contents in any of the APIs' shapes)."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, list):
        return [s for x in obj for s in texts_of(x)]
    if isinstance(obj, dict):
        return [s for x in obj.values() for s in texts_of(x)]
    return []


def _workdir(texts: list[str]) -> str | None:
    for rx in _WORKDIR_RES:
        for t in texts:
            m = rx.search(t)
            if m:
                return m.group(1)
    return None


def chat_context(body: dict) -> Context:
    msgs = body.get("messages") or []
    results = [" ".join(texts_of(m.get("content"))) for m in msgs if m.get("role") == "tool"]
    return Context("chat", body, _tool_names(body), results, _workdir(texts_of(msgs)))


def responses_context(body: dict) -> Context:
    items = body.get("input") or []
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    results = [" ".join(texts_of(it.get("output"))) for it in items
               if isinstance(it, dict) and it.get("type", "").endswith("call_output")]
    texts = texts_of(body.get("instructions")) + texts_of(items)
    return Context("responses", body, _tool_names(body), results, _workdir(texts))


def _resolve(call: Call, ctx: Context) -> tuple[str, dict]:
    names = [call.tool] if isinstance(call.tool, str) else list(call.tool)
    name = next((n for n in names if n in ctx.tools), None)
    if name is None:
        raise LookupError(f"the CLI offers none of the tools {names}; it offers {ctx.tools}")
    args = call.args(ctx) if callable(call.args) else call.args
    return name, args


# --- the server -------------------------------------------------------------------------------

class AgentServer:
    """A loopback OpenAI-compatible server answering from a Script; ``with AgentServer(s) as srv``."""

    def __init__(self, script: Script | None = None, *, fail_status: int | None = None) -> None:
        self.script = script or Script([Final("DESCRIPTION: nothing to do")])
        self.fail_status = fail_status  # answer every model request with this HTTP status instead
        self.requests: list[Recorded] = []
        self.errors: list[str] = []  # what the server could not answer (a script's LookupError, ...)
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle
    def start(self) -> "AgentServer":
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="agent-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "AgentServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "the server is not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # what was received
    def model_requests(self, api: str | None = None) -> list[Recorded]:
        want = {"chat": ("/chat/completions",), "responses": ("/responses",), None: ("/chat/completions", "/responses")}[api]
        with self._lock:
            return [r for r in self.requests if r.method == "POST" and r.path.split("?")[0].endswith(want)]

    def agent_requests(self, api: str | None = None) -> list[Recorded]:
        """The model requests that offered tools (opencode's title requests offer none)."""
        return [r for r in self.model_requests(api) if r.tools]

    def _record(self, rec: Recorded) -> None:
        with self._lock:
            self.requests.append(rec)


def down_url() -> str:
    """A loopback base URL where nothing listens: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # closed again: nothing listens there now


class _Handler(BaseHTTPRequestHandler):
    owner: AgentServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # keep the test output clean
        pass

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return raw.decode("utf-8", "replace")

    def _plain(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self.owner._record(Recorded("GET", self.path, dict(self.headers), None))
        path = self.path.split("?")[0]
        if path.endswith("/models"):
            self._plain(200, {"object": "list", "data": []})
        else:
            self._plain(404, {"error": {"message": f"no {path} here"}})

    def do_POST(self) -> None:  # noqa: N802
        body = self._body()
        self.owner._record(Recorded("POST", self.path, dict(self.headers), body))
        path = self.path.split("?")[0]
        if not isinstance(body, dict) or not (path.endswith("/chat/completions") or path.endswith("/responses")):
            self._plain(404, {"error": {"message": f"no {path} here"}})
            return
        if self.owner.fail_status:
            status = self.owner.fail_status  # (opencode retries a 4xx too if its body reads like an outage)
            kind = "server_error" if status >= 500 else "invalid_request_error"
            self._plain(status, {"error": {"message": f"agentkit: scripted status {status}", "type": kind}})
            return
        chat = path.endswith("/chat/completions")
        ctx = chat_context(body) if chat else responses_context(body)
        script = self.owner.script
        try:
            step: Step = script.step(ctx) if ctx.tools else Final(script.title, (50, 5))
            events = (_chat_events if chat else _responses_events)(step, ctx, body)
        except Exception as e:  # a script that does not fit the CLI: say so, to the test and the CLI
            self.owner.errors.append(f"{type(e).__name__}: {e}")
            self._plain(400, {"error": {"message": f"agentkit: {e}", "type": "invalid_request_error"}})
            return
        if not body.get("stream"):
            self._plain(200, _non_stream(step, ctx, body, chat))
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        for name, data in events:
            chunk = (f"event: {name}\n" if name else "") + f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"
            self.wfile.write(chunk.encode())
            self.wfile.flush()
        self.close_connection = True


# --- chat completions -------------------------------------------------------------------------

def _chat_events(step: Step, ctx: Context, body: dict) -> list[tuple[str | None, Any]]:
    model, cid = body.get("model", "m"), f"chatcmpl-{time.time_ns()}"

    def chunk(delta: dict, finish: str | None = None) -> dict:
        return {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    out: list[tuple[str | None, Any]] = [(None, chunk({"role": "assistant", "content": ""}))]
    if isinstance(step, Call):
        name, args = _resolve(step, ctx)
        call_id = f"call_{len(ctx.tool_results)}_{time.time_ns() % 10**8}"
        out.append((None, chunk({"tool_calls": [{"index": 0, "id": call_id, "type": "function",
                                                 "function": {"name": name, "arguments": ""}}]})))
        text = json.dumps(args)
        half = len(text) // 2  # the arguments in two pieces, as a streaming model sends them
        for piece in (text[:half], text[half:]):
            out.append((None, chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})))
        out.append((None, chunk({}, "tool_calls")))
    else:
        words = step.text.split(" ")
        for i, w in enumerate(words):
            out.append((None, chunk({"content": w if i == 0 else " " + w})))
        out.append((None, chunk({}, "stop")))
    inp, outp = step.usage
    out.append((None, {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                       "choices": [], "usage": {"prompt_tokens": inp, "completion_tokens": outp,
                                                "total_tokens": inp + outp}}))
    out.append((None, "[DONE]"))
    return out


# --- the Responses API ------------------------------------------------------------------------

def _responses_usage(step: Step) -> dict:
    inp, outp = step.usage
    return {"input_tokens": inp, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": outp,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": inp + outp}


def _responses_item(step: Step, ctx: Context, n: int) -> tuple[dict, list[tuple[str, dict]]]:
    """The output item of a step, and the delta events that stream it."""
    if isinstance(step, Call):
        name, args = _resolve(step, ctx)
        tool = next((t for t in ctx.body.get("tools") or [] if t.get("name") == name), {})
        call_id = f"call_{n}_{time.time_ns() % 10**8}"
        if tool.get("type") == "custom":  # a freeform tool (codex's apply_patch): the input is raw text
            text = args if isinstance(args, str) else args.get("input", "")
            item = {"type": "custom_tool_call", "id": f"ctc_{n}", "status": "completed", "call_id": call_id,
                    "name": name, "input": text}
            return item, [("response.custom_tool_call_input.delta", {"item_id": item["id"], "delta": text})]
        text = json.dumps(args)
        item = {"type": "function_call", "id": f"fc_{n}", "status": "completed", "call_id": call_id,
                "name": name, "arguments": text}
        return item, [("response.function_call_arguments.delta", {"item_id": item["id"], "delta": text})]
    item = {"type": "message", "id": f"msg_{n}", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": step.text, "annotations": []}]}
    return item, [("response.output_text.delta", {"item_id": item["id"], "content_index": 0, "delta": step.text})]


def _responses_events(step: Step, ctx: Context, body: dict) -> list[tuple[str | None, Any]]:
    n = len(ctx.tool_results)
    rid = f"resp_{n}_{time.time_ns() % 10**8}"
    base = {"id": rid, "object": "response", "created_at": int(time.time()), "model": body.get("model", "m")}
    item, deltas = _responses_item(step, ctx, n)
    pending = dict(item, status="in_progress")
    pending.update({k: ("" if k != "content" else []) for k in ("arguments", "input", "content") if k in item})
    events: list[tuple[str, dict]] = [
        ("response.created", {"response": base | {"status": "in_progress", "output": []}}),
        ("response.in_progress", {"response": base | {"status": "in_progress", "output": []}}),
        ("response.output_item.added", {"output_index": 0, "item": pending}),
        *[(name, {"output_index": 0, **d}) for name, d in deltas],
        ("response.output_item.done", {"output_index": 0, "item": item}),
        ("response.completed", {"response": base | {"status": "completed", "output": [item],
                                                    "usage": _responses_usage(step)}}),
    ]
    return [(name, {"type": name, "sequence_number": i, **data}) for i, (name, data) in enumerate(events)]


def _non_stream(step: Step, ctx: Context, body: dict, chat: bool) -> dict:
    inp, outp = step.usage
    if not chat:
        item, _ = _responses_item(step, ctx, len(ctx.tool_results))
        return {"id": "resp_0", "object": "response", "status": "completed", "model": body.get("model"),
                "output": [item], "usage": _responses_usage(step)}
    msg: dict[str, Any] = {"role": "assistant", "content": None}
    if isinstance(step, Call):
        name, args = _resolve(step, ctx)
        msg["tool_calls"] = [{"id": "call_0", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}]
    else:
        msg["content"] = step.text
    return {"id": "chatcmpl-0", "object": "chat.completion", "created": int(time.time()), "model": body.get("model"),
            "choices": [{"index": 0, "message": msg, "finish_reason": "tool_calls" if isinstance(step, Call) else "stop"}],
            "usage": {"prompt_tokens": inp, "completion_tokens": outp, "total_tokens": inp + outp}}


# --- scripts for the CLIs' own edit tools -------------------------------------------------------

def opencode_edit(old: str, new: str, description: str, *, file: str = "train.py") -> Script:
    """opencode: read the file (its edit tool refuses a file not read first), edit it, then finish."""
    return Script([
        Call("read", lambda c: {"filePath": c.path(file)}),
        Call("edit", lambda c: {"filePath": c.path(file), "oldString": old, "newString": new}),
        Final(f"I changed {file}.\nDESCRIPTION: {description}"),
    ])


def apply_patch_text(file: str, old: str, new: str) -> str:
    """A codex apply_patch body replacing the line ``old`` by ``new`` in ``file`` (relative)."""
    return (f"*** Begin Patch\n*** Update File: {file}\n@@\n-{old}\n+{new}\n*** End Patch\n")


def codex_edit(old: str, new: str, description: str, *, file: str = "train.py") -> Script:
    """codex: apply a patch with its apply_patch tool (freeform or function), then finish."""
    patch = apply_patch_text(file, old, new)

    def args(c: Context) -> Any:
        tool = next((t for t in c.body.get("tools") or [] if t.get("name") == "apply_patch"), None)
        if tool is not None:
            return patch if tool.get("type") == "custom" else {"input": patch}
        if "exec_command" in c.tools:  # codex intercepts an apply_patch heredoc in a shell command
            return {"cmd": f"apply_patch <<'PATCH'\n{patch}PATCH\n"}
        return {"command": ["apply_patch", patch]}  # the older shell tool: argv

    return Script([
        Call(["apply_patch", "exec_command", "shell"], args),
        Final(f"Patched {file}.\nDESCRIPTION: {description}"),
    ])


# --- the real CLIs: the pinned install, and one run of one ------------------------------------


# The npm packages the tests run, pinned: `python -m tests.agentkit install` (run by .ci/run before
# the tests go offline) installs exactly these into a cache directory keyed by them.
CLI_PACKAGES = {"opencode": ("opencode-ai", "1.18.33"), "codex": ("@openai/codex", "0.171.0")}
INSTALL_COMMAND = "python -m tests.agentkit install"
API_KEY_ENV = "FARM_API_KEY"  # the variable both presets' configs read the key from
PROVIDER = "farm"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "autoresearch-farm-tests" / "npm"


def install_dir() -> Path:
    key = "_".join(f"{pkg.replace('@', '').replace('/', '-')}-{v}" for pkg, v in CLI_PACKAGES.values())
    return cache_root() / key


def _version_of(binary: Path, env: dict | None = None) -> str:
    p = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL, env=env)
    return (p.stdout + p.stderr).strip()


@dataclass
class Clis:
    """A checked install of the pinned CLIs: ``bin_dir`` holds ``opencode`` and ``codex``."""
    bin_dir: Path
    versions: dict[str, str]

    def path(self, preset: str) -> Path:
        return self.bin_dir / preset


def find_clis(root: Path | None = None) -> tuple[Clis | None, str]:
    """The install (each CLI's --version checked against its pin), or None and why not."""
    root = root or install_dir()
    bin_dir = root / "node_modules" / ".bin"
    if not (root / ".complete").is_file():
        return None, f"no complete install at {root}"
    versions = {}
    for preset, (_, want) in CLI_PACKAGES.items():
        exe = bin_dir / preset
        try:
            got = _version_of(exe)
        except (OSError, subprocess.SubprocessError) as e:
            return None, f"{exe} does not run: {e}"
        if want not in got:
            return None, f"{exe} --version says {got!r}, not {want}"
        versions[preset] = got
    return Clis(bin_dir, versions), ""


def install(root: Path | None = None) -> Clis:
    """npm-install the pinned CLIs into ``root`` (default: the keyed cache dir), unless already there."""
    root = root or install_dir()
    found, _ = find_clis(root)
    if found:
        print(f"agent CLIs already installed at {root}: {found.versions}")
        return found
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm is not installed (e.g. `apt-get install -y nodejs npm`)")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f"{root.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    specs = [f"{pkg}@{v}" for pkg, v in CLI_PACKAGES.values()]
    print(f"npm install --prefix {tmp} {' '.join(specs)}", flush=True)
    subprocess.run([npm, "install", "--prefix", str(tmp), "--no-audit", "--no-fund", "--loglevel=error", *specs],
                   check=True, stdin=subprocess.DEVNULL)
    (tmp / ".complete").write_text(" ".join(specs) + "\n")
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    found, why = find_clis(root)
    if not found:
        raise SystemExit(f"the agent CLIs were installed at {root} but do not run: {why}")
    print(f"agent CLIs installed at {root}: {found.versions}")
    return found


@dataclass
class CliRun:
    preset: str
    command: list[str]
    env: dict[str, str]
    returncode: int | None  # None: killed at the timeout
    stdout: str
    stderr: str
    elapsed: float

    @property
    def events(self) -> list[dict]:
        """The JSON events of ``--format json`` / ``--json``, one a line (other lines skipped)."""
        out = []
        for line in self.stdout.splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def texts(self) -> list[str]:
        """The assistant's texts, in order."""
        if self.preset == "opencode":
            return [e["part"]["text"] for e in self.events if e.get("type") == "text" and "text" in e.get("part", {})]
        return [e["item"]["text"] for e in self.events
                if e.get("type") == "item.completed" and e.get("item", {}).get("type") == "agent_message"]

    def tokens(self) -> tuple[int, int]:
        """(input, output) tokens the CLI reported, summed over the run."""
        inp = outp = 0
        for e in self.events:
            if self.preset == "opencode" and e.get("type") == "step_finish":
                t = e["part"].get("tokens") or {}
                inp, outp = inp + int(t.get("input", 0)), outp + int(t.get("output", 0))
            elif self.preset == "codex" and e.get("type") == "turn.completed":
                u = e.get("usage") or {}
                inp, outp = inp + int(u.get("input_tokens", 0)), outp + int(u.get("output_tokens", 0))
        return inp, outp

    @property
    def log(self) -> str:
        return f"$ {' '.join(self.command[:-1])} <prompt>\nrc={self.returncode} in {self.elapsed:.1f}s\n" \
               f"--- stdout\n{self.stdout[-6000:]}\n--- stderr\n{self.stderr[-6000:]}"


# How long a CLI takes to give up on an endpoint that refuses connections (measured; see the tests).
# opencode's session retry is fixed in its code (5 retries, 2 s doubling, capped at 30 s: ~60-75 s);
# codex, configured as cli_files does, makes 2 retries (~3 s); by default it would wait forever.
DOWN_TIMEOUT = {"opencode": 110.0, "codex": 30.0}

OPENCODE_ENV = {  # opencode's own switches for an offline, non-interactive run
    "OPENCODE_DISABLE_AUTOUPDATE": "1",  # no npm registry look-up for a newer opencode
    "OPENCODE_DISABLE_MODELS_FETCH": "1",  # no models.dev catalogue fetch (~3 s lost offline without it)
    "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
    "OPENCODE_DISABLE_SHARE": "1",
    "OPENCODE_DISABLE_CLAUDE_CODE": "1",  # no ~/.claude prompts or skills
}


def cli_files(preset: str, home: Path, base_url: str, model: str) -> dict[str, str]:
    """The provider config a preset needs (written under ``home``), and the env naming it."""
    if preset == "opencode":
        config = {"$schema": "https://opencode.ai/config.json", "autoupdate": False, "share": "disabled",
                  "model": f"{PROVIDER}/{model}",
                  "provider": {PROVIDER: {"npm": "@ai-sdk/openai-compatible", "name": PROVIDER,
                                          "options": {"baseURL": base_url, "apiKey": "{env:%s}" % API_KEY_ENV},
                                          "models": {model: {"name": model}}}}}
        path = home / "opencode.json"
        path.write_text(json.dumps(config, indent=2))
        return {"OPENCODE_CONFIG": str(path), **OPENCODE_ENV}
    if preset == "codex":
        codex_home = home / ".codex"
        codex_home.mkdir(parents=True, exist_ok=True)
        (codex_home / "config.toml").write_text(
            f'model = {json.dumps(model)}\nmodel_provider = "{PROVIDER}"\n\n'
            f'[model_providers.{PROVIDER}]\nname = "{PROVIDER}"\nbase_url = {json.dumps(base_url)}\n'
            f'wire_api = "responses"\nenv_key = "{API_KEY_ENV}"\n'
            # bounded retries: by default codex waits for the network forever ("Reconnecting...
            # waiting for network"); with this feature off it makes stream_max_retries tries (~1 s each)
            f'request_max_retries = 2\nstream_max_retries = 2\n\n'
            f'[features]\nunbounded_connection_retries = false\n\n'
            # workspace-write makes /tmp and $TMPDIR writable too by default, so a patch or a command
            # could change any directory there (the user's checkout, another run's scratch copy)
            f'[sandbox_workspace_write]\nexclude_slash_tmp = true\nexclude_tmpdir_env_var = true\n')
        return {"CODEX_HOME": str(codex_home)}
    raise ValueError(f"unknown preset {preset!r}")


def cli_command(preset: str, bin_dir: Path, model: str, prompt: str, workdir: Path | None = None) -> list[str]:
    """The preset's command; with ``workdir``, the directory is also named on the command line
    (opencode ``--dir``, codex ``-C``), which overrides an inherited PWD."""
    if preset == "opencode":
        where = ["--dir", str(workdir)] if workdir else []
        return [str(bin_dir / "opencode"), "run", *where, "--format", "json", "-m", f"{PROVIDER}/{model}", prompt]
    if preset == "codex":
        where = ["-C", str(workdir)] if workdir else []
        return [str(bin_dir / "codex"), "exec", "--json", "--skip-git-repo-check", "--sandbox", "workspace-write",
                *where, "-m", model, prompt]
    raise ValueError(f"unknown preset {preset!r}")


def run_cli(preset: str, workdir: Path, prompt: str, server: "AgentServer | str", *, clis: Clis,
            home: Path | None = None, model: str = "m", api_key: str = "sk-farm-test", pwd: str | None = None,
            timeout: float = 60.0, extra_env: dict[str, str] | None = None, dir_flag: bool = False) -> CliRun:
    """One run of the real CLI ``preset`` in ``workdir``, as the farm's agent proposer runs it.

    cwd is ``workdir`` and PWD is ``pwd`` (default: ``workdir``); HOME and the XDG dirs are
    ``home`` (default: a fresh dir beside ``workdir``), where the provider config is written;
    ``server`` is an AgentServer or a base URL (e.g. ``down_url()``). The environment is built
    from nothing but PATH and these, so no key or config of the machine's leaks in. ``dir_flag``
    also names ``workdir`` on the command line (opencode ``--dir``, codex ``-C``).
    """
    workdir = Path(workdir)
    home = Path(home) if home is not None else workdir.parent / f"{workdir.name}.{preset}-home"
    home.mkdir(parents=True, exist_ok=True)
    base_url = server if isinstance(server, str) else server.base_url
    env = {"PATH": f"{clis.bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
           "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CACHE_HOME": str(home / ".cache"),
           "XDG_DATA_HOME": str(home / ".local" / "share"), "XDG_STATE_HOME": str(home / ".local" / "state"),
           "PWD": pwd if pwd is not None else str(workdir), "LANG": "C.UTF-8", "TERM": "dumb", "NO_COLOR": "1",
           API_KEY_ENV: api_key}
    env.update(cli_files(preset, home, base_url, model))
    env.update(extra_env or {})
    cmd = cli_command(preset, clis.bin_dir, model, prompt, workdir if dir_flag else None)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        rc: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        rc = None
    return CliRun(preset, cmd, env, rc, out, err, time.monotonic() - start)


if __name__ == "__main__":
    if sys.argv[1:] == ["install"]:
        install()
    elif sys.argv[1:] == ["where"]:
        clis, why = find_clis()
        print(clis.bin_dir if clis else f"not installed: {why} (run `{INSTALL_COMMAND}`)")
        sys.exit(0 if clis else 1)
    else:
        sys.exit(f"usage: {INSTALL_COMMAND} | python -m tests.agentkit where")
