"""The confusion matrix, per-class metrics and most-confused pairs the report shows, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from cnnlab.evaluation.metrics import compute_metrics
from cnnlab.evaluation.report import most_confused

# true:      0 0 0 1 1 2
# predicted: 0 0 1 1 2 2
Y = np.array([0, 0, 0, 1, 1, 2])
PRED = np.array([0, 0, 1, 1, 2, 2])
NAMES = ["cat", "dog", "fox"]


def _probs(pred: np.ndarray, k: int = 3) -> np.ndarray:
    p = np.full((len(pred), k), 0.1)
    p[np.arange(len(pred)), pred] = 0.8
    return p


def test_confusion_matrix_and_per_class_by_hand():
    m = compute_metrics(Y, _probs(PRED), NAMES, top_k=2)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    pc = m["per_class"]
    # cat: predicted twice, both right; 2 of 3 cats found
    assert (pc["cat"]["precision"], pc["cat"]["recall"], pc["cat"]["f1-score"]) == pytest.approx(
        (1, 2 / 3, 0.8)
    )
    assert (pc["dog"]["precision"], pc["dog"]["recall"], pc["dog"]["f1-score"]) == pytest.approx(
        (0.5, 0.5, 0.5)
    )
    assert (pc["fox"]["precision"], pc["fox"]["recall"], pc["fox"]["f1-score"]) == pytest.approx(
        (0.5, 1, 2 / 3)
    )
    assert [pc[c]["support"] for c in NAMES] == [3, 2, 1]
    macro, weighted = m["macro avg"], m["weighted avg"]
    assert macro["precision"] == pytest.approx(2 / 3)
    assert macro["recall"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert macro["f1-score"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert weighted["precision"] == pytest.approx((3 * 1 + 2 * 0.5 + 0.5) / 6)
    assert weighted["recall"] == pytest.approx(4 / 6)
    assert weighted["f1-score"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 2 / 3) / 6)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # p(true class) is 0.8 for the four right answers and 0.1 for the two wrong ones
    assert m["loss"] == pytest.approx(-(4 * np.log(0.8) + 2 * np.log(0.1)) / 6)


def test_most_confused_by_hand():
    cm = np.array([[50, 7, 1], [2, 40, 0], [9, 0, 30]])
    pairs = most_confused(cm, NAMES)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [
        ("fox", "cat", 9),
        ("cat", "dog", 7),
        ("dog", "cat", 2),
        ("cat", "fox", 1),
    ]
    assert pairs[0]["share_of_true"] == pytest.approx(9 / 39)
    assert most_confused(np.eye(3, dtype=int) * 5, NAMES) == []
    assert len(most_confused(cm, NAMES, top=2)) == 2
