"""Shared fixtures: tiny labelled image sets written at run time (no downloads, no ../shared)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from PIL import Image


def make_image_folder(
    root: Path,
    classes=("circle", "square"),
    per_class: int = 12,
    size: int = 16,
    seed: int = 0,
    mode: str = "RGB",
) -> Path:
    """Write ``per_class`` learnable images per class: each class has its own colour and spot.

    Class i is bright in channel i % 3 and has a bright square in a class-specific
    corner, plus noise, so a tiny CNN separates them within a few epochs.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for ci, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            img = rng.integers(0, 60, size=(size, size, 3)).astype(np.uint8)
            img[..., ci % 3] += 120
            q = size // 2
            r0, c0 = [(0, 0), (0, q), (q, 0), (q, q)][ci % 4]
            img[r0 : r0 + q, c0 : c0 + q] = 230
            Image.fromarray(img).convert(mode).save(d / f"{name}_{j:03d}.png")
    return root


@pytest.fixture(autouse=True, scope="session")
def _scan_cache_in_tmp(tmp_path_factory):
    """The scan cache (cnnlab.data.scan_cache) of the tests' folders goes to a temporary
    folder, never into the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_CACHE_DIR", str(tmp_path_factory.mktemp("scan-cache")))
        yield


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """A class-per-folder set: 2 classes × 12 RGB PNGs of 16×16."""
    return make_image_folder(tmp_path / "images")


@pytest.fixture
def make_folder(tmp_path):
    """Factory: ``make_folder(name, classes=..., per_class=..., size=...)``."""

    def make(name="images", **kwargs):
        return make_image_folder(tmp_path / name, **kwargs)

    return make


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    return tmp_path / "runs"
