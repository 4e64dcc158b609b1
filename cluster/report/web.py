"""`autoresearch-farm dashboard`'s web server: the standard library's threading HTTP server, three
pages, their JSON, and a server-sent event stream per open page.

The server does not know where a run lives: it is handed two functions, ``run()`` (the
:func:`cluster.report.dashboard.run_view` dictionary) and ``candidate(id)`` (its
:func:`~cluster.report.dashboard.candidate_view`), which read a local store or ask a cluster's head
(cluster/cli.py builds them). Their answers are kept for ``interval`` seconds, so any number of open
pages cost one read per interval. A failed read is a banner on the page (and a 503 for a page opened
then), never a traceback; the pages recover by themselves when the run can be read again.

Routes: ``/`` (the run), ``/workers``, ``/c/<id>`` (a candidate: a link to share), ``/api/run``,
``/api/c/<id>`` (their JSON), ``/events?page=run|workers|c/<id>`` (the live stream). Bound to
loopback unless told otherwise; on any other address every request needs the access token (the
``token`` query parameter once, then a cookie).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, quote, unquote, urlsplit

from cluster.errors import FarmError
from cluster.report import pages

log = logging.getLogger(__name__)

KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing an idle stream
COOKIE = "arf_dashboard"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Cached:
    """One value per key, read again once it is `ttl` seconds old, or LOAD_SHARE times as long as the
    last read took (a long run's records take a while to read: the dashboard must not become the
    store's heaviest client); a read that raises is kept as the error."""

    LOAD_SHARE = 5

    def __init__(self, fn: Callable[..., dict[str, Any]], ttl: float) -> None:
        self.fn, self.ttl, self.lock, self.kept, self.took = fn, ttl, threading.Lock(), {}, 0.0

    def get(self, *key: str) -> dict[str, Any]:
        with self.lock:  # one read at a time: a slow source (a cluster's head) is asked once, not once per page
            at, value, error = self.kept.get(key, (0.0, None, None))
            if time.monotonic() - at >= max(self.ttl, self.LOAD_SHARE * self.took):
                t0 = time.monotonic()
                try:
                    value, error = self.fn(*key), None
                except FarmError as e:
                    value, error = None, e
                except Exception as e:  # a store that went away, a head that timed out: shown, then retried
                    log.warning("dashboard read failed", exc_info=True)
                    value, error = None, FarmError(f"{type(e).__name__}: {e}")
                self.took = time.monotonic() - t0
                self.kept[key] = (time.monotonic(), value, error)
                if len(self.kept) > 256:
                    self.kept = {key: self.kept[key]}
        if error is not None:
            raise error
        return value


class Dashboard:
    """The pages of one run, from `run()` and `candidate(id)`."""

    def __init__(self, run: Callable[[], dict[str, Any]], candidate: Callable[[str], dict[str, Any]], *,
                 interval: float = 2.0, token: str | None = None) -> None:
        self.interval, self.token = interval, token
        self._run, self._cand = _Cached(run, interval), _Cached(candidate, interval)
        self.closed = threading.Event()

    def run(self) -> dict[str, Any]:
        return self._run.get()

    def candidate(self, cand_id: str) -> dict[str, Any]:
        return self._cand.get(cand_id)

    def regions(self, key: str) -> tuple[str, str, dict[str, str]]:
        """(title, tag, regions) of the page `key`: "run", "workers" or "c/<id>". A candidate unknown to the
        run raises FarmError."""
        if key.startswith("c/"):
            cv = self.candidate(key[2:])
            return f"{cv['candidate']['id']} · {cv['tag']}", cv["tag"], pages.candidate_regions(cv)
        v = self.run()
        if key == "workers":
            return f"workers · {v['tag']}", v["tag"], pages.workers_regions(v)
        return f"run {v['tag']}", v["tag"], pages.run_regions(v)


def _page_key(path: str) -> str | None:
    if path in ("/", "/index.html"):
        return "run"
    if path == "/workers":
        return "workers"
    if path.startswith("/c/") and len(path) > 3 and "/" not in path[3:]:
        return "c/" + unquote(path[3:])
    return None


class _Handler(BaseHTTPRequestHandler):
    server: "DashboardServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:  # no line per request on the user's terminal
        log.debug("%s " + fmt, self.address_string(), *args)

    def _send(self, code: int, body: str, ctype: str = "text/html; charset=utf-8", extra: dict[str, str] | None = None):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self, query: dict[str, list[str]]) -> tuple[bool, dict[str, str]]:
        token = self.server.dashboard.token
        if not token:
            return True, {}
        given = (query.get("token") or [""])[0]
        if given and hmac.compare_digest(given, token):
            return True, {"Set-Cookie": f"{COOKIE}={quote(token)}; HttpOnly; SameSite=Strict; Path=/"}
        for part in (self.headers.get("Cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and hmac.compare_digest(unquote(value), token):
                return True, {}
        return False, {}

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        ok, cookie = self._authorised(query)
        if not ok:
            return self._send(401, pages.message("Access token needed", "This dashboard listens beyond loopback: "
                                                 "open the URL it printed, with its ?token=..."))
        dash = self.server.dashboard
        if url.path == "/events":
            return self._events((query.get("page") or ["run"])[0])
        if url.path == "/favicon.ico":
            return self._send(204, "")
        api = url.path.startswith("/api/")
        key = "run" if url.path == "/api/run" else _page_key(url.path[4:] if api else url.path)
        if key is None:
            return self._send(404, pages.message("Not found", f"No page {url.path}: the pages are /, /workers "
                                                 "and /c/<candidate>."))
        try:
            if api:
                data = dash.candidate(key[2:]) if key.startswith("c/") else dash.run()
                return self._send(200, json.dumps(data, default=str), "application/json", cookie)
            title, tag, regions = dash.regions(key)
        except FarmError as e:
            missing = key.startswith("c/") and str(e).startswith("no candidate")
            if api:
                return self._send(404 if missing else 503, json.dumps({"error": str(e)}), "application/json")
            return self._send(404 if missing else 503, pages.message(
                "Unknown candidate" if missing else "The run cannot be read", str(e)))
        self._send(200, pages.page(key.split("/")[0], title, tag, regions), extra=cookie)

    def _events(self, key: str) -> None:
        """The page's regions whenever one changes, as `data: {"regions": {...}, "at": "HH:MM:SS"}`."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        dash, sent, last = self.server.dashboard, {}, 0.0
        self.close_connection = True
        while not dash.closed.is_set():
            try:
                _, _, regions = dash.regions(key)
            except FarmError as e:
                regions = {"banner": pages.banner(str(e))}
            changed = {k: v for k, v in regions.items() if sent.get(k) != v}
            try:
                if changed:
                    msg = json.dumps({"regions": changed, "at": time.strftime("%H:%M:%S")})
                    self.wfile.write(f"data: {msg}\n\n".encode())
                    sent.update(changed)
                    last = time.monotonic()
                elif time.monotonic() - last > KEEPALIVE_S:
                    self.wfile.write(b": keep-alive\n\n")
                    last = time.monotonic()
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return  # the page was closed
            dash.closed.wait(min(dash.interval, 1.0))


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True  # an open event stream must not keep the process alive after Ctrl-C

    def __init__(self, dashboard: Dashboard, host: str, port: int) -> None:
        self.dashboard = dashboard
        super().__init__((host, port), _Handler)

    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/" + (f"?token={quote(self.dashboard.token)}" if self.dashboard.token else "")

    def server_close(self) -> None:
        self.dashboard.closed.set()
        super().server_close()


def make_server(dashboard: Dashboard, host: str = "127.0.0.1", port: int = 8050) -> DashboardServer:
    """The server, bound (port 0: any free port). Beyond loopback only with an access token."""
    if not is_loopback(host) and not dashboard.token:
        raise FarmError(f"the dashboard would listen on {host}, beyond this machine, without an access token; "
                        "give it one (--access-token, or let it make one) or keep the default 127.0.0.1")
    try:
        return DashboardServer(dashboard, host, port)
    except OSError as e:
        raise FarmError(f"cannot listen on {host}:{port}: {e.strerror}; choose another --port") from None
