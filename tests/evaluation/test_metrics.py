import numpy as np
import pytest

from cnnlab.evaluation.metrics import compute_metrics, format_report, top_k_accuracy


def test_metrics_match_hand_computed_values():
    # true: 0 0 1 1 2 ; predicted: 0 1 1 1 0
    y = np.array([0, 0, 1, 1, 2])
    probs = np.array(
        [[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.1, 0.7, 0.2], [0.2, 0.5, 0.3], [0.5, 0.1, 0.4]]
    )
    m = compute_metrics(y, probs, ["a", "b", "c"], top_k=2)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.8, 0.3, 0.7, 0.5, 0.4])))
    assert m["top2"] == pytest.approx(1.0)  # every true class is in the top 2
    assert m["per_class"]["a"]["precision"] == pytest.approx(1 / 2)
    assert m["per_class"]["a"]["recall"] == pytest.approx(1 / 2)
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["b"]["recall"] == pytest.approx(1.0)
    assert m["per_class"]["b"]["f1-score"] == pytest.approx(0.8)
    assert m["per_class"]["c"]["f1-score"] == 0
    assert m["macro avg"]["f1-score"] == pytest.approx((0.5 + 0.8 + 0) / 3)
    assert m["weighted avg"]["f1-score"] == pytest.approx((0.5 * 2 + 0.8 * 2 + 0) / 5)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    text = format_report(m)
    assert "precision" in text and "macro avg" in text and "weighted avg" in text
    assert "top2 1.0000" in text


def test_top_k():
    probs = np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    assert top_k_accuracy(np.array([1, 2]), probs, 1) == 0
    assert top_k_accuracy(np.array([1, 2]), probs, 2) == 0.5
