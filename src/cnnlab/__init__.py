"""cnnlab: from labelled images to a trained, evaluated CNN image classifier.

    import cnnlab
    data = cnnlab.load_data("folder:flowers", image_size=128)
    model = cnnlab.create_model("resnet20", data.num_classes, data.image_size)
    result = cnnlab.train(data="builtin:digits", epochs=10)
    cnnlab.evaluate(result.run_dir)
    cnnlab.predict(result.run_dir, ["some/images/"])

Heavy modules (TensorFlow) load on first use, so ``import cnnlab`` is instant.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "load_data": "cnnlab.data",
    "create_model": "cnnlab.models",
    "list_models": "cnnlab.models",
    "register_model": "cnnlab.models",
    "train": "cnnlab.workflows",
    "fine_tune": "cnnlab.workflows",
    "lr_find": "cnnlab.workflows",
    "evaluate": "cnnlab.workflows",
    "predict": "cnnlab.evaluation",
    "load_model": "cnnlab.models.saving",
    "save_model": "cnnlab.models.saving",
    "export_model": "cnnlab.export",
    "sweep": "cnnlab.experiments",
    "TrainConfig": "cnnlab.config",
    "CnnlabError": "cnnlab.errors",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_API))
