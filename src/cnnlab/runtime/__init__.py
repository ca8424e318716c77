"""Runtime: exported models (``.onnx``, ``.tflite``, SavedModel) run for inference, and
images decoded and resized as the training pipeline does, without TensorFlow
(a SavedModel alone needs it)."""

from cnnlab.runtime.artifact import (
    LABELS,
    MANIFEST,
    Artifact,
    find_artifact,
    is_artifact,
    load_artifact,
    read_manifest,
)
from cnnlab.runtime.images import ImageRejected, decode_image, load_image, resize_image

__all__ = [
    "LABELS",
    "MANIFEST",
    "Artifact",
    "ImageRejected",
    "decode_image",
    "find_artifact",
    "is_artifact",
    "load_artifact",
    "load_image",
    "read_manifest",
    "resize_image",
]
