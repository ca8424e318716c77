"""Runs shared by the report and comparison tests: trained once per session, in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import make_image_folder

TINY = {
    "epochs": 3,
    "model": "simple_cnn",
    "model_kwargs": {"filters": [8, 16], "dense": [16]},
    "batch_size": 16,
    "verbose": 0,
    "seed": 1,
}


def learnable_folder(
    root: Path, classes=("circle", "square", "star"), per_class: int = 20, size: int = 16
) -> Path:
    """The same learnable images as tests/conftest.py's image_folder, for session-wide runs."""
    return make_image_folder(root, classes=classes, per_class=per_class, size=size)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished run on 3 classes x 20 PNGs (file source): 48 train, 6 val, 6 test."""
    import cnnlab

    root = tmp_path_factory.mktemp("tiny")
    data = learnable_folder(root / "images")
    result = cnnlab.train(data=f"folder:{data}", runs_dir=str(root / "runs"), name="tiny", **TINY)
    return result.run_dir


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    """A finished run on builtin:digits (in-memory images), one short epoch."""
    import cnnlab

    root = tmp_path_factory.mktemp("digits")
    result = cnnlab.train(
        data="builtin:digits",
        runs_dir=str(root / "runs"),
        name="digits",
        **{**TINY, "epochs": 1, "batch_size": 64},
    )
    return result.run_dir
