"""The page in headless Chromium: choose an image through the file input, the top label
appears with its latency, the screenshot is not blank, and no request leaves the
server. Skipped without Chromium (Debian: ``apt-get install chromium``)."""

from __future__ import annotations

import base64
import json
import tempfile
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.evaluation._chromium import _start, _stop, find_chromium
from tests.export._models import learnable_arrays

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed")


def upload_in_browser(url: str, image_path: str, screenshot: str, timeout: float = 60.0) -> dict:
    """Open ``url``, set the file input to ``image_path``, wait for the result."""
    profile = tempfile.mkdtemp(prefix="cnnlab-chromium-")
    proc, pipe = _start(find_chromium(), profile, 1000)
    try:
        target = pipe.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)
        sid = pipe.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Network", "DOM"):
            pipe.send(f"{domain}.enable", session=sid)
        pipe.send("Page.navigate", {"url": url + "/"}, session=sid)
        pipe.wait_event("Page.loadEventFired", timeout)
        root = pipe.send("DOM.getDocument", session=sid)["root"]["nodeId"]
        node = pipe.send("DOM.querySelector", {"nodeId": root, "selector": "#file"}, session=sid)[
            "nodeId"
        ]
        pipe.send("DOM.setFileInputFiles", {"files": [image_path], "nodeId": node}, session=sid)
        js = (
            "JSON.stringify({top: document.body.dataset.top || '', error: "
            "document.getElementById('error').textContent, latency: "
            "document.getElementById('latency').textContent, bars: "
            "document.querySelectorAll('#bars .row').length})"
        )
        deadline, state = time.time() + timeout, {}
        while time.time() < deadline:
            ev = pipe.send(
                "Runtime.evaluate", {"expression": js, "returnByValue": True}, session=sid
            )
            state = json.loads(ev["result"]["value"])
            if state["top"] or state["error"]:
                break
            time.sleep(0.1)
        shot = pipe.send("Page.captureScreenshot", {"format": "png"}, session=sid)
        with open(screenshot, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        state["requests"] = [
            e["params"]["request"]["url"]
            for e in pipe.events
            if e.get("sessionId") == sid and e.get("method") == "Network.requestWillBeSent"
        ]
        try:
            pipe.send("Browser.close", timeout=5)
        except (TimeoutError, RuntimeError, OSError):
            pass
        return state
    finally:
        _stop(proc, pipe, profile)


def test_page_classifies_an_uploaded_image_offline(server, tmp_path):
    x, _ = learnable_arrays(1)
    path = tmp_path / "square.png"
    Image.fromarray(x[0]).resize((96, 96), Image.NEAREST).save(path)
    expected = httpx.post(f"{server}/predict", content=path.read_bytes()).json()["top"][0]["label"]
    state = upload_in_browser(server, str(path), str(tmp_path / "page.png"))
    assert state["error"] == "" and state["top"] == expected
    assert state["bars"] == 3 and state["latency"].startswith("server ")
    origin = server + "/"
    leaving = [u for u in state["requests"] if not u.startswith((origin, "blob:", "data:"))]
    assert leaving == [] and f"{server}/predict?top_k=3" in state["requests"]
    with Image.open(tmp_path / "page.png") as im:
        gray = np.asarray(im.convert("L"), np.float32)
    assert gray.std() > 15 and (gray < 128).mean() > 0.005  # text, bars and the image
