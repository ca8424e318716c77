"""Shared helpers for the benchmarks: the machine's description, result files, tables.

Every benchmark prints a table and appends one JSON line to
``bench/results/<name>.jsonl`` holding its arguments, its numbers and the
machine (cores, CPU model and flags, load, library versions, git commit), so
numbers from different machines or days are never compared blind.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
SHARED = ROOT.parent / "shared"
CIFAR_ZIP = SHARED / "data" / "cifar10-jpg.zip"
# CPU features that decide how fast dense maths runs (oneDNN picks kernels by them).
INTERESTING_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ start-up chatter (set before importing it)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def cpu_info() -> dict[str, Any]:
    """CPU model, logical cores and the SIMD/matrix flags that matter, from /proc/cpuinfo."""
    model, flags = platform.processor() or "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "model": model,
        "logical_cores": os.cpu_count(),
        "usable_cores": affinity,
        "flags": [f for f in INTERESTING_FLAGS if f in flags],
    }


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("tensorflow", "keras", "numpy", "tf_keras", "torch", "torchvision", "PIL"):
        if mod in sys.modules:
            out[mod] = getattr(sys.modules[mod], "__version__", "?")
    try:
        out["cnnlab_commit"] = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
        out["cnnlab_dirty"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def machine() -> dict[str, Any]:
    """Everything needed to judge a number: CPU, memory, load, versions, time."""
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {
        "cpu": cpu_info(),
        "memory_gib": mem,
        "load_average": list(os.getloadavg()),
        "platform": platform.platform(),
        "versions": versions(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def epoch_timer(budget_s: float = float("inf")):
    """A Keras callback class that sums the seconds spent inside epochs.

    ``train_seconds`` leaves out whatever runs between epochs (test scoring,
    checkpoints); ``after_epoch(epoch, logs)`` is the hook for that work, and
    training stops at the end of the epoch that takes the sum to ``budget_s``.
    """
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.train_seconds = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.train_seconds += time.perf_counter() - self._t0
            self.after_epoch(epoch, logs)
            if self.train_seconds >= budget_s:
                self.model.stop_training = True

        def after_epoch(self, epoch, logs):
            pass

    return EpochTimer


def append_result(name: str, record: dict[str, Any]) -> Path:
    """Append one JSON line (record + machine) to ``bench/results/<name>.jsonl``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.jsonl"
    line = json.dumps({"benchmark": name, **record, "machine": machine()}, default=str)
    with open(path, "a") as f:
        f.write(line + "\n")
    return path


def table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A GitHub-markdown table of ``rows`` (floats shown with 4 significant digits)."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "—" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def cifar10_folder(path: str | None = None, cache: str | None = None) -> Path:
    """The unpacked CIFAR-10 JPEG folder (with ``train/`` and ``test/``).

    ``path`` may be an unpacked folder or the zip; by default the zip in
    ``../shared/data`` is unpacked once into ``cache`` (default
    ``~/.cache/cnnlab/cifar10-jpg``) and reused.
    """
    src = Path(path) if path else CIFAR_ZIP
    if src.is_dir():
        root = src
    else:
        if not src.is_file():
            raise SystemExit(
                f"CIFAR-10 not found at {src}: pass --data with the unpacked folder "
                "or the cifar10-jpg.zip path"
            )
        root = Path(cache or Path.home() / ".cache" / "cnnlab" / "cifar10-jpg")
        done = root / ".unpacked"
        if not done.is_file():
            print(f"unpacking {src} into {root} (once)...", flush=True)
            root.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(src) as z:
                z.extractall(root)
            done.write_text(str(src))
    for cand in (root, *sorted(p for p in root.iterdir() if p.is_dir())):
        if (cand / "train").is_dir() and (cand / "test").is_dir():
            return cand
    raise SystemExit(f"{root} has no train/ and test/ folders")


def peak_matmul_flops(dtype: str = "float32", n: int = 2048, seconds: float = 3.0) -> float:
    """Measured peak FLOP/s of large square matmuls in TensorFlow (``dtype``: float32 or bfloat16)."""
    import tensorflow as tf

    a = tf.random.normal([n, n], dtype=tf.float32)
    b = tf.random.normal([n, n], dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(b, dtype)
    f = tf.function(lambda x, y: tf.matmul(x, y))
    f(a, b).numpy()
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        f(a, b).numpy()
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best
