"""Fixtures for the export tests: held-out arrays and a tiny finished, exported run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import make_image_folder
from tests.export._models import CLASSES, SIZE, learnable_arrays


@pytest.fixture(scope="session")
def held_out():
    """Held-out images and labels (another seed than training)."""
    return learnable_arrays(16, seed=7)


@pytest.fixture(scope="session")
def export_run(tmp_path_factory) -> Path:
    """A finished run (file source, 3 classes x 20 PNGs of 16 px) exported to every format."""
    import cnnlab

    root = tmp_path_factory.mktemp("export-run")
    data = make_image_folder(root / "images", classes=CLASSES, per_class=20, size=SIZE)
    result = cnnlab.train(data=f"folder:{data}", runs_dir=str(root / "runs"), name="tiny",
                          model="simple_cnn", model_kwargs={"filters": [8, 16], "dense": [16]},
                          epochs=4, batch_size=16, verbose=0, seed=1)  # fmt: skip
    cnnlab.export_model(result.run_dir, "all")
    return result.run_dir
