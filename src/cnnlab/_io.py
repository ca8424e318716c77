"""Small file helpers shared by every room: atomic writes and the environment record."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], suffix: str = "") -> Path:
    """Call ``write(tmp_path)`` then move the result onto ``path`` in one step.

    A crash mid-write leaves the previous file (or nothing), never half a file.
    ``suffix`` keeps the file extension on the temporary name for writers that
    check it (Keras insists on ``.keras``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def unique_dir(base: str | os.PathLike) -> Path:
    """``base`` if free, else ``base-2``, ``base-3``...: earlier results are never overwritten."""
    base = Path(base)
    if not base.exists():
        return base
    i = 2
    while Path(f"{base}-{i}").exists():
        i += 1
    return Path(f"{base}-{i}")


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def write_json(path: str | os.PathLike, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def cpu_flags() -> list[str]:
    """The CPU's feature flags as Linux lists them (``avx512_bf16``, ``amx_bf16``, ...);
    empty where ``/proc/cpuinfo`` is absent (macOS, Windows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.split(":", 1)[1].split()
    except OSError:
        pass
    return []


def environment(seed: int | None = None) -> dict[str, Any]:
    """Versions, hardware and seed: what someone needs to reproduce a run."""
    import importlib.metadata as md

    import tensorflow as tf

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma", "avx512_vnni")
    return {
        "seed": seed,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": [f for f in cpu_flags() if f in wanted],
        "devices": [d.name for d in tf.config.list_logical_devices()],
        "versions": {
            p: version(p)
            for p in ("cnnlab", "tensorflow", "tensorflow-cpu", "keras", "numpy", "scikit-learn")
        },
    }
