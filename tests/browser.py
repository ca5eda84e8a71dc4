"""A page in headless Chromium, driven over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON messages
NUL-separated on fds 3 and 4), so no websocket client or browser-automation package is needed.

`visit` loads a file URL and returns what the tests check: console messages and errors, every request the page
made, a few DOM facts, and a full-page screenshot.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BINARIES = ("chromium", "chromium-browser", "google-chrome")
# What the report's DOM holds, measured in the page (images must have decoded, not just be present).
FACTS_JS = """JSON.stringify({
  svgs: document.querySelectorAll('figure svg').length,
  svg_marks: Array.from(document.querySelectorAll('figure svg')).map(s => s.querySelectorAll('path,use').length),
  images: document.images.length,
  images_decoded: Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length,
  tables: document.querySelectorAll('table').length,
  task_rows: document.querySelectorAll('#tasks tbody tr').length,
  sections: Array.from(document.querySelectorAll('section')).map(s => s.id),
  export_command: (document.querySelector('#verdict pre') || {}).textContent || '',
  height: document.documentElement.scrollHeight,
})"""


def chromium() -> str | None:
    return next((found for name in BINARIES if (found := shutil.which(name))), None)


@dataclass
class Visit:
    requests: list[str] = field(default_factory=list)  # every URL the page asked for, the page's own included
    console: list[tuple[str, str]] = field(default_factory=list)  # (level, text)
    errors: list[str] = field(default_factory=list)  # exceptions, failed loads, browser log errors
    facts: dict = field(default_factory=dict)
    screenshot: bytes = b""


class Pipe:
    """One Chromium process and its DevTools pipe."""

    def __init__(self, binary: str, profile: str):
        child_in, self._to_child = os.pipe()
        self._from_child, child_out = os.pipe()
        # The child reads commands on fd 3 and writes replies and events on fd 4. Copies above 10 first, so the
        # dup2 onto 3 and 4 cannot overwrite one end with the other; close_fds=False keeps 3 and 4 open across
        # exec (Python's own fds are close-on-exec by default, so nothing else leaks).
        low = child_in, child_out
        child_in, child_out = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in low)
        for fd in low:
            os.close(fd)

        def wire():
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        self.proc = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--mute-audio",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-sync",
                "--disable-background-networking",
                "--disable-component-update",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            close_fds=False,
            preexec_fn=wire,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(child_in)
        os.close(child_out)
        self._buffer, self._next_id, self.events = b"", 0, []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30.0) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("no reply from Chromium")
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)
        os.close(self._from_child)


def visit(path: Path, width: int = 1200) -> Visit:
    """Load `path` in headless Chromium and report what happened."""
    binary = chromium()
    if binary is None:
        raise FileNotFoundError("no Chromium: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="rewind-chromium-") as profile:
        pipe = Pipe(binary, profile)
        try:
            return _visit(pipe, path.resolve().as_uri(), width)
        finally:
            pipe.close()


def _visit(pipe: Pipe, url: str, width: int) -> Visit:
    target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Network", "Runtime", "Log"):
        pipe.send(f"{domain}.enable", session=session)
    pipe.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False},
        session=session,
    )
    pipe.events.clear()
    pipe.send("Page.navigate", {"url": url}, session=session)
    pipe.wait_for("Page.loadEventFired")
    facts = pipe.send("Runtime.evaluate", {"expression": FACTS_JS, "returnByValue": True}, session=session)
    shot = pipe.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session)
    result = Visit(facts=json.loads(facts["result"]["value"]), screenshot=base64.b64decode(shot["data"]))
    for event in pipe.events:
        _record(result, event.get("method", ""), event.get("params", {}))
    return result


def _record(result: Visit, method: str, params: dict) -> None:
    if method == "Network.requestWillBeSent":
        result.requests.append(params["request"]["url"])
    elif method == "Network.loadingFailed":
        result.errors.append(f"load failed: {params.get('errorText')}")
    elif method == "Runtime.consoleAPICalled":
        text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
        result.console.append((params.get("type", ""), text))
        if params.get("type") in ("error", "assert"):
            result.errors.append(f"console.{params['type']}: {text}")
    elif method == "Runtime.exceptionThrown":
        result.errors.append(f"exception: {params['exceptionDetails'].get('text')}")
    elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
        result.errors.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
