"""A real headless Chromium for the tests, driven over the Chrome DevTools Protocol (CDP).

Debian's `chromium` (`.ci/run` installs it where it is missing), started with a throw-away profile
and `--remote-debugging-port=0`; the port it chose is read from the profile's DevToolsActivePort.
One page target, attached through the browser's websocket (aiohttp, which Ray brings), in a thread
of its own with its own event loop; the tests call it synchronously:

    with Browser() as b:
        b.goto(url)                       # waits for the load event
        b.wait_for("document.querySelectorAll('tr').length > 3", timeout=60)
        b.text("#count"); b.eval("document.title"); b.screenshot(path, width=1280, height=900)
        b.navigations                     # main-frame navigations: 1 after one goto means no reload
        b.console                         # console messages and uncaught exceptions the page had

The whole process group is killed on exit (chromium starts a zygote, a GPU and renderer processes).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


class BrowserError(RuntimeError):
    pass


def chromium_path() -> str | None:
    """$CHROMIUM, else the first of chromium, chromium-browser, google-chrome on PATH."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return None


FLAGS = ["--headless=new", "--no-sandbox",  # root (CI) cannot use chromium's setuid sandbox
         "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
         "--disable-extensions", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--mute-audio", "--hide-scrollbars", "--remote-debugging-port=0"]


class Browser:
    def __init__(self, start_timeout: float = 60.0) -> None:
        exe = chromium_path()
        if exe is None:
            raise RuntimeError("no Chromium found (set CHROMIUM, or install it: `apt-get install chromium` on "
                               "Debian, as .ci/run does)")
        self.profile = Path(tempfile.mkdtemp(prefix="arf-chromium-"))
        self._log = (self.profile.parent / f"{self.profile.name}.log").open("w+b")  # a pipe left unread would fill
        self.proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=self._log, start_new_session=True)
        self.console: list[dict[str, Any]] = []
        self.navigations = 0
        self._id, self._waiting, self._events = 0, {}, []
        self._loaded = threading.Event()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        try:
            ws = self._endpoint(start_timeout)
            asyncio.run_coroutine_threadsafe(self._connect(ws), self.loop).result(30)
            target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
            self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                     session=False)["sessionId"]
            for domain in ("Page", "Runtime"):
                self.send(f"{domain}.enable")
        except BaseException:
            self.close()
            raise

    def _endpoint(self, timeout: float) -> str:
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not marker.exists() or len(marker.read_text().split()) < 2:
            if self.proc.poll() is not None:
                self._log.seek(0)
                raise BrowserError(f"chromium exited {self.proc.returncode}: {self._log.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                raise BrowserError(f"chromium did not open its debugging port within {timeout:.0f}s")
            time.sleep(0.1)
        port, path = marker.read_text().split()[:2]
        return f"ws://127.0.0.1:{port}{path}"

    async def _connect(self, url: str) -> None:
        import aiohttp

        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(url, max_msg_size=0)
        self.loop.create_task(self._pump())

    async def _pump(self) -> None:
        async for msg in self._ws:
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._waiting.pop(data["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
            else:
                self._event(data.get("method", ""), data.get("params") or {})

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Page.frameNavigated" and not params.get("frame", {}).get("parentId"):
            self.navigations += 1
        elif method == "Page.loadEventFired":
            self._loaded.set()
        elif method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.console.append({"type": params.get("type"), "text": text})
        elif method == "Runtime.exceptionThrown":
            d = params.get("exceptionDetails") or {}
            self.console.append({"type": "exception", "text": (d.get("exception") or {}).get("description")
                                 or d.get("text", "")})

    def send(self, method: str, params: dict[str, Any] | None = None, *, session: bool = True,
             timeout: float = 60.0) -> dict[str, Any]:
        """One CDP command; its result, or BrowserError with the protocol's error."""
        async def call() -> dict[str, Any]:
            self._id += 1
            msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
            if session:
                msg["sessionId"] = self.session
            fut = self.loop.create_future()
            self._waiting[self._id] = fut
            await self._ws.send_str(json.dumps(msg))
            return await asyncio.wait_for(fut, timeout)

        reply = asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout + 5)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result") or {}

    def goto(self, url: str, timeout: float = 60.0) -> None:
        self._loaded.clear()
        nav = self.send("Page.navigate", {"url": url})
        if nav.get("errorText"):
            raise BrowserError(f"cannot open {url}: {nav['errorText']}")
        if not self._loaded.wait(timeout):
            raise BrowserError(f"{url} did not finish loading within {timeout:.0f}s")

    def eval(self, expression: str) -> Any:
        """The expression's value (JSON-able), evaluated in the page; a JS exception raises BrowserError."""
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise BrowserError(f"{expression}: {(d.get('exception') or {}).get('description') or d.get('text')}")
        return (r.get("result") or {}).get("value")

    def wait_for(self, expression: str, timeout: float = 30.0, every: float = 0.25) -> Any:
        """Poll the expression until it is truthy; its value."""
        deadline, value = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(every)
        raise BrowserError(f"still falsy after {timeout:.0f}s: {expression} (last value {value!r})")

    def text(self, selector: str) -> str | None:
        return self.eval(f"(e => e ? e.innerText : null)(document.querySelector({json.dumps(selector)}))")

    def screenshot(self, path: Path | str, width: int = 1280, height: int = 900, full_page: bool = False) -> Path:
        if full_page:
            height = max(height, int(self.eval("document.documentElement.scrollHeight")))
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": full_page})["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        async def shut() -> None:
            if getattr(self, "_ws", None) is not None:
                await self._ws.close()
            if getattr(self, "_http", None) is not None:
                await self._http.close()

        if self.loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(shut(), self.loop).result(10)
            except Exception:
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the browser and every helper process it started
        except ProcessLookupError:
            pass
        self.proc.wait(30)
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
