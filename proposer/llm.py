"""The LLM proposer (kind "llm"): any OpenAI-compatible chat endpoint writes the next experiments.

It works with OpenAI, vLLM, Ollama, OpenRouter or anything that serves /v1/chat/completions,
through the official ``openai`` client. Each propose(n) call sends n independent conversations,
``concurrency`` at a time, so the queue stays full while a slow model thinks.

Every answer is validated before it can cost GPU time (see proposer/patching.py): the diff must
apply, touch train.py only, compile, change something and not repeat a tried change. A failed
answer gets one repair round in the same conversation, with the error; if that fails too, the
proposal comes back with ``meta["invalid"]`` set so the controller records why it was dropped.

Transport trouble never raises out of propose(): timeouts, 429 and 5xx are retried with bounded
exponential backoff; a dead or misconfigured endpoint (connection refused, 401, 404, 400) is
logged once per call, kept in ``last_error`` and counted in ``failed_requests``, and the call
returns what it has (possibly nothing). FallbackProposer then lets the offline search fill in.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from proposer.base import History, Proposal, Proposer, ProposerBase, fingerprint
from proposer.patching import Claims, PatchError, apply_patch, check_full_file, check_source
from proposer.prompts import (Request, ResponseError, crash_messages, derive_description, fix_message, parse_response,
                              plan, proposal_messages, strip_reasoning)

log = logging.getLogger(__name__)

NO_KEY = "no-key"  # sent when the key's env var is unset: servers without auth (vLLM, Ollama) ignore it


class TransportError(RuntimeError):
    """The endpoint could not be used (after retries, where retrying made sense)."""


@dataclass
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    truncated: bool  # finish_reason == "length": the answer hit max_tokens


class LLMProposer(ProposerBase):
    name = "llm"

    def __init__(self, *, model: str = "gpt-4.1", base_url: str = "https://api.openai.com/v1",
                 api_key_env: str = "OPENAI_API_KEY", temperature: float = 0.8, max_tokens: int = 16384,
                 request_timeout: float = 600.0, max_retries: int = 4, backoff: float = 2.0,
                 backoff_max: float = 60.0, concurrency: int = 4, price_per_mtok_in: float = 0.0,
                 price_per_mtok_out: float = 0.0, program: str = "", editable: str = "train.py",
                 history_limit: int = 20, near_miss_bpb: float = 0.002, crash_repair: bool = True) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, not {concurrency}")
        self.model, self.base_url, self.api_key_env = model, base_url, api_key_env
        self.temperature, self.max_tokens, self.request_timeout = temperature, max_tokens, request_timeout
        self.max_retries, self.backoff, self.backoff_max = max_retries, backoff, backoff_max
        self.concurrency, self.program, self.editable = concurrency, program, editable
        self.price_in, self.price_out = price_per_mtok_in, price_per_mtok_out
        self.history_limit, self.near_miss, self.crash_repair = history_limit, near_miss_bpb, crash_repair
        self.last_error: str | None = None  # the latest transport error, for status lines and fallbacks
        self.failed_requests = 0  # requests of the latest call lost to transport errors
        self.usage = {"requests": 0, "prompt": 0, "completion": 0}  # totals over the proposer's life
        self._client: Any = None
        self._token_param = "max_tokens"  # switched once if the server wants max_completion_tokens
        self._send_temperature = True  # dropped once if the model refuses to take one (reasoning models)
        self._lock = threading.Lock()
        self._client_lock = threading.Lock()

    # ------------------------------------------------------------------ the proposer API

    def propose(self, n: int, history: History) -> list[Proposal]:
        """Up to n proposals (valid, or marked meta["invalid"]); never raises for transport errors."""
        self.failed_requests = 0
        if n <= 0:
            return []
        claims, dead = Claims(history.tried), threading.Event()
        requests = plan(n, history)

        def one(req: Request) -> Proposal | None:
            if dead.is_set():  # the endpoint already failed hard in this call: don't pile on
                self._fail(None)
                return None
            messages = proposal_messages(self.program, history, req, self.history_limit, self.near_miss,
                                         self.editable)
            meta: dict[str, Any] = {"focus": req.focus} | ({"idea": req.idea} if req.idea else {})
            try:
                return self._conversation(messages, history.base_source, claims, meta)
            except TransportError as e:
                dead.set()
                self._fail(e)
                return None

        with ThreadPoolExecutor(max_workers=min(n, self.concurrency), thread_name_prefix="llm") as pool:
            results = list(pool.map(one, requests))
        out = [p for p in results if p is not None]
        if self.failed_requests:
            log.warning("llm: %d of %d requests to %s failed: %s", self.failed_requests, n, self.base_url,
                        self.last_error)
        return out

    def repair(self, meta: dict[str, Any], source: str, log_tail: str, tried: set[str] | None = None
               ) -> Proposal | None:
        """A fix for a crashed candidate (its meta, its train.py, its log tail), or None.

        None when the candidate is not repairable (not from this proposer, or already a repair:
        a second crash ends that line of work) or the endpoint failed. The fix's meta["parent"]
        is the crashed candidate's id (meta["candidate"], else its fingerprint).
        """
        self.failed_requests = 0
        if not self.crash_repair or not meta.get("repairable") or meta.get("parent"):
            return None
        description = str(meta.get("description") or "(no description)")
        messages = crash_messages(self.program, description, source, log_tail, self.editable)
        link = {"parent": meta.get("candidate") or meta.get("fingerprint") or fingerprint(source),
                "repair_of": description, "repairable": False}
        try:
            return self._conversation(messages, source, Claims(tried or ()), link)
        except TransportError as e:
            self._fail(e)
            log.warning("llm: crash repair of %r failed: %s", description, e)
            return None

    # ------------------------------------------------------------------ one conversation

    def _conversation(self, messages: list[dict[str, str]], base: str, claims: Claims,
                      meta: dict[str, Any]) -> Proposal:
        """Ask, validate, and on failure ask once more with the error; the proposal either way."""
        tokens = {"prompt": 0, "completion": 0}
        reason, source, description = "", "", None
        for round_ in (1, 2):
            try:
                reply = self._chat(messages)
            except TransportError as e:
                if round_ == 1:
                    raise
                self._fail(e)
                reason += f" (the repair request failed: {e})"
                break
            tokens["prompt"] += reply.prompt_tokens
            tokens["completion"] += reply.completion_tokens
            try:
                parsed = parse_response(reply.text)
                description = parsed.description or description
                if parsed.kind == "diff":
                    source = apply_patch(base, parsed.body, self.editable)
                    problem = check_source(base, source, editable=self.editable)
                else:
                    source = parsed.body
                    problem = (check_full_file(base, source, self.editable)
                               or check_source(base, source, editable=self.editable))
                if problem is None and not claims.claim(source):
                    problem = ("this exact change was already tried or queued on this main line; "
                               "propose something different")
                if problem is None:
                    desc = parsed.description or derive_description(base, source)
                    extra = {"description": desc, "format": parsed.kind, "rounds": round_}
                    full = {"repairable": self.crash_repair} | meta | extra  # a repair's meta says False
                    return Proposal(desc, source, self.name, self._meta(full, tokens))
                reason = problem
            except (ResponseError, PatchError) as e:
                reason = str(e)
            if reply.truncated:
                reason += " (the answer hit the max_tokens limit: prefer a short diff)"
            log.info("llm: round %d answer refused: %s", round_, reason)
            messages = messages + [{"role": "assistant", "content": strip_reasoning(reply.text)},
                                   {"role": "user", "content": fix_message(reason)}]
        desc = description or "invalid LLM proposal"
        return Proposal(desc, "" if source == base else source, self.name,
                        self._meta(meta | {"description": desc, "invalid": reason.strip(), "rounds": 2}, tokens))

    def _meta(self, meta: dict[str, Any], tokens: dict[str, int]) -> dict[str, Any]:
        meta = dict(meta, model=self.model, tokens=dict(tokens))
        if self.price_in or self.price_out:
            meta["cost_usd"] = round(tokens["prompt"] * self.price_in / 1e6
                                     + tokens["completion"] * self.price_out / 1e6, 6)
        return meta

    def _fail(self, e: Exception | None) -> None:
        with self._lock:
            self.failed_requests += 1
            if e is not None:
                self.last_error = str(e)

    # ------------------------------------------------------------------ transport

    def client(self) -> Any:
        """The openai client, made on first use (so constructing a proposer touches nothing)."""
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        import openai

        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if not key:
            log.info("llm: $%s is not set; sending a placeholder key (fine for servers without auth)",
                     self.api_key_env)
        return openai.OpenAI(base_url=self.base_url, api_key=key or NO_KEY, timeout=self.request_timeout,
                             max_retries=0)

    def _chat(self, messages: list[dict[str, str]]) -> Reply:
        """One completion, retried on timeouts, 429 and 5xx with exponential backoff."""
        import openai

        where = f"{self.base_url} (model {self.model!r})"
        attempt = 0
        while True:  # parameter switches (each happens at most once) do not count as attempts
            wait: float | None = None
            try:
                extra: dict[str, Any] = {self._token_param: self.max_tokens}
                if self._send_temperature:
                    extra["temperature"] = self.temperature
                resp = self.client().chat.completions.create(model=self.model, messages=messages, **extra)
                with self._lock:
                    self.usage["requests"] += 1
                    if resp.usage:
                        self.usage["prompt"] += resp.usage.prompt_tokens or 0
                        self.usage["completion"] += resp.usage.completion_tokens or 0
                choice = resp.choices[0] if resp.choices else None
                return Reply(text=(choice.message.content or "") if choice else "",
                             prompt_tokens=(resp.usage.prompt_tokens or 0) if resp.usage else 0,
                             completion_tokens=(resp.usage.completion_tokens or 0) if resp.usage else 0,
                             truncated=bool(choice and choice.finish_reason == "length"))
            except openai.APITimeoutError:
                err = f"the request to {where} timed out after {self.request_timeout:.0f} s"
            except openai.APIConnectionError as e:
                raise TransportError(f"cannot reach {where}: {e.__cause__ or e}; is the server running, "
                                     "and is proposer.base_url right?") from None
            except openai.AuthenticationError as e:
                raise TransportError(f"{where} refused the API key (401): set ${self.api_key_env} to a valid key, "
                                     f"or proposer.api_key_env to the variable that holds it ({_msg(e)})") from None
            except openai.NotFoundError as e:
                raise TransportError(f"{where} answered 404: check proposer.base_url (it usually ends in /v1) "
                                     f"and proposer.model ({_msg(e)})") from None
            except openai.APIStatusError as e:
                code = e.status_code
                if code == 400 and "max_completion_tokens" in _msg(e) and self._token_param == "max_tokens":
                    log.info("llm: %s wants max_completion_tokens; switching", where)
                    self._token_param = "max_completion_tokens"
                    continue
                if code == 400 and "temperature" in _msg(e) and self._send_temperature:
                    log.info("llm: %s refuses a temperature; sending none", where)
                    self._send_temperature = False
                    continue
                if code not in (408, 409, 429) and code < 500:
                    raise TransportError(f"{where} refused the request ({code}): {_msg(e)}") from None
                err = f"{where} answered {code}: {_msg(e)}"
                wait = _retry_after(e)
            except openai.APIError as e:
                raise TransportError(f"{where} sent an unusable response: {e}") from None
            if attempt == self.max_retries:
                raise TransportError(f"{err}; gave up after {attempt + 1} attempts")
            delay = min(self.backoff_max, self.backoff * 2**attempt)
            if wait is not None:
                delay = min(self.backoff_max, max(delay, wait))
            log.info("llm: %s; retrying in %.1f s", err, delay)
            time.sleep(delay)
            attempt += 1


def _msg(e: Exception) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:300]
    return str(getattr(e, "message", e))[:300]


def _retry_after(e: Exception) -> float | None:
    response = getattr(e, "response", None)
    try:
        return float(response.headers.get("retry-after")) if response is not None else None
    except (TypeError, ValueError):
        return None


class FallbackProposer(ProposerBase):
    """The primary proposer, with another one filling in while the primary's endpoint fails.

    When a call of the primary lost requests to transport errors (see ``failed_requests``), the
    fallback proposes the rest, on a history that includes what the primary did return. A primary
    that returned nothing at all is skipped for ``cooldown_s`` seconds and then tried again, so a
    dead endpoint costs one quick failure per cool-down, not one per call.
    """

    def __init__(self, primary: Proposer, fallback: Proposer, cooldown_s: float = 60.0) -> None:
        self.primary, self.fallback, self.cooldown_s = primary, fallback, cooldown_s
        self.name = primary.name
        self._skip_until = 0.0

    @property
    def last_error(self) -> str | None:
        return getattr(self.primary, "last_error", None)

    def propose(self, n: int, history: History) -> list[Proposal]:
        out: list[Proposal] = []
        if time.monotonic() >= self._skip_until:
            out = self.primary.propose(n, history)
            if not getattr(self.primary, "failed_requests", 0) or len(out) >= n:
                return out
            if not out:
                self._skip_until = time.monotonic() + self.cooldown_s
                log.warning("%s failed (%s); %s proposes for the next %.0f s", self.primary.name,
                            self.last_error, self.fallback.name, self.cooldown_s)
        seen = history.tried | {fingerprint(p.source) for p in out if p.source}
        rest = replace(history, tried=seen, pending_descriptions=history.pending_descriptions
                       + [p.description for p in out])
        return out + self.fallback.propose(n - len(out), rest)

    def repair(self, meta: dict[str, Any], source: str, log_tail: str, tried: set[str] | None = None
               ) -> Proposal | None:
        return self.primary.repair(meta, source, log_tail, tried)

    def status(self) -> dict[str, Any]:
        return self.primary.status()


def from_settings(settings: dict[str, Any]) -> Proposer:
    """The "llm" proposer from the [proposer] settings, wrapped in a fallback unless fallback = ""."""
    keys = ("model", "base_url", "api_key_env", "temperature", "max_tokens", "request_timeout", "max_retries",
            "backoff", "concurrency", "price_per_mtok_in", "price_per_mtok_out", "program", "editable",
            "history_limit", "near_miss_bpb", "crash_repair")
    llm = LLMProposer(**{k: settings[k] for k in keys if k in settings})
    return with_fallback(llm, settings)


def with_fallback(primary: Proposer, settings: dict[str, Any]) -> Proposer:
    """primary wrapped in FallbackProposer(mutate) when settings["fallback"] is "mutate" (the default)."""
    kind = settings.get("fallback", "mutate")
    if not kind:
        return primary
    if kind != "mutate":
        raise ValueError(f"proposer.fallback must be 'mutate' or '', not {kind!r}")
    from proposer import make_proposer

    return FallbackProposer(primary, make_proposer("mutate", settings),
                            cooldown_s=settings.get("fallback_cooldown", 60.0))
