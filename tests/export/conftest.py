"""Fixtures for the export tests: held-out arrays and a tiny finished, exported run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.export._models import exported_run, learnable_arrays


@pytest.fixture(scope="session")
def held_out():
    """Held-out images and labels (another seed than training)."""
    return learnable_arrays(16, seed=7)


@pytest.fixture(scope="session")
def export_run(tmp_path_factory) -> Path:
    """A finished run exported to every format (see ``_models.exported_run``)."""
    return exported_run(tmp_path_factory.mktemp("export-run"))
