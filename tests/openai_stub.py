"""A loopback OpenAI-compatible server for tests: POST /v1/chat/completions with scripted replies.

The LLM proposer is tested through the real ``openai`` client over real HTTP, so retries,
status codes, headers and JSON shapes are exercised as in production. Replies come from a FIFO
script or, for concurrent requests whose order is not fixed, from a responder function of the
request. Every request is recorded (so tests can read the prompt), and the server counts how
many requests were in flight at once.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass
class Reply:
    content: str = ""
    status: int = 200
    message: str = ""  # the error message of a non-200 reply
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering
    prompt_tokens: int = 100
    completion_tokens: int = 50
    finish_reason: str = "stop"


def text(content: str, **kw: Any) -> Reply:
    return Reply(content=content, **kw)


def error(status: int, message: str = "scripted error", **kw: Any) -> Reply:
    return Reply(status=status, message=message, **kw)


Responder = Callable[[dict[str, Any], int], Reply]  # (request body, 0-based request index) -> reply


class OpenAIStub:
    def __init__(self, script: list[Reply] | None = None, responder: Responder | None = None) -> None:
        self.script: deque[Reply] = deque(script or [])
        self.responder = responder
        self.requests: list[dict[str, Any]] = []  # {"path", "headers" (names lower-cased), "body"}, in order
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start the stub first (use it as a context manager)"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def bodies(self) -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests]

    def push(self, *replies: Reply) -> None:
        self.script.extend(replies)

    def _next(self, body: dict[str, Any], index: int) -> Reply:
        with self._lock:
            if self.script:
                return self.script.popleft()
        if self.responder is not None:
            return self.responder(body, index)
        return error(500, "openai_stub: no scripted reply left")

    def __enter__(self) -> "OpenAIStub":
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}}, {})
                    return
                body = json.loads(raw or b"{}")
                with stub._lock:
                    index = len(stub.requests)
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    stub.requests.append({"path": self.path, "headers": headers, "body": body})
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                try:
                    reply = stub._next(body, index)
                    time.sleep(reply.delay)
                finally:
                    with stub._lock:
                        stub.in_flight -= 1
                if reply.status != 200:
                    self._send(reply.status, {"error": {"message": reply.message, "type": "stub_error"}},
                               reply.headers)
                    return
                usage = {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                         "total_tokens": reply.prompt_tokens + reply.completion_tokens}
                self._send(200, {
                    "id": f"chatcmpl-stub{index}", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model", "stub"),
                    "choices": [{"index": 0, "finish_reason": reply.finish_reason,
                                 "message": {"role": "assistant", "content": reply.content}}],
                    "usage": usage,
                }, reply.headers)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), name="openai-stub", daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def closed_port_url() -> str:
    """A loopback URL where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
