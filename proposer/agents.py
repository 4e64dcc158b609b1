"""The coding-agent CLIs the agent proposer drives: each preset's command, environment and generated
config, the environment every agent run starts from, and what the CLIs report back.

A preset (``proposer.agent``) turns the proposer's ``model``, ``base_url`` and ``api_key_env`` into
what its CLI reads, written into the run's own home directory:

- ``opencode`` (opencode-ai 1.18): ``opencode run --dir DIR --format json -m farm/MODEL PROMPT``;
  an OpenAI-compatible ``base_url`` becomes the provider ``farm`` (``@ai-sdk/openai-compatible``,
  ``options.baseURL``, the key as ``{env:API_KEY_ENV}``, the model listed) in an ``opencode.json``
  named by ``OPENCODE_CONFIG``.
- ``codex`` (@openai/codex 0.171): ``codex exec --json --skip-git-repo-check --sandbox
  workspace-write -C DIR -m MODEL PROMPT``; ``$CODEX_HOME/config.toml`` names the provider
  ``[model_providers.farm]`` (``base_url``, ``wire_api = "responses"``: codex speaks only the
  Responses API, ``env_key``) and keeps the sandbox's writable roots to the scratch copy.
- ``claude`` (@anthropic-ai/claude-code 2.1): ``claude -p PROMPT --output-format json --model MODEL
  --permission-mode acceptEdits`` with ``ANTHROPIC_BASE_URL`` and ``ANTHROPIC_API_KEY``. Claude Code
  speaks only Anthropic's Messages API: an OpenAI-compatible endpoint needs a translating proxy.
- ``custom``: ``agent_command`` as given, nothing generated.

``base_url = ""`` leaves each CLI on its own default provider (the model is passed as given).
Every run's environment is scrubbed (:func:`base_environment`): the key travels under the name
``api_key_env`` alone, never Ray's, Redis' or the farm's variables.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlparse

PRESETS = ("opencode", "codex", "claude", "custom")
PROVIDER = "farm"  # the provider name the generated configs give proposer.base_url

COMMANDS: dict[str, tuple[str, ...]] = {
    "opencode": ("opencode", "run", "--dir", "{workdir}", "--format", "json", "-m", "{model}", "{prompt}"),
    "codex": ("codex", "exec", "--json", "--skip-git-repo-check", "--sandbox", "workspace-write",
              "-C", "{workdir}", "-m", "{model}", "{prompt}"),
    "claude": ("claude", "-p", "{prompt}", "--output-format", "json", "--model", "{model}",
               "--permission-mode", "acceptEdits"),
}
MODEL_FLAGS = ("-m", "--model")  # dropped with their {model} when there is no model to pass

# what an agent run keeps of the proposer's environment: the search path, locale, time zone, who
# the user is, and how to reach an endpoint (proxies, certificates); nothing else
KEEP_ENV = ("PATH", "VIRTUAL_ENV", "LANG", "LANGUAGE", "TZ", "USER", "LOGNAME", "SHELL", "TERM",
            "http_proxy", "https_proxy", "no_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
            "ALL_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE",
            "CURL_CA_BUNDLE")


@dataclass
class Launch:
    """One agent run's command template and the environment its preset adds."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)  # the config files generated for it


@dataclass
class Report:
    """What an agent printed in its structured output (JSON events or one JSON result)."""

    message: str | None = None  # its final message
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0  # what the CLI itself reckons
    errors: list[str] = field(default_factory=list)  # errors it reported
    structured: bool = False  # whether any of its output was JSON the farm knows


def base_environment(run_dir: Path, work: Path, api_key_env: str,
                     source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every agent run starts from: the kept variables, the key under its own name,
    and HOME, XDG_* and TMPDIR in the run's directory, so the CLI reads the config the farm writes
    there, not the user's; PWD is the scratch copy (opencode takes its directory from $PWD)."""
    source = os.environ if source is None else source
    env = {k: v for k, v in source.items() if k in KEEP_ENV or k.startswith("LC_")}
    if api_key_env and source.get(api_key_env):
        env[api_key_env] = source[api_key_env]
    home = run_dir / "home"
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_DATA_HOME=str(home / ".local/share"),
               XDG_CACHE_HOME=str(home / ".cache"), XDG_STATE_HOME=str(home / ".local/state"),
               TMPDIR=str(run_dir / "tmp"), PWD=str(work))
    for key in ("HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME", "TMPDIR"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    return env


def launch(agent: str, command: Sequence[str], home: Path, *, model: str = "", base_url: str = "",
           api_key_env: str = "", source: Mapping[str, str] | None = None) -> Launch:
    """The command template and preset environment of one run of ``agent``; its config files are
    written under ``home``. ``command`` (``agent_command``) replaces the preset's command when given."""
    if agent not in PRESETS:
        raise ValueError(f"proposer.agent must be one of {', '.join(PRESETS)}, not {agent!r}")
    source = os.environ if source is None else source
    if agent == "custom":
        if not command:
            raise ValueError("proposer.agent = 'custom' needs proposer.agent_command, e.g. "
                             "['python', '/path/my_agent.py', '{prompt_file}', '{workdir}']")
        return Launch(list(command))
    out = Launch(list(command or _drop_model(COMMANDS[agent], model)))
    if agent == "opencode":
        env = {"OPENCODE_DISABLE_AUTOUPDATE": "1", "OPENCODE_DISABLE_LSP_DOWNLOAD": "1"}
        config: dict[str, Any] = {"$schema": "https://opencode.ai/config.json", "autoupdate": False,
                                  "share": "disabled"}
        if base_url:
            options = {"baseURL": base_url} | ({"apiKey": "{env:%s}" % api_key_env} if api_key_env else {})
            provider: dict[str, Any] = {"npm": "@ai-sdk/openai-compatible", "name": "autoresearch-farm endpoint",
                                        "options": options}
            if model:
                provider["models"] = {model: {"name": model}}
                config["model"] = f"{PROVIDER}/{model}"
            config["provider"] = {PROVIDER: provider}
            env["OPENCODE_DISABLE_MODELS_FETCH"] = "1"  # the model is the farm's: no catalogue to download
        elif model:
            config["model"] = model
        path = home / "opencode.json"
        path.write_text(json.dumps(config, indent=2) + "\n")
        out.env, out.files = env | {"OPENCODE_CONFIG": str(path)}, [str(path)]
    elif agent == "codex":
        codex_home = home / ".codex"
        codex_home.mkdir(parents=True, exist_ok=True)
        lines = [f"model = {_toml(model)}"] if model else []
        if base_url:
            lines += [f'model_provider = "{PROVIDER}"', "", f"[model_providers.{PROVIDER}]",
                      'name = "autoresearch-farm endpoint"', f"base_url = {_toml(base_url)}",
                      'wire_api = "responses"'] + ([f"env_key = {_toml(api_key_env)}"] if api_key_env else [])
            # a dead endpoint: codex 0.171 otherwise reconnects for ever ("Reconnecting... waiting for network");
            # with these it exits 1 in about 3 s
            lines += ["request_max_retries = 2", "stream_max_retries = 2", "", "[features]",
                      "unbounded_connection_retries = false"]
        # workspace-write may write the workspace, /tmp and $TMPDIR: the scratch copy alone, here
        lines += ["", "[sandbox_workspace_write]", "exclude_slash_tmp = true", "exclude_tmpdir_env_var = true",
                  "network_access = false"]
        path = codex_home / "config.toml"
        path.write_text("\n".join(lines).lstrip("\n") + "\n")
        out.env, out.files = {"CODEX_HOME": str(codex_home)}, [str(path)]
    else:  # claude
        env = {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1"}
        if base_url:
            env["ANTHROPIC_BASE_URL"] = base_url
        if api_key_env and source.get(api_key_env):
            env["ANTHROPIC_API_KEY"] = source[api_key_env]
        out.env = env
    return out


def model_argument(agent: str, model: str, base_url: str) -> str:
    """What ``{model}`` stands for: opencode names a model ``provider/model`` (``farm/MODEL`` for
    the farm's endpoint); the others take the model as it is."""
    if agent == "opencode" and base_url and model:
        return f"{PROVIDER}/{model}"
    return model


def _drop_model(argv: Sequence[str], model: str) -> list[str]:
    if model:
        return list(argv)
    out: list[str] = []
    for a in argv:
        if a == "{model}" and out and out[-1] in MODEL_FLAGS:
            out.pop()
        elif a != "{model}":
            out.append(a)
    return out


def _toml(value: str) -> str:
    return json.dumps(value)  # a JSON string is a TOML basic string


def notes(agent: str, *, command: Sequence[str] = (), base_url: str = "", api_key_env: str = "",
          environ: Mapping[str, str] | None = None) -> list[str]:
    """Warnings worth printing at the start of a run with this agent (the CLI missing here, an
    endpoint the CLI cannot speak to, a key that is not set)."""
    environ = os.environ if environ is None else environ
    out = []
    argv = list(command) or list(COMMANDS.get(agent, ()))
    if argv and "{" not in argv[0] and shutil.which(argv[0], path=environ.get("PATH")) is None:
        out.append(f"the agent command {argv[0]!r} is not on this machine's PATH (the proposer runs it on its "
                   f"own node: install it there, e.g. npm install -g {_PACKAGES.get(agent, argv[0])})")
    if agent == "claude" and base_url and not anthropic_endpoint(base_url):
        out.append(f"proposer.base_url {base_url} does not look like an Anthropic endpoint: Claude Code speaks only "
                   f"Anthropic's Messages API (it posts to <base_url>/v1/messages), so an OpenAI-compatible server "
                   f"needs a translating proxy such as LiteLLM in between (base_url = the proxy, without /v1); "
                   f"ignore this if {base_url} is one")
    if agent != "custom" and api_key_env and not environ.get(api_key_env):
        out.append(f"${api_key_env} (proposer.api_key_env) is not set: the {agent} agent gets no API key")
    return out


_PACKAGES = {"opencode": "opencode-ai", "codex": "@openai/codex", "claude": "@anthropic-ai/claude-code"}
PROXY_VARS = ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")


def unreachable(base_url: str, environ: Mapping[str, str] | None = None, timeout: float = 5.0) -> str | None:
    """Why ``base_url`` takes no connections (refused, no such host, silent), or None. Asked before
    each run of a preset: a CLI whose endpoint is down retries for a long while (opencode about a
    minute, codex until its deadline) before it gives up. Skipped behind a proxy, which may be the
    only way there."""
    environ = os.environ if environ is None else environ
    parsed = urlparse(base_url)
    if not parsed.hostname or any(environ.get(v) for v in PROXY_VARS):
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError as e:
        return (f"cannot reach {base_url} ({parsed.hostname}:{port}: {e.strerror or e}); is the server running, "
                f"and is proposer.base_url right?")
    return None


def anthropic_endpoint(url: str) -> bool:
    """Whether ``url`` can be an Anthropic Messages endpoint: Anthropic's own, or a server whose base
    URL does not end in an OpenAI-style /v1 (Claude Code appends /v1/messages itself)."""
    parsed = urlparse(url)
    host = (parsed.hostname or "").lower()
    if host == "api.anthropic.com":
        return True
    if host in ("api.openai.com", "generativelanguage.googleapis.com") or parsed.path.rstrip("/").endswith("/v1"):
        return False
    return True


# ---------------------------------------------------------------------- what the CLIs print

PLACEHOLDER = "<one line, under 100 characters, saying what you changed>"
_DESC_RE = re.compile(r"^\s*[*_`#>\s-]*DESCRIPTION[*_`]*\s*:\s*(.+?)\s*$", re.I | re.M)


def read_report(output: str) -> Report:
    """The final message, tokens, cost and errors in an agent's output, from the JSON shapes of
    opencode (``--format json`` events: ``text`` parts, ``step_finish`` tokens, ``error``), codex
    (``--json`` events: ``agent_message`` items, ``turn.completed`` usage, ``error``/``turn.failed``)
    and Claude Code (``--output-format json``/``stream-json``: the ``result`` object)."""
    rep = Report()
    for line in output.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict) and _event(ev, rep):
            rep.structured = True
    return rep


def _event(ev: dict[str, Any], rep: Report) -> bool:
    kind, part, item = ev.get("type"), _dict(ev.get("part")), _dict(ev.get("item"))
    if kind == "text" and isinstance(part.get("text"), str):  # opencode
        rep.message = part["text"]
    elif kind == "step_finish" and part.get("tokens"):  # opencode: one per step
        t = _dict(part["tokens"])
        cache = _dict(t.get("cache"))
        rep.prompt_tokens += _int(t.get("input")) + _int(cache.get("read")) + _int(cache.get("write"))
        rep.completion_tokens += _int(t.get("output")) + _int(t.get("reasoning"))
        rep.cost_usd += _num(part.get("cost"))
    elif kind == "item.completed" and item.get("type") == "agent_message":  # codex
        rep.message = str(item.get("text") or "")
    elif kind == "turn.completed":  # codex: one per turn; cached input is part of input_tokens
        u = _dict(ev.get("usage"))
        rep.prompt_tokens += _int(u.get("input_tokens"))
        rep.completion_tokens += _int(u.get("output_tokens"))
    elif kind == "result" and ("result" in ev or "usage" in ev):  # claude: totals of the session
        if isinstance(ev.get("result"), str):
            rep.message = ev["result"]
        u = _dict(ev.get("usage"))
        rep.prompt_tokens = (_int(u.get("input_tokens")) + _int(u.get("cache_creation_input_tokens"))
                             + _int(u.get("cache_read_input_tokens")))
        rep.completion_tokens = _int(u.get("output_tokens"))
        rep.cost_usd = _num(ev.get("total_cost_usd"))
        if ev.get("is_error"):
            rep.errors.append(str(ev.get("result") or ev.get("subtype") or "error"))
    elif kind in ("error", "turn.failed"):  # opencode: error.data.message; codex: message / error.message
        err = _dict(ev.get("error"))
        msg = ev.get("message") or _dict(err.get("data")).get("message") or err.get("message") or err.get("name")
        rep.errors.append(str(msg or line_of(ev)))
    else:
        return kind in ("step_start", "tool_use", "thread.started", "turn.started", "item.started", "item.updated",
                        "item.completed", "system", "assistant", "user")
    return True


def line_of(ev: dict[str, Any]) -> str:
    return json.dumps(ev)[:300]


def description_in(text: str, prompt: str = "") -> str | None:
    """The last ``DESCRIPTION: ...`` line of ``text`` that is not the prompt's own (its placeholder,
    or a line the prompt holds verbatim, as a CLI that echoes the prompt prints it)."""
    echoed = {m.strip() for m in _DESC_RE.findall(prompt)}
    for found in reversed(_DESC_RE.findall(text or "")):
        value = found.strip().strip("*_`").strip()
        if not value or value in echoed or value == PLACEHOLDER or (value.startswith("<") and value.endswith(">")):
            continue
        return value[:120]
    return None


def _dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def _int(x: Any) -> int:
    return int(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else 0


def _num(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else 0.0
