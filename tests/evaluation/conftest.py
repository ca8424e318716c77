"""Runs shared by the report and comparison tests: trained once per session, in seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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
    """Class i: bright in channel i % 3 with a bright square in corner i % 4, plus noise
    (the same recipe as tests/conftest.py's image_folder, for session-wide runs)."""
    rng = np.random.default_rng(0)
    for ci, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            img = rng.integers(0, 60, size=(size, size, 3)).astype(np.uint8)
            img[..., ci % 3] += 120
            q = size // 2
            r0, c0 = [(0, 0), (0, q), (q, 0), (q, q)][ci % 4]
            img[r0 : r0 + q, c0 : c0 + q] = 230
            Image.fromarray(img).save(root / name / f"{name}_{j:03d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished run on 3 classes x 20 PNGs (file source): 48 train, 6 val, 6 test."""
    import cnnlab

    root = tmp_path_factory.mktemp("tiny")
    data = learnable_folder(root / "images")
    result = cnnlab.train(data=f"folder:{data}", output=str(root / "runs"), name="tiny", **TINY)
    return result.run_dir


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    """A finished run on builtin:digits (in-memory images), one short epoch."""
    import cnnlab

    root = tmp_path_factory.mktemp("digits")
    result = cnnlab.train(
        data="builtin:digits",
        output=str(root / "runs"),
        name="digits",
        **{**TINY, "epochs": 1, "batch_size": 64},
    )
    return result.run_dir
