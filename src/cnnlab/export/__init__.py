"""Export: a trained model to deployment formats (SavedModel, TFLite fp32/fp16/int8, ONNX),
each checked against the Keras model in its own runtime, with ``export.json``.

The ``.keras`` saving names are re-exported here for older imports.
"""

from cnnlab.export.exporter import ExportResult, export_keras, export_model, parse_formats
from cnnlab.export.formats import FILES, FORMATS
from cnnlab.export.parity import THRESHOLDS
from cnnlab.models.saving import LoadedModel, load_for_inference, load_model, save_model

__all__ = [
    "FILES",
    "FORMATS",
    "THRESHOLDS",
    "ExportResult",
    "LoadedModel",
    "export_keras",
    "export_model",
    "load_for_inference",
    "load_model",
    "parse_formats",
    "save_model",
]
