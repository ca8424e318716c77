"""ECE, reliability bins and temperature scaling against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from cnnlab.evaluation.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
)

# Five predictions, two classes. Confidence (top-1 probability) and correctness:
#   0.95 right, 0.85 wrong, 0.65 right, 0.55 right, 0.70 right (class 1)
PROBS = np.array([[0.95, 0.05], [0.85, 0.15], [0.65, 0.35], [0.55, 0.45], [0.30, 0.70]])
Y = np.array([0, 1, 0, 0, 1])


def test_reliability_bins_by_hand():
    b = reliability_bins(PROBS, Y, n_bins=5)  # bins (0,.2] (.2,.4] (.4,.6] (.6,.8] (.8,1]
    assert b["lower"] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])
    assert b["upper"] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert b["count"] == [0, 0, 1, 2, 2]
    assert b["confidence"][:2] == [None, None] and b["accuracy"][:2] == [None, None]
    assert b["confidence"][2:] == pytest.approx([0.55, 0.675, 0.90])
    assert b["accuracy"][2:] == pytest.approx([1.0, 1.0, 0.5])


def test_ece_by_hand():
    # (1 * |1 - .55| + 2 * |1 - .675| + 2 * |.5 - .9|) / 5 = (.45 + .65 + .8) / 5
    assert expected_calibration_error(PROBS, Y, n_bins=5) == pytest.approx(0.38)
    # one bin: |mean accuracy - mean confidence| = |0.8 - 0.74|
    assert expected_calibration_error(PROBS, Y, n_bins=1) == pytest.approx(0.06)


def test_bins_are_right_closed():
    p = np.array([[0.6, 0.4], [1.0, 0.0], [0.5, 0.5]])
    b = reliability_bins(p, np.array([0, 0, 1]), n_bins=5)
    # 0.6 -> (.4,.6], 1.0 -> (.8,1], 0.5 (argmax 0: wrong) -> (.4,.6]
    assert b["count"] == [0, 0, 2, 0, 1]
    assert b["accuracy"][2] == pytest.approx(0.5)


def test_perfectly_calibrated_and_empty():
    p = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(p, np.array([0, 1])) == 0.0
    assert expected_calibration_error(np.zeros((0, 3)), np.zeros(0, int)) == 0.0


def test_temperature_recovers_overconfidence():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1.5, size=(6000, 5))
    true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(5, p=p) for p in true])
    over = np.exp(3 * logits) / np.exp(3 * logits).sum(1, keepdims=True)  # logits scaled by 3
    t = fit_temperature(over, y)
    assert t == pytest.approx(3.0, rel=0.1)
    fixed = apply_temperature(over, t)
    assert np.array_equal(fixed.argmax(1), over.argmax(1))  # accuracy never changes
    assert negative_log_likelihood(fixed, y) < negative_log_likelihood(over, y)
    assert expected_calibration_error(fixed, y) < expected_calibration_error(over, y) / 2


def test_apply_temperature_values():
    assert apply_temperature(np.array([[0.8, 0.2]]), 2.0) == pytest.approx(
        np.array([[2 / 3, 1 / 3]])
    )
    assert apply_temperature(PROBS, 1.0) == pytest.approx(PROBS)
