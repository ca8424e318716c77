"""Starting the server: find the artifact, open it, run uvicorn (one process, one event loop).

A run folder is served through its ONNX export (``<run>/export/model.onnx``); when
there is none, ``cnnlab export RUN --format onnx`` runs first in a child process, so
this process never imports TensorFlow.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from cnnlab.errors import ConfigError, ModelError, RunError
from cnnlab.memory import INFERENCE_FACTOR, Estimate, resolve_budget
from cnnlab.run_folder import RunFolder
from cnnlab.runtime.artifact import find_artifact, is_artifact, load_artifact
from cnnlab.serve.app import ServeOptions, create_app

# Python, onnxruntime or the TFLite interpreter, FastAPI and uvicorn loaded, no TensorFlow
# (measured: see cnnlab.memory).
SERVE_OVERHEAD_BYTES = 0.25e9


def resolve_model(model: str | os.PathLike) -> Path:
    """The artifact to serve for ``model``: itself, or a run folder's ONNX export."""
    path = Path(model)
    if is_artifact(path):
        return path
    if path.is_dir() and (path / "config.yaml").is_file():
        run = RunFolder.open(path)
        export = run.path / "export"
        try:
            return find_artifact(export, prefer=("onnx",))
        except ModelError:
            pass
        print(
            f"cnnlab: {path} has no ONNX export yet; running `cnnlab export {path} --format onnx`",
            file=sys.stderr,
        )
        done = subprocess.run(
            [sys.executable, "-m", "cnnlab.cli.main", "export", str(path), "--format", "onnx"],
            stdout=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            raise RunError(
                f"Exporting {path} to ONNX failed (exit status {done.returncode})",
                fix=f"Run `cnnlab export {path} --format onnx` to see why",
            )
        return find_artifact(export, prefer=("onnx",))
    raise ModelError(
        f"{path} is neither an exported model nor a run folder",
        expected="a .onnx or .tflite file, an export folder or a run folder",
        fix="Export a run with `cnnlab export RUN`",
    )


def plan_serving(artifact, opts: ServeOptions) -> Estimate:
    """The server's estimated peak at its limits, refused when over the memory budget:
    the runtime and the model, every queued request's body at ``max_bytes``, each decode
    worker's image at ``max_pixels`` before resizing, each thread's inference."""
    budget, source = resolve_budget()
    weights, per_image = artifact.footprint()
    pixels = artifact.image_size[0] * artifact.image_size[1] * artifact.channels
    inference = INFERENCE_FACTOR * (per_image or 8.0 * pixels) + 4.0 * pixels
    parts = {
        "overhead": SERVE_OVERHEAD_BYTES,
        "weights": 2.0 * weights,  # the file read, the runtime's own copy
        "requests": float(opts.queue_size * opts.max_bytes),
        "decoding": float(opts.decode_workers * opts.max_pixels * artifact.channels),
        "activations": opts.threads * inference,
    }
    est = Estimate("serving", 1, parts, budget, source)
    if not est.fits:
        raise est.refusal("Pass a smaller --queue, --max-bytes or --max-pixels")
    return est


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's TCP socket, bound and listening, Nagle's algorithm off."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # No Nagle: uvicorn writes a response's headers and body separately, and with Nagle
    # the body waited for the client's delayed ACK of the headers: 40 ms on every
    # keep-alive request (GET /health took 44-48 ms, its headers 0.8 ms). Accepted
    # connections inherit the option from the listening socket on Linux.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        raise RunError(
            f"Cannot listen on {host}:{port} ({e.strerror})",
            fix="Pick another --port (0 picks a free one)",
        ) from None
    sock.listen(2048)
    return sock


def run_server(
    model, *, host: str = "127.0.0.1", port: int = 8000, threads: int = 2, **options
) -> None:
    """Serve ``model`` until interrupted; prints the URL once the socket listens."""
    import uvicorn

    flags = {"queue_size": "queue", "timeout_s": "timeout"}
    for key, value in {"threads": threads, **options}.items():
        if isinstance(value, (int, float)) and value <= 0:
            flag = flags.get(key, key.replace("_", "-"))
            raise ConfigError(
                f"--{flag} must be positive; received {value}",
                fix="Pass a positive number (see `cnnlab serve --help`)",
            )
    artifact = load_artifact(resolve_model(model), threads=threads)
    if artifact.format == "savedmodel":
        raise ModelError(
            f"{artifact.path} is a SavedModel, which needs TensorFlow to run",
            fix="Serve the .onnx or .tflite export of the same run",
        )
    opts = ServeOptions(threads=threads, **options)
    print(f"cnnlab: {plan_serving(artifact, opts).line()}", file=sys.stderr, flush=True)
    app = create_app(artifact, opts)
    sock = listening_socket(host, port)
    bound = sock.getsockname()[1]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{bound}/"
    print(
        f"cnnlab: serving {artifact.path} ({artifact.format}, {len(artifact.class_names)} "
        f"classes) on {url}",
        flush=True,
    )
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=5,
        limit_concurrency=4 * options.get("queue_size", 32) + 16,
    )
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
