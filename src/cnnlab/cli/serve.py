"""``cnnlab serve``: an HTTP API and a browser page over an exported model (no TensorFlow)."""

from __future__ import annotations

import click


@click.command(
    epilog="""\b
Examples:
  cnnlab serve runs/<run>                          # exports to ONNX first if needed
  cnnlab serve runs/<run>/export/model_int8.tflite --port 8080
  curl -F file=@photo.jpg http://127.0.0.1:8000/predict
  curl --data-binary @photo.jpg http://127.0.0.1:8000/predict
"""
)
@click.argument("model", type=click.Path(exists=True))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=int,
    help="0 picks a free port (printed on start).",
)
@click.option(
    "--threads", default=2, show_default=True, type=int, help="Inference threads of the runtime."
)
@click.option("--top-k", default=5, show_default=True, type=int)
@click.option(
    "--max-bytes",
    default=10_000_000,
    show_default=True,
    type=int,
    help="Largest request body (413 above).",
)
@click.option(
    "--max-pixels",
    default=40_000_000,
    show_default=True,
    type=int,
    help="Largest image, width x height, read from its header (413 above).",
)
@click.option(
    "--queue",
    "queue_size",
    default=32,
    show_default=True,
    type=int,
    help="Requests that may wait; more get 503 with Retry-After.",
)
@click.option(
    "--timeout",
    "timeout_s",
    default=10.0,
    show_default=True,
    type=float,
    help="Seconds one request may take (504 above).",
)
def serve(model, host, port, **options) -> None:
    """Serve an export (.onnx, .tflite, export folder) or a run folder over HTTP."""
    from cnnlab.serve import run_server

    run_server(model, host=host, port=port, **options)
