"""A tiny exported run and one server over its ONNX file for the whole serve session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.export._models import exported_run
from tests.serve._server import running_server


@pytest.fixture(scope="session")
def export_run(tmp_path_factory) -> Path:
    return exported_run(tmp_path_factory.mktemp("export-run"))


@pytest.fixture(scope="session")
def server(export_run):
    """Base URL of ``cnnlab serve <run>/export/model.onnx`` (TensorFlow blocked)."""
    with running_server(export_run / "export" / "model.onnx") as url:
        yield url
