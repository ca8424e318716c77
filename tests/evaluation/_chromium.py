"""Open an HTML file in headless Chromium and report what a user would see.

Drives Chromium over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
JSON messages ending in NUL on file descriptors 3 and 4), so nothing beyond
the ``chromium`` binary is needed: no websocket client, no Selenium.

Only the page's own activity is recorded (events of the page's session), not
the browser's background requests, which flags cannot fully silence.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-pipe",
]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageCheck:
    """What loading the page showed."""

    url: str
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    console: list[str] = field(default_factory=list)  # console messages: "level: text"
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    sections: dict = field(default_factory=dict)  # id -> rendered height in px (0: missing)
    images: dict = field(default_factory=dict)  # total, broken
    page_height: int = 0
    screenshot: Path | None = None

    @property
    def network_requests(self) -> list[str]:
        """Requests that leave the file: anything but data: URIs and the page itself."""
        return [u for u in self.requests if not u.startswith("data:") and u != self.url]


class _Pipe:
    def __init__(self, proc, write_fd: int, read_fd: int):
        self.proc, self.w, self.r = proc, write_fd, read_fd
        self.buf = b""
        self.next_id = 0
        self.events: list[dict] = []

    def send(
        self,
        method: str,
        params: dict | None = None,
        session: str | None = None,
        timeout: float = 30.0,
    ) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = self._read(deadline)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)
        raise TimeoutError(method)

    def wait_event(self, method: str, timeout: float = 30.0) -> dict:
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(i)
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = self._read(deadline)
            if m.get("method") == method:
                return m
            self.events.append(m)
        raise TimeoutError(method)

    def _read(self, deadline: float) -> dict:
        import select

        while b"\0" not in self.buf:
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError("no answer from chromium")
            ready, _, _ = select.select([self.r], [], [], left)
            if ready:
                chunk = os.read(self.r, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the pipe")
                self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)


_SECTION_JS = """(() => {
  const ids = %s;
  const out = {};
  for (const id of ids) { const el = document.getElementById(id);
    out[id] = el ? Math.round(el.getBoundingClientRect().height) : 0; }
  const imgs = Array.from(document.images);
  return JSON.stringify({sections: out, images: {total: imgs.length,
    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length},
    height: Math.ceil(document.documentElement.scrollHeight)});
})()"""


def check_page(
    html: str | os.PathLike,
    section_ids,
    screenshot: str | os.PathLike | None = None,
    width: int = 1280,
    timeout: float = 60.0,
    binary: str | None = None,
) -> PageCheck:
    """Load ``html`` from disk in headless Chromium; record requests, console and layout.

    ``screenshot`` gets a full-page PNG. Raises if Chromium is missing or hangs.
    """
    binary = binary or find_chromium()
    if binary is None:
        raise FileNotFoundError("chromium is not installed")
    result = PageCheck(Path(html).resolve().as_uri())
    profile = tempfile.mkdtemp(prefix="cnnlab-chromium-")
    proc, pipe = _start(binary, profile, width)
    try:
        sid = _open(pipe, result.url, width, timeout)
        _measure(pipe, sid, section_ids, result)
        if screenshot is not None:
            _screenshot(pipe, sid, width, result, Path(screenshot), timeout)
        _record_events(pipe.events, sid, result)
        try:
            pipe.send("Browser.close", timeout=5)
        except (TimeoutError, RuntimeError, OSError):  # it may close before answering
            pass
    finally:
        _stop(proc, pipe, profile)
    return result


def _start(binary: str, profile: str, width: int) -> tuple[subprocess.Popen, _Pipe]:
    """Chromium with its DevTools pipe on descriptors 3 (commands in) and 4 (answers out)."""
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    # The shell puts our pipe ends on descriptors 3 and 4, where Chromium expects them.
    cmd = f'exec "$0" "$@" 3<&{to_child_r} 4>&{from_child_w}'
    proc = subprocess.Popen(
        [
            "bash",
            "-c",
            cmd,
            binary,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},900",
            "about:blank",
        ],
        pass_fds=(to_child_r, from_child_w),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(to_child_r)
    os.close(from_child_w)
    return proc, _Pipe(proc, to_child_w, from_child_r)


def _stop(proc: subprocess.Popen, pipe: _Pipe, profile: str) -> None:
    """Wait for Chromium to exit (kill it after 10 s), close its pipes, delete its profile."""
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    os.close(pipe.w)
    os.close(pipe.r)
    shutil.rmtree(profile, ignore_errors=True)


def _viewport(pipe: _Pipe, sid: str, width: int, height: int) -> None:
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
    pipe.send("Emulation.setDeviceMetricsOverride", metrics, session=sid)


def _open(pipe: _Pipe, url: str, width: int, timeout: float) -> str:
    """Load ``url`` in a new tab, watching its page, console, log and network: the session id."""
    target = pipe.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)
    attached = pipe.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
    sid = attached["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        pipe.send(f"{domain}.enable", session=sid)
    _viewport(pipe, sid, width, 900)
    pipe.send("Page.navigate", {"url": url}, session=sid)
    pipe.wait_event("Page.loadEventFired", timeout)
    time.sleep(0.3)  # let late console messages arrive
    return sid


def _measure(pipe: _Pipe, sid: str, section_ids, result: PageCheck) -> None:
    expression = _SECTION_JS % json.dumps(list(section_ids))
    ev = pipe.send(
        "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=sid
    )
    info = json.loads(ev["result"]["value"])
    result.sections, result.images = info["sections"], info["images"]
    result.page_height = info["height"]


def _screenshot(
    pipe: _Pipe, sid: str, width: int, result: PageCheck, path: Path, timeout: float
) -> None:
    _viewport(pipe, sid, width, result.page_height)
    shot = pipe.send(
        "Page.captureScreenshot",
        {"format": "png", "captureBeyondViewport": True},
        session=sid,
        timeout=timeout,
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    result.screenshot = path


def _record_events(events: list[dict], sid: str, result: PageCheck) -> None:
    """Requests, console messages and errors of the page's own session."""
    for e in events:
        if e.get("sessionId") != sid:
            continue
        method, p = e.get("method"), e.get("params", {})
        if method == "Network.requestWillBeSent":
            result.requests.append(p["request"]["url"])
        elif method == "Network.loadingFailed":
            result.errors.append(f"load failed: {p.get('errorText')}")
        elif method == "Runtime.consoleAPICalled":
            text = " ".join(
                str(a.get("value", a.get("description", ""))) for a in p.get("args", [])
            )
            result.console.append(f"{p.get('type')}: {text}")
            if p.get("type") in ("error", "assert"):
                result.errors.append(f"console: {text}")
        elif method == "Runtime.exceptionThrown":
            result.errors.append(f"exception: {p['exceptionDetails'].get('text')}")
        elif method == "Log.entryAdded":
            entry = p["entry"]
            result.console.append(f"{entry['level']}: {entry['text']}")
            if entry["level"] == "error":
                result.errors.append(f"log: {entry['text']} {entry.get('url', '')}")
