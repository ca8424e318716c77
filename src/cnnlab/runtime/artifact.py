"""Running an exported artifact: ``.onnx`` (ONNX Runtime), ``.tflite`` (LiteRT) or a
SavedModel folder (TensorFlow), with the class names and input geometry its
``export.json`` records.

An :class:`Artifact` answers like a loaded cnnlab model: ``class_names``,
``image_size``, ``channels``, ``resize``, ``predict(uint8 images) -> probabilities``;
it is also callable as ``artifact(x, training=False)`` so code written for a Keras
model can score it. ONNX and LiteRT never import TensorFlow.

Example:
    >>> art = load_artifact("runs/my-run/export/model_int8.tflite")
    >>> probs = art.predict(images)   # uint8 (N, H, W, C), 0-255
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.errors import ModelError

MANIFEST = "export.json"
LABELS = "labels.txt"
# The formats a server prefers when given an export folder: fastest exact one first.
SERVE_PREFERENCE = ("onnx", "tflite", "tflite-fp16", "tflite-int8", "savedmodel")
MAX_BATCH = 64


def is_artifact(path: str | os.PathLike) -> bool:
    """True for an ``.onnx``/``.tflite`` file, a SavedModel folder or an export folder."""
    p = Path(path)
    if p.is_file():
        return p.suffix in (".onnx", ".tflite")
    return p.is_dir() and ((p / "saved_model.pb").is_file() or (p / MANIFEST).is_file())


def read_manifest(folder: str | os.PathLike) -> dict:
    """``export.json`` of an export folder, or ``{}`` when there is none."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(
            f"{path} cannot be read as JSON ({e})", fix="Export again with `cnnlab export RUN`"
        ) from None


def _format_of(path: Path) -> str:
    if path.is_dir():
        return "savedmodel"
    return {".onnx": "onnx", ".tflite": "tflite"}.get(path.suffix, "")


def find_artifact(folder: str | os.PathLike, prefer=SERVE_PREFERENCE) -> Path:
    """The artifact an export folder holds, by ``prefer`` order of format."""
    folder = Path(folder)
    entries = read_manifest(folder).get("artifacts", {})
    for fmt in prefer:
        entry = entries.get(fmt)
        if entry and (folder / entry["file"]).exists():
            return folder / entry["file"]
    raise ModelError(
        f"{folder} holds no exported model ({', '.join(prefer)})",
        fix=f"Run `cnnlab export RUN --format onnx --output {folder}`",
    )


@dataclass
class Artifact:
    """An exported model with what is needed to feed it and read its output."""

    path: Path
    format: str
    class_names: list[str]
    image_size: tuple[int, int]
    channels: int
    resize: str
    manifest: dict = field(default_factory=dict)
    entry: dict = field(default_factory=dict)
    run_dir: Path | None = None
    config: dict = field(default_factory=dict)
    runner: Any = None

    # What evaluation expects of a loaded model.
    model_path = property(lambda self: self.path)
    model = property(lambda self: self)
    input_shape = property(lambda self: (None, *self.image_size, self.channels))
    output_shape = property(lambda self: (None, len(self.class_names)))

    def predict(self, images) -> np.ndarray:
        """Probabilities (N, classes) as float32 for images (N, H, W, C) in 0-255."""
        x = np.asarray(images)
        if x.ndim != 4 or tuple(x.shape[1:]) != (*self.image_size, self.channels):
            raise ModelError(
                f"{self.path.name} takes images shaped (N, {self.image_size[0]}, "
                f"{self.image_size[1]}, {self.channels}); received {x.shape}"
            )
        if len(x) == 0:
            return np.zeros((0, len(self.class_names)), np.float32)
        parts = [self.runner.run(x[i : i + MAX_BATCH]) for i in range(0, len(x), MAX_BATCH)]
        return np.concatenate(parts).astype(np.float32)

    def __call__(self, x, training: bool = False) -> np.ndarray:
        return self.predict(np.asarray(x))

    def footprint(self) -> tuple[float, float | None]:
        """(bytes of weights, inference bytes per image) for memory estimates: from the
        source model's numbers ``cnnlab export`` recorded in ``export.json``, else the
        file's size and None (unknown)."""
        record = self.manifest.get("memory") or {}
        if record:
            return 4.0 * record["parameters"], float(record["inference_bytes_per_image"])
        files = [self.path] if self.path.is_file() else self.path.rglob("*")
        return float(sum(p.stat().st_size for p in files if p.is_file())), None


class OnnxRunner:
    """ONNX Runtime on the CPU; the batch dimension is dynamic."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        # Idle pool threads sleep instead of spinning: on a small shared host, spinning
        # threads took the cores the work needed (airbench batch 1: 44 ms with 2
        # spinning threads against 26 ms with one, on a loaded 2-core machine).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.name, self.shape = inp.name, inp.shape
        self.dtype = np.uint8 if "uint8" in inp.type else np.float32

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.name: x.astype(self.dtype, copy=False)})[0]


class TFLiteRunner:
    """The LiteRT interpreter (``ai-edge-litert``): input quantised with the file's own
    scale and zero point, output dequantised; one call at a time (the interpreter is
    not thread-safe)."""

    def __init__(self, path: Path, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads or None)
        self.lock = threading.Lock()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.shape = [int(v) for v in self.input["shape_signature"]]
        self.batch = None

    def _set_batch(self, n: int) -> None:
        if self.batch != n:
            self.interpreter.resize_tensor_input(self.input["index"], [n, *self.shape[1:]])
            self.interpreter.allocate_tensors()
            self.output = self.interpreter.get_output_details()[0]
            self.batch = n

    def run(self, x: np.ndarray) -> np.ndarray:
        if self.shape[0] != -1 and len(x) != self.shape[0]:
            return np.concatenate([self.run(x[i : i + 1]) for i in range(len(x))])
        dtype = self.input["dtype"]
        if np.issubdtype(dtype, np.integer):
            scale, zero = self.input["quantization"]
            info = np.iinfo(dtype)
            q = np.round(x.astype(np.float32) / (scale or 1.0) + zero)
            x = np.clip(q, info.min, info.max).astype(dtype)
        else:
            x = x.astype(dtype, copy=False)
        with self.lock:
            self._set_batch(len(x))
            self.interpreter.set_tensor(self.input["index"], x)
            self.interpreter.invoke()
            out = self.interpreter.get_tensor(self.output["index"]).copy()
        if np.issubdtype(out.dtype, np.integer):
            scale, zero = self.output["quantization"]
            out = (out.astype(np.float32) - zero) * scale
        return out


class SavedModelRunner:
    """``tf.saved_model.load`` (imports TensorFlow): the ``serve`` endpoint."""

    def __init__(self, path: Path, threads: int | None = None):
        import tensorflow as tf

        self.tf = tf
        self.loaded = tf.saved_model.load(str(path))
        self.fn = getattr(self.loaded, "serve", None) or self.loaded.signatures["serving_default"]

    def run(self, x: np.ndarray) -> np.ndarray:
        out = self.fn(self.tf.constant(x.astype(np.float32)))
        if isinstance(out, dict):
            out = next(iter(out.values()))
        return out.numpy()


RUNNERS = {"onnx": OnnxRunner, "tflite": TFLiteRunner, "savedmodel": SavedModelRunner}


def _entry_for(manifest: dict, path: Path) -> dict:
    for entry in manifest.get("artifacts", {}).values():
        if entry.get("file") == path.name:
            return entry
    return {}


def _source_run(manifest: dict) -> tuple[Path | None, dict]:
    run = manifest.get("source_run")
    if not run or not (Path(run) / "config.yaml").is_file():
        return None, {}
    import yaml

    return Path(run), yaml.safe_load((Path(run) / "config.yaml").read_text()) or {}


def load_artifact(path: str | os.PathLike, threads: int | None = None) -> Artifact:
    """Open an exported model for inference (the artifact an export folder prefers, when
    given the folder)."""
    path = Path(path)
    if not path.exists():
        raise ModelError(
            f"{path} does not exist",
            expected="a .onnx or .tflite file, a SavedModel folder or an export folder",
        )
    if path.is_dir() and not (path / "saved_model.pb").is_file():
        path = find_artifact(path)
    fmt = _format_of(path)
    if not fmt:
        raise ModelError(
            f"{path} is not an exported model",
            expected="a .onnx or .tflite file, or a SavedModel folder",
        )
    folder = path.parent
    manifest = read_manifest(folder)
    try:
        runner = RUNNERS[fmt](path, threads)
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - any reason the runtime refuses the file
        raise ModelError(
            f"{path} cannot be loaded by its runtime ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''})",
            fix="Check the file is complete; export it again with `cnnlab export`",
        ) from None
    entry = _entry_for(manifest, path)
    shape = manifest.get("input_shape") or _input_shape(runner)
    h, w, c = (int(v) for v in shape[-3:])
    names = manifest.get("class_names")
    if not names and (folder / LABELS).is_file():
        names = (folder / LABELS).read_text().splitlines()
    run_dir, config = _source_run(manifest)
    n_out = _output_size(runner) or len(names or [])
    if not names or (n_out and len(names) != n_out):
        names = [str(i) for i in range(n_out)]
    config = {**config, "resize": manifest.get("resize", config.get("resize", "stretch"))}
    return Artifact(
        path,
        entry.get("format", fmt),
        list(names),
        (h, w),
        c,
        config["resize"],
        manifest,
        entry,
        run_dir,
        config,
        runner,
    )


def _input_shape(runner) -> list:
    if isinstance(runner, OnnxRunner):
        return runner.shape
    if isinstance(runner, TFLiteRunner):
        return runner.shape
    spec = runner.loaded.signatures["serving_default"].structured_input_signature
    tensor = spec[0][0] if spec[0] else next(iter(spec[1].values()))
    return list(tensor.shape)


def _output_size(runner) -> int | None:
    if isinstance(runner, OnnxRunner):
        dim = runner.session.get_outputs()[0].shape[-1]
        return dim if isinstance(dim, int) else None
    if isinstance(runner, TFLiteRunner):
        return int(runner.output["shape_signature"][-1])
    return None
