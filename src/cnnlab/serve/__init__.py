"""Serve: an HTTP API and page over an exported model (FastAPI on uvicorn, ONNX Runtime or
LiteRT; no TensorFlow in the process)."""

from cnnlab.serve.app import ServeOptions, create_app
from cnnlab.serve.server import resolve_model, run_server

__all__ = ["ServeOptions", "create_app", "resolve_model", "run_server"]
