"""TensorFlow imported without its C++ start-up notices (they ignore TF_CPP_MIN_LOG_LEVEL)."""

from __future__ import annotations

import os


def quiet_tensorflow_import() -> None:
    """Import TensorFlow with C++ stderr silenced (its start-up notices ignore
    TF_CPP_MIN_LOG_LEVEL), as the ``cnnlab`` command does; errors surface at the real import."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    except Exception:  # noqa: BLE001
        pass
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)
