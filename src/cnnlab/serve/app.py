"""The HTTP service: FastAPI over an exported model (ONNX Runtime or LiteRT).

Endpoints: ``GET /`` (the page), ``POST /predict`` (multipart upload or a raw image
body → top-k JSON), ``GET /health``, ``GET /metadata``.

Hostile input is answered, never crashed on; every error is JSON
``{"error", "detail"}``:

* body limit counted on the streamed bytes (a chunked body has no length): 413;
* pixel limit read from the image header before any pixel is decoded: 413;
  Pillow's decompression-bomb warning is an error;
* format decided by decoding, from an allow-list (JPEG, PNG, WebP, BMP, GIF's
  first frame): else 415; empty, truncated or corrupt images: 400;
* at most ``queue_size`` requests wait for the model: more get 503 with
  ``Retry-After``; a request that takes longer than ``timeout_s``: 504.

The pixels the model gets are the training pipeline's (``cnnlab.runtime.images``).
"""

from __future__ import annotations

import asyncio
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from cnnlab.runtime.artifact import Artifact
from cnnlab.runtime.images import ImageRejected, decode_image, resize_image


@dataclass
class ServeOptions:
    """Limits and sizes of one server."""

    top_k: int = 5
    max_bytes: int = 10_000_000
    max_pixels: int = 40_000_000
    queue_size: int = 32
    timeout_s: float = 10.0
    threads: int = 2
    decode_workers: int = 2
    drain_factor: int = 4  # read (and drop) up to this x max_bytes of a refused body


class Refused(Exception):
    """An answer other than 200: status, error, detail, extra headers."""

    def __init__(self, status: int, error: str, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers or {}


def error_response(status: int, error: str, detail: str, headers: dict | None = None):
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


async def read_body(request, max_bytes: int, drain_factor: int) -> bytes:
    """The request body, counted as it streams in; 413 past ``max_bytes``.

    A refused body is still read (and dropped) up to ``drain_factor × max_bytes`` so
    the client, still sending, receives the 413 instead of a reset connection.
    """
    declared = request.headers.get("content-length")
    too_big = None
    if declared is not None:
        try:
            if int(declared) > max_bytes:
                too_big = f"Content-Length {int(declared):,} bytes; the limit is {max_bytes:,}"
        except ValueError:
            raise Refused(
                400, "bad request", f"Content-Length is not a number: {declared!r}"
            ) from None
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if too_big is None and total > max_bytes:
            too_big = f"the body passed {max_bytes:,} bytes (counted as it streamed in)"
        if too_big is None:
            chunks.append(chunk)
        elif total > drain_factor * max_bytes:
            break
    if too_big:
        raise Refused(413, "request too large", too_big, {"Connection": "close"})
    return b"".join(chunks)


async def image_bytes(request, opts: ServeOptions) -> bytes:
    """The image: the raw body, or the first file part of a multipart form."""
    body = await read_body(request, opts.max_bytes, opts.drain_factor)
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        return body
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=4, max_fields=16)
    except Exception as e:  # noqa: BLE001 - malformed multipart of any kind
        raise Refused(400, "bad multipart body", f"{type(e).__name__}: {e}") from None
    for value in form.values():
        if hasattr(value, "read"):
            data = await value.read()
            await form.close()
            return data
    await form.close()
    raise Refused(400, "no file", "the multipart form has no file part (send it as 'file')")


class Predictor:
    """Decodes in a thread pool, runs the model in one thread, bounds the queue."""

    def __init__(self, artifact: Artifact, opts: ServeOptions):
        self.artifact, self.opts = artifact, opts
        self.decode_pool = ThreadPoolExecutor(opts.decode_workers, thread_name_prefix="decode")
        self.model_pool = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.active = 0
        self.served = 0

    def _prepare(self, data: bytes) -> tuple[np.ndarray, tuple[int, int], float]:
        start = time.perf_counter()
        image = decode_image(data, self.artifact.channels, self.opts.max_pixels)
        size = image.shape[:2]
        x = resize_image(image, self.artifact.image_size, self.artifact.resize)
        return x, size, time.perf_counter() - start

    def _infer(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        probs = self.artifact.predict(x[None])[0]
        return probs, time.perf_counter() - start

    async def __call__(self, data: bytes, top_k: int) -> dict:
        if self.active >= self.opts.queue_size:
            raise Refused(
                503,
                "busy",
                f"{self.active} requests are already waiting; retry shortly",
                {"Retry-After": "1"},
            )
        self.active += 1
        start = time.perf_counter()
        try:
            return await asyncio.wait_for(self._run(data, top_k, start), self.opts.timeout_s)
        except asyncio.TimeoutError:
            raise Refused(
                504, "timeout", f"the request took more than {self.opts.timeout_s:g} s"
            ) from None
        finally:
            self.active -= 1

    async def _run(self, data: bytes, top_k: int, start: float) -> dict:
        loop = asyncio.get_running_loop()
        x, (h, w), decode_s = await loop.run_in_executor(self.decode_pool, self._prepare, data)
        probs, infer_s = await loop.run_in_executor(self.model_pool, self._infer, x)
        self.served += 1
        names = self.artifact.class_names
        k = max(1, min(top_k, len(names)))
        order = np.argsort(-probs, kind="stable")[:k]
        return {
            "top": [
                {"label": names[i], "index": int(i), "probability": float(probs[i])} for i in order
            ],
            "image": {"width": int(w), "height": int(h)},
            "latency_ms": {
                "decode": round(1000 * decode_s, 3),
                "inference": round(1000 * infer_s, 3),
                "total": round(1000 * (time.perf_counter() - start), 3),
            },
        }


def metadata(artifact: Artifact, opts: ServeOptions) -> dict[str, Any]:
    m = artifact.manifest
    return {
        "model": m.get("model") or artifact.path.stem,
        "format": artifact.format,
        "file": artifact.path.name,
        "class_names": artifact.class_names,
        "input": {
            "height": artifact.image_size[0],
            "width": artifact.image_size[1],
            "channels": artifact.channels,
            "resize": artifact.resize,
            "range": [0, 255],
        },
        "source_run": m.get("source_run"),
        "test_metrics": m.get("test_metrics", {}),
        "parity": artifact.entry.get("parity"),
        "limits": asdict(opts),
    }


def create_app(artifact: Artifact, opts: ServeOptions | None = None):
    """The FastAPI application serving ``artifact``."""
    from cnnlab.serve.page import render_page

    opts = opts or ServeOptions()
    predictor = Predictor(artifact, opts)
    app = FastAPI(
        title=f"cnnlab: {artifact.path.name}", docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.predictor = predictor
    page = render_page(metadata(artifact, opts))

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return error_response(
            exc.status_code,
            "not found" if exc.status_code == 404 else "http error",
            str(exc.detail),
            getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        return error_response(422, "bad request", str(exc.errors())[:500])

    @app.exception_handler(Exception)
    async def unexpected(request, exc):  # never a traceback to the client
        return error_response(500, "internal error", f"{type(exc).__name__}")

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page)

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "model": artifact.path.name,
            "format": artifact.format,
            "served": predictor.served,
            "waiting": predictor.active,
            "tensorflow_loaded": "tensorflow" in sys.modules,
        }

    @app.get("/metadata")
    async def get_metadata():
        return metadata(artifact, opts)

    @app.post("/predict")
    async def predict(request: Request):
        try:
            top_k = int(request.query_params.get("top_k", opts.top_k))
        except ValueError:
            return error_response(400, "bad request", "top_k must be an integer")
        try:
            data = await image_bytes(request, opts)
            return JSONResponse(await predictor(data, top_k))
        except Refused as e:
            return error_response(e.status, e.error, e.detail, e.headers)
        except ImageRejected as e:
            return error_response(e.status, e.error, e.detail)

    return app
