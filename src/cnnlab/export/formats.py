"""Writers for each deployment format. Each takes the Keras model (raw 0-255 input, its
preprocessing inside) and writes one artifact atomically: into a temporary name
next to the target, moved into place only when complete.

* ``keras``: the ``.keras`` file as cnnlab saves it.
* ``savedmodel``: ``model.export(format="tf_saved_model")`` (signatures ``serve`` and
  ``serving_default``), batch dimension dynamic.
* ``tflite``, ``tflite-fp16``: ``TFLiteConverter.from_keras_model``; fp16 stores the
  weights as float16 and computes in float32.
* ``tflite-int8``: full-integer quantisation from representative images; uint8
  input (scale 1, zero point 0: the file takes raw pixels), float32 output
  probabilities (dequantised by the file's last op).
* ``onnx``: ``tf2onnx.convert.from_keras`` at opset 17 (Keras' own ONNX export, and
  tf2onnx's ``from_function``, turn fixed ``Normalization`` statistics into extra
  required inputs). ``Erfc`` (from exact GELU, used by airbench) has no
  ONNX op, so it is written as ``1 - Erf``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cnnlab._io import atomic_write

FORMATS = ("keras", "savedmodel", "tflite", "tflite-fp16", "tflite-int8", "onnx")
FILES = {
    "keras": "model.keras",
    "savedmodel": "saved_model",
    "tflite": "model.tflite",
    "tflite-fp16": "model_fp16.tflite",
    "tflite-int8": "model_int8.tflite",
    "onnx": "model.onnx",
}
ONNX_OPSET = 17


def write_keras(model, path: Path, **_) -> dict:
    from cnnlab.models.saving import save_model

    save_model(model, path)
    path.chmod(0o644)
    return {}


def write_savedmodel(model, path: Path, **_) -> dict:
    """Write the SavedModel into a temporary folder, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        target = tmp / "saved_model"
        model.export(str(target), format="tf_saved_model", verbose=False)
        if path.exists():
            shutil.rmtree(path)
        target.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {}


def _tflite_bytes(model, mode: str, representative: np.ndarray | None = None) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "int8":
        # The input's quantisation comes from the calibration range: pinning it to 0-255
        # (one pixel black, one white) makes it scale 1, zero point 0, so the file takes
        # raw pixels. Without this, images whose brightest pixel is 230 gave scale 0.90.
        images = np.array(representative, np.float32)
        images[0, 0, 0, :] = 0.0
        images[0, -1, -1, :] = 255.0

        def samples():
            for i in range(len(images)):
                yield [images[i : i + 1]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = samples
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32
    return converter.convert()


def write_bytes(path: Path, data: bytes) -> None:
    def write(tmp: Path) -> None:
        tmp.write_bytes(data)
        tmp.chmod(0o644)  # deployment files are read by other users (a server's)

    atomic_write(path, write)


def write_tflite(model, path: Path, **_) -> dict:
    write_bytes(path, _tflite_bytes(model, "fp32"))
    return {"quantization": "none"}


def write_tflite_fp16(model, path: Path, **_) -> dict:
    write_bytes(path, _tflite_bytes(model, "fp16"))
    return {"quantization": "float16 weights, float32 compute"}


def write_tflite_int8(model, path: Path, representative=None, **_) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    data = _tflite_bytes(model, "int8", representative)
    scale, zero = Interpreter(model_content=data).get_input_details()[0]["quantization"]
    write_bytes(path, data)
    return {
        "quantization": "full integer (int8 weights and activations), uint8 input",
        "input_quantization": {"scale": float(scale), "zero_point": int(zero)},
        "representative_images": int(len(representative)),
    }


_ERFC_REGISTERED = False


def _register_erfc() -> None:
    """Teach tf2onnx ``Erfc`` (exact GELU's op), which ONNX lacks, as ``1 - Erf``."""
    global _ERFC_REGISTERED
    if _ERFC_REGISTERED:
        return
    from tf2onnx import utils
    from tf2onnx.handler import tf_op

    @tf_op("Erfc")
    class _Erfc:
        @classmethod
        def version_9(cls, ctx, node, **kwargs):
            node.type = "Erf"
            dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
            one = ctx.make_const(utils.make_name("erfc_one"), np.array(1, dtype))
            ctx.insert_new_node_on_output(
                "Sub", node.output[0], inputs=[one.output[0], node.output[0]]
            )

    _ERFC_REGISTERED = True


def write_onnx(model, path: Path, metadata: dict | None = None, **_) -> dict:
    import logging

    import tf2onnx

    _register_erfc()
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    import tensorflow as tf

    spec = [tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name="image")]
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=ONNX_OPSET)
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    write_bytes(path, proto.SerializeToString())
    return {"opset": ONNX_OPSET}


@contextlib.contextmanager
def quiet():
    """Silence converters' prints and C++ logs (file descriptors 1 and 2), unless
    CNNLAB_DEBUG is set: they list every captured tensor and warn about harmless things."""
    if os.environ.get("CNNLAB_DEBUG", "") not in ("", "0", "false"):
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


WRITERS: dict[str, Callable[..., dict]] = {
    "keras": write_keras,
    "savedmodel": write_savedmodel,
    "tflite": write_tflite,
    "tflite-fp16": write_tflite_fp16,
    "tflite-int8": write_tflite_int8,
    "onnx": write_onnx,
}
