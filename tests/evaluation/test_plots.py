"""The one confusion-matrix plotter: the report's figure and evaluate's confusion_matrix.png."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cnnlab.evaluation.plots import confusion_matrix_png, plot_confusion_matrix, row_normalised

CM = [[5, 1, 0], [0, 3, 2], [0, 0, 0]]
NAMES = ["cat", "dog", "fox"]


def test_row_normalised_by_hand():
    norm = row_normalised(CM)
    assert norm == pytest.approx(np.array([[5 / 6, 1 / 6, 0], [0, 0.6, 0.4], [0, 0, 0]]))


def test_evaluate_writes_the_figure_the_report_shows(tmp_path):
    path = plot_confusion_matrix(CM, NAMES, tmp_path / "cm.png")
    assert path == tmp_path / "cm.png"
    expected = confusion_matrix_png(row_normalised(CM), NAMES, True, title="Confusion matrix")
    assert path.read_bytes() == expected
    counts = plot_confusion_matrix(CM, NAMES, tmp_path / "counts.png", normalize=False)
    assert counts.read_bytes() == confusion_matrix_png(CM, NAMES, False, title="Confusion matrix")
    # nothing else is left behind by the atomic write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cm.png", "counts.png"]


def test_many_classes_grow_the_figure_instead_of_shrinking_it():
    def width(n: int) -> int:
        names = [f"class{i}" for i in range(n)]
        with Image.open(io.BytesIO(confusion_matrix_png(np.eye(n), names, True))) as im:
            return im.size[0]

    assert width(100) > 3 * width(5)
