"""Served requests per second and latency with 1 and 8 clients, and the serving process'
start time and memory against a TensorFlow-backed one.

For each model (MobileNetV2-224 and the CIFAR-10 fast-recipe airbench, exported by
``bench/inference.py --keep DIR``, or exported here to ONNX), ``cnnlab serve`` runs as
its own process on 127.0.0.1 over the ONNX file (2 runtime threads); clients on the
same machine POST a photo (MobileNetV2: ``owl.jpg``, 512x384 JPEG; airbench: a
32x32 CIFAR-10 JPEG) over keep-alive connections. Clients and server share the 2
cores, as they would on a small host. Start time: process start until ``/health``
answers; memory: the server's resident set after the load (VmHWM: peak). The
TensorFlow-backed reference is a process that imports TensorFlow, loads the same
model from ``.keras`` and answers one prediction.

    python bench/inference.py --keep /tmp/bench-export && python bench/serve.py --export /tmp/bench-export
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CIFAR_ZIP, SHARED, append_result, table  # noqa: E402

TF_REFERENCE = r"""
import os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
from cnnlab.models.saving import load_model
model = load_model(sys.argv[1])
model.predict(np.zeros((1, *model.input_shape[1:]), np.float32), verbose=0)
status = open("/proc/self/status").read().splitlines()
print("hwm_kb", [line.split()[1] for line in status if line.startswith("VmHWM")][0])
"""


def proc_memory(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    get = lambda key: int(re.search(rf"{key}:\s+(\d+)", status).group(1)) / 1024  # noqa: E731
    return {"rss_mb": get("VmRSS"), "peak_mb": get("VmHWM")}


def start_server(model: Path, threads: int):
    import httpx

    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cnnlab.cli.main",
            "serve",
            str(model),
            "--port",
            "0",
            "--threads",
            str(threads),
            "--queue",
            "64",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = None
    while url is None:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("server did not start")
        m = re.search(r"on (http://\S+)/", line)
        url = m.group(1) if m else None
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.01)
    return proc, url, time.perf_counter() - t0


def load(url: str, body: bytes, clients: int, requests_each: int) -> dict:
    import httpx

    latencies: list[float] = []
    errors: list[int] = []
    lock = threading.Lock()

    def client():
        with httpx.Client(base_url=url, timeout=30) as c:
            for _ in range(3):
                c.post("/predict", content=body)  # warm the connection
            mine = []
            for _ in range(requests_each):
                t = time.perf_counter()
                r = c.post("/predict", content=body)
                mine.append(time.perf_counter() - t)
                if r.status_code != 200:
                    errors.append(r.status_code)
            with lock:
                latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "requests": len(ms),
        "errors": len(errors),
        "requests_per_s": len(ms) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def tf_reference(keras_file: Path) -> dict:
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", TF_REFERENCE, str(keras_file)],
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - t0
    hwm = int(re.search(r"hwm_kb (\d+)", done.stdout).group(1)) / 1024
    return {"start_s": wall, "peak_mb": hwm}


def bodies() -> dict[str, bytes]:
    with zipfile.ZipFile(CIFAR_ZIP) as z:
        name = sorted(f for f in z.namelist() if f.startswith("test/") and f.endswith(".jpg"))[0]
        cifar = z.read(name)
    return {"mobilenet_v2": (SHARED / "images" / "owl.jpg").read_bytes(), "airbench": cifar}


def ensure_export(name: str, export: Path) -> Path:
    folder = export / name
    if not (folder / "model.onnx").is_file():
        subprocess.run(
            [
                sys.executable,
                str(Path(__file__).parent / "inference.py"),
                "--models",
                name,
                "--seconds",
                "0.2",
                "--keep",
                str(export),
            ],
            check=True,
        )
    if not (folder / "model.keras").is_file():
        # the TensorFlow reference loads the same model from .keras
        code = (
            "import sys, os; os.environ['TF_CPP_MIN_LOG_LEVEL']='2'; "
            "sys.path.insert(0, sys.argv[3]); import inference; "
            "from cnnlab.models.saving import save_model; "
            "m, _ = inference.build(sys.argv[1]); save_model(m, sys.argv[2])"
        )
        env = {**os.environ, "KERAS_HOME": os.environ.get("KERAS_HOME", str(SHARED / "keras"))}
        subprocess.run(
            [
                sys.executable,
                "-c",
                code,
                name,
                str(folder / "model.keras"),
                str(Path(__file__).parent),
            ],
            check=True,
            env=env,
        )
    return folder


def serve_and_load(model: Path, name: str, body: bytes, args, rows: list) -> tuple:
    """Serve ``model``, load it with 1 then 8 clients (rows appended); its memory, start time."""
    proc, url, start_s = start_server(model, args.threads)
    try:
        for clients in (1, 8):
            each = args.requests if clients == 1 else max(25, args.requests // 4)
            r = {"model": name, "file": model.name, **load(url, body, clients, each)}
            rows.append(r)
            print(
                f"  {name:<13} {model.name:<18} {clients} client(s): "
                f"{r['requests_per_s']:7.1f} req/s, p50 {r['p50_ms']:6.1f} ms, "
                f"p99 {r['p99_ms']:6.1f} ms",
                flush=True,
            )
        return proc_memory(proc.pid), start_s
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mobilenet_v2,airbench")
    parser.add_argument("--export", default="/tmp/cnnlab-bench-export")
    parser.add_argument("--requests", type=int, default=200, help="per client at 1 client")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--files",
        default="model.onnx",
        help="comma list of export files to serve, each in turn [model.onnx]; e.g. "
        "model.onnx,model_int8.tflite",
    )
    args = parser.parse_args()
    rows, records = [], []
    body = bodies()
    for name in args.models.split(","):
        folder = ensure_export(name, Path(args.export))
        ref = tf_reference(folder / "model.keras")
        for file in args.files.split(","):
            if not (folder / file).is_file():
                print(f"  {name}: no {file} in {folder}; skipped")
                continue
            memory, start_s = serve_and_load(folder / file, name, body[name], args, rows)
            records.append(
                {
                    "model": name,
                    "file": file,
                    "serve_start_s": start_s,
                    "serve_memory_mb": memory,
                    "tensorflow_reference": ref,
                }
            )
            print(
                f"  {name} {file}: cnnlab serve ready in {start_s:.2f} s, "
                f"{memory['rss_mb']:.0f} MB resident ({memory['peak_mb']:.0f} MB peak); "
                f"TensorFlow process {ref['start_s']:.2f} s, {ref['peak_mb']:.0f} MB peak",
                flush=True,
            )
    print(
        table(
            rows,
            [
                "model",
                "file",
                "clients",
                "requests",
                "errors",
                "requests_per_s",
                "p50_ms",
                "p99_ms",
            ],
        )
    )
    path = append_result("serve", {"args": vars(args), "load": rows, "processes": records})
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
