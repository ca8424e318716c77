"""Start ``cnnlab serve`` as a real uvicorn process on 127.0.0.1 (an ephemeral port), in a
Python where importing TensorFlow or Keras fails: the server must not need them."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time

# Runs in the server process before the CLI: any import of tensorflow/keras raises.
BLOCK_TF = r"""
import sys
class _NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
            raise ImportError(f"the serving process imported {name}")
        return None
sys.meta_path.insert(0, _NoTensorFlow())
from cnnlab.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@contextlib.contextmanager
def running_server(model, *args: str, timeout: float = 60.0):
    """Yield the base URL of ``cnnlab serve MODEL --port 0 ARGS`` while it runs."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", BLOCK_TF, "serve", str(model), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines = []
    try:
        deadline = time.time() + timeout
        url = None
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"on (http://127\.0\.0\.1:\d+/)", line)
            if m:
                url = m.group(1)
                break
        if url is None:
            raise RuntimeError("the server did not start:\n" + "".join(lines) + proc.stdout.read())
        yield url.rstrip("/")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
