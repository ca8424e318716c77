"""The server against the inputs a public endpoint gets: each gets its intended status and
a JSON ``{"error", "detail"}``, never a 500, and the server still answers afterwards."""

from __future__ import annotations

import io
import socket
import struct
import zlib
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.export._models import learnable_arrays


def encode(array: np.ndarray, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **kwargs)
    return buf.getvalue()


def photo(size=(48, 64)) -> bytes:
    x, _ = learnable_arrays(1, size=16)
    return encode(np.asarray(Image.fromarray(x[0]).resize(size[::-1])), "JPEG", quality=90)


def huge_png_header(width: int = 50_000, height: int = 50_000) -> bytes:
    """A PNG that claims width x height pixels in a few hundred bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit gray
    idat = zlib.compress(b"\0" * 20_000, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def animated_gif() -> bytes:
    frames = [Image.fromarray(np.full((20, 20, 3), v, np.uint8)) for v in (30, 200, 90)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def cmyk_jpeg() -> bytes:
    x, _ = learnable_arrays(1)
    buf = io.BytesIO()
    Image.fromarray(x[0]).convert("CMYK").save(buf, "JPEG")
    return buf.getvalue()


def png16() -> bytes:
    a = (np.arange(24 * 24).reshape(24, 24) * 97 % 65536).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


CASES = {
    "good photo": (photo(), 200),
    "truncated JPEG": (photo()[:400], 400),
    "empty body": (b"", 400),
    "text as JPEG": (b"this is not an image, only text pretending to be one\n" * 20, 415),
    "50,000 x 50,000 PNG": (huge_png_header(), 413),
    "20 MB body": (b"\xff\xd8" + b"\0" * 20_000_000, 413),
    "TIFF": (encode(np.zeros((8, 8, 3), np.uint8), "TIFF"), 415),
    "animated GIF": (animated_gif(), 200),
    "1x1 PNG": (encode(np.full((1, 1, 3), 200, np.uint8), "PNG"), 200),
    "10,000 x 3 PNG": (encode(np.full((3, 10_000, 3), 90, np.uint8), "PNG"), 200),
    "CMYK JPEG": (cmyk_jpeg(), 200),
    "16-bit PNG": (png16(), 200),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_hostile_input_gets_its_status(server, case):
    body, status = CASES[case]
    r = httpx.post(
        f"{server}/predict", content=body, headers={"content-type": "image/jpeg"}, timeout=30
    )
    assert r.status_code == status, (case, r.text[:300])
    data = r.json()
    if status == 200:
        assert len(data["top"]) == 3 and abs(sum(t["probability"] for t in data["top"]) - 1) < 1e-4
    else:
        assert set(data) == {"error", "detail"} and data["error"] and data["detail"]
    assert httpx.get(f"{server}/health", timeout=10).json()["status"] == "ok"


def test_error_texts_say_what_was_wrong(server):
    def ask(body):
        return httpx.post(f"{server}/predict", content=body, timeout=30).json()

    assert ask(huge_png_header()) == {
        "error": "image too large",  # Pillow's bomb check fires first, at twice its own limit
        "detail": "Image size (2500000000 pixels) exceeds limit of 178956970 pixels, could be "
        "decompression bomb DOS attack. (the limit here is 40,000,000 pixels)",
    }
    assert ask(huge_png_header(9000, 9000)) == {
        "error": "image too large",
        "detail": "9000x9000 = 81,000,000 pixels; the limit is 40,000,000",
    }
    assert ask(b"GIF89a-but-not")["error"] == "unsupported image format"
    assert ask(photo()[:400]) == {
        "error": "corrupt image",
        "detail": "the image header cannot be read (OSError: Truncated File Read)",
    }
    whole = photo()
    assert ask(whole[: len(whole) * 2 // 3]) == {
        "error": "corrupt image",
        "detail": "JPEG data cannot be decoded (ValueError: Premature end of JPEG file)",
    }


def test_the_body_limit_counts_streamed_bytes_of_a_chunked_body(server):
    """No Content-Length (chunked): the limit still holds, counted as the bytes arrive."""

    def chunks():
        for _ in range(150):
            yield b"\0" * 100_000  # 15 MB in all

    r = httpx.post(f"{server}/predict", content=chunks(), timeout=60)
    assert r.status_code == 413 and "counted as it streamed in" in r.json()["detail"]
    small = photo()
    ok = httpx.post(f"{server}/predict", content=iter([small[:100], small[100:]]), timeout=30)
    assert ok.status_code == 200


def test_a_lying_content_length_is_not_trusted(server):
    """Content-Length says 100 bytes and 64 KB follow: the request is those 100 bytes
    (not an image: 415), the rest is not read into it, and the server goes on answering."""
    u = urlparse(server)
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
            + b"\0" * (100 + 65_536)
        )
        reply = ""
        while '"detail"' not in reply:  # headers and body may come in separate packets
            chunk = s.recv(4096).decode("latin-1")
            if not chunk:
                break
            reply += chunk
    assert reply.startswith("HTTP/1.1 415") and '"error":"unsupported image format"' in reply
    assert httpx.get(f"{server}/health", timeout=10).status_code == 200


def test_multipart_upload_and_routing_errors_are_json(server):
    good = photo()
    r = httpx.post(f"{server}/predict", files={"file": ("p.jpg", good, "image/jpeg")}, timeout=30)
    raw = httpx.post(f"{server}/predict", content=good, timeout=30)
    assert r.status_code == 200 and r.json()["top"] == raw.json()["top"]
    r = httpx.post(
        f"{server}/predict",
        data={"note": "no file"},
        files={},
        timeout=30,
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert r.status_code == 400 and set(r.json()) == {"error", "detail"}
    assert httpx.get(f"{server}/nowhere").json()["error"] == "not found"
    r = httpx.get(f"{server}/predict")
    assert r.status_code == 405 and set(r.json()) == {"error", "detail"}
    r = httpx.post(f"{server}/predict?top_k=many", content=good)
    assert r.status_code == 400 and r.json()["detail"] == "top_k must be an integer"


def test_animated_gif_is_its_first_frame(server):
    first = encode(np.full((20, 20, 3), 30, np.uint8), "PNG")
    a = httpx.post(f"{server}/predict?top_k=3", content=animated_gif()).json()["top"]
    b = httpx.post(f"{server}/predict?top_k=3", content=first).json()["top"]
    assert [t["label"] for t in a] == [t["label"] for t in b]
    np.testing.assert_allclose(
        [t["probability"] for t in a], [t["probability"] for t in b], atol=1e-6
    )
