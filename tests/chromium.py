"""Headless Chromium (Debian's package) driven over the DevTools protocol, for the report's browser tests.

Playwright's browser download is not available everywhere this suite runs, so the tests talk
to the system's chromium directly: a small synchronous client over websocket-client. Every
request the page attempts is seen (Network.requestWillBeSent) and refused (Fetch), every
console message, uncaught exception, browser log entry (a Content-Security-Policy violation,
a failed load) and JavaScript dialog is recorded.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websocket

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    return next((found for name in CANDIDATES if (found := shutil.which(name))), None)


@dataclass
class PageVisit:
    url: str
    requests: list[str] = field(default_factory=list)       # every URL but the page's own
    console_errors: list[str] = field(default_factory=list)  # console.error/assert, exceptions, error log entries
    dialogs: list[str] = field(default_factory=list)


class Chromium:
    """One headless browser process with one page; a context manager that always ends the process."""

    def __init__(self, executable: str | None = None, timeout: float = 60.0) -> None:
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise FileNotFoundError("no chromium executable on PATH")
        self.timeout = timeout
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        self._responses: dict[int, dict[str, Any]] = {}
        self._visit = PageVisit("about:blank")

    def __enter__(self) -> "Chromium":
        self._profile = tempfile.TemporaryDirectory(prefix="pgstage-chromium-", ignore_cleanup_errors=True)
        assert self.executable is not None
        # Its own process group: the browser's helpers (zygote, renderer, GPU) end with it.
        self._process = subprocess.Popen(
            [self.executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
             "--disable-sync", "--disable-component-update", "--hide-scrollbars", "--remote-debugging-port=0",
             f"--user-data-dir={self._profile.name}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port = self._port()
            page = next(t for t in self._targets(port) if t.get("type") == "page")
            self._ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=self.timeout,
                                                   suppress_origin=True)
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.call(f"{domain}.enable")
            # Intercept everything; the page itself is let through, anything else is refused.
            self.call("Fetch.enable", patterns=[{"urlPattern": "*"}])
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _stop(self) -> None:
        if getattr(self, "_ws", None) is not None:
            self._ws.close()
        group = self._process.pid                  # the group this browser leads (start_new_session)
        for signal_, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(group, signal_)
            except ProcessLookupError:
                break
            try:
                self._process.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:       # helpers may outlive the browser by a moment
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        self._profile.cleanup()

    def _port(self) -> int:
        marker = Path(self._profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if marker.exists() and (lines := marker.read_text().split()):
                return int(lines[0])
            if self._process.poll() is not None:
                raise RuntimeError(f"chromium exited with status {self._process.returncode}")
            time.sleep(0.05)
        raise TimeoutError("chromium did not open its DevTools port")

    def _targets(self, port: int) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=self.timeout) as response:
            return list(json.load(response))

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result.

        Events that hold the page back (a paused request, a dialog) are answered at once, even
        while waiting for a result (a navigation waits for its own paused request); the others
        are kept for `_pump`.
        """
        self._next_id += 1
        mine = self._next_id
        self._ws.send(json.dumps({"id": mine, "method": method, "params": params}))
        while mine not in self._responses:
            message = json.loads(self._ws.recv())
            if "id" in message:
                self._responses[message["id"]] = message
            elif message.get("method") in ("Fetch.requestPaused", "Page.javascriptDialogOpening"):
                self._handle(message)
            elif "method" in message:
                self._events.append(message)
        message = self._responses.pop(mine)
        if "error" in message:
            raise RuntimeError(f"{method}: {message['error']}")
        return dict(message.get("result", {}))

    def _pump(self, until: str | None, seconds: float) -> None:
        """Handle events until `until` arrives, or for `seconds` of quiet."""
        deadline = time.monotonic() + (self.timeout if until else seconds)
        while True:
            while self._events:
                event = self._events.pop(0)
                self._handle(event)
                if until and event["method"] == until:
                    return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if until:
                    raise TimeoutError(f"no {until} within {self.timeout}s")
                return
            self._ws.settimeout(remaining)
            try:
                message = json.loads(self._ws.recv())
            except websocket.WebSocketTimeoutException:
                if until:
                    raise TimeoutError(f"no {until} within {self.timeout}s") from None
                return
            finally:
                self._ws.settimeout(self.timeout)
            if "id" in message:
                self._responses[message["id"]] = message
            else:
                self._events.append(message)

    def _handle(self, event: dict[str, Any]) -> None:
        visit, method, params = self._visit, event["method"], event.get("params", {})
        if method == "Fetch.requestPaused":
            url = params["request"]["url"]
            if url == visit.url:
                self.call("Fetch.continueRequest", requestId=params["requestId"])
            else:
                if url not in visit.requests:
                    visit.requests.append(url)
                self.call("Fetch.failRequest", requestId=params["requestId"], errorReason="BlockedByClient")
        elif method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            if url != visit.url and url not in visit.requests:
                visit.requests.append(url)
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            visit.console_errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            visit.console_errors.append(str(details.get("exception", {}).get("description", details.get("text"))))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            visit.console_errors.append(params["entry"]["text"])
        elif method == "Page.javascriptDialogOpening":
            visit.dialogs.append(params.get("message", ""))
            self.call("Page.handleJavaScriptDialog", accept=True)

    def open(self, path: Path, *, width: int = 1280, height: int = 900, mobile: bool = False) -> PageVisit:
        """Load a file, wait for its load event and a moment of quiet, and return what it did."""
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=mobile)
        visit = self._visit = PageVisit(path.resolve().as_uri())
        self._events.clear()
        self.call("Page.navigate", url=visit.url)
        self._pump("Page.loadEventFired", 0)
        self._pump(None, 0.5)
        return visit

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, full_page: bool = True) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png",
                                          captureBeyondViewport=full_page)["data"])


def main(argv: list[str] | None = None) -> None:
    """`python -m tests.chromium PAGE.html SHOT.png [WIDTH]`: a full-page screenshot (the docs' images)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        raise SystemExit("usage: python -m tests.chromium PAGE.html SHOT.png [WIDTH]")
    with Chromium() as browser:
        visit = browser.open(Path(args[0]), width=int(args[2]) if len(args) == 3 else 1100)
        if visit.console_errors or visit.requests:
            raise SystemExit(f"{args[0]}: console errors {visit.console_errors}, requests {visit.requests}")
        png = browser.screenshot()
    from PIL import Image   # a palette of 128 colours: a quarter of the bytes, no visible loss on these pages

    with Image.open(io.BytesIO(png)) as image:
        image.convert("RGB").quantize(colors=128).save(args[1], optimize=True)


if __name__ == "__main__":
    main()
