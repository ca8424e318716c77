"""Calibration: does a predicted confidence of 0.8 mean right 80 % of the time?

* :func:`reliability_bins` groups predictions by their top-1 confidence into
  equal-width bins and gives, per bin, the count, mean confidence and accuracy.
* :func:`expected_calibration_error` (ECE, Guo et al. 2017) is the average gap
  between confidence and accuracy, weighted by how many predictions fall in
  each bin: ``sum_b n_b / N * |acc_b - conf_b|``.
* :func:`fit_temperature` finds the one number ``T`` that, dividing the
  logits, minimises the negative log-likelihood on held-out (validation)
  predictions; :func:`apply_temperature` rescales probabilities with it.
  The argmax, hence accuracy, never changes; only the confidences do.

Everything works from softmax probabilities: ``log p`` equals the logits up to
a per-row constant, and softmax is blind to that constant, so
``softmax(log p / T) == softmax(logits / T)``.
"""

from __future__ import annotations

import numpy as np

from cnnlab import _html as H
from cnnlab.evaluation.plots import pyplot

EPS = 1e-12


def reliability_bins(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> dict:
    """Bin top-1 predictions by confidence.

    Bins are ``(0, 1/n], (1/n, 2/n], ... ((n-1)/n, 1]``: right-closed, so a
    confidence of exactly 1.0 lands in the last bin and 0.5 with ``n_bins=10``
    in the fifth.

    Args:
        probs: (N, K) predicted probabilities.
        y_true: (N,) true class indices.
        n_bins: number of equal-width bins over [0, 1].

    Returns:
        ``{"lower", "upper", "count", "confidence", "accuracy"}``, lists of
        ``n_bins`` floats (``confidence``/``accuracy`` are ``None`` for empty bins).

    Example:
        >>> p = np.array([[0.9, 0.1], [0.6, 0.4]])
        >>> reliability_bins(p, np.array([0, 1]), n_bins=2)["accuracy"]
        [None, 0.5]
    """
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true)
    conf = probs.max(axis=1) if len(probs) else np.zeros(0)
    correct = (probs.argmax(axis=1) == y_true) if len(probs) else np.zeros(0, bool)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # right-closed bins: index b holds edges[b] < c <= edges[b+1]; c == 0 goes to bin 0
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    out: dict = {
        "lower": edges[:-1].tolist(),
        "upper": edges[1:].tolist(),
        "count": [],
        "confidence": [],
        "accuracy": [],
    }
    for b in range(n_bins):
        sel = idx == b
        n = int(sel.sum())
        out["count"].append(n)
        out["confidence"].append(float(conf[sel].mean()) if n else None)
        out["accuracy"].append(float(correct[sel].mean()) if n else None)
    return out


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> float:
    """ECE: ``sum_b (n_b / N) * |accuracy_b - confidence_b|`` over :func:`reliability_bins`.

    Example:
        >>> p = np.array([[0.9, 0.1], [0.6, 0.4]])
        >>> round(expected_calibration_error(p, np.array([0, 1]), n_bins=2), 3)
        0.25
    """
    bins = reliability_bins(probs, y_true, n_bins)
    total = sum(bins["count"])
    if total == 0:
        return 0.0
    return float(
        sum(
            n / total * abs(a - c)
            for n, a, c in zip(bins["count"], bins["accuracy"], bins["confidence"])
            if n
        )
    )


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(probs) / T)``: T > 1 softens over-confident predictions.

    Example:
        >>> apply_temperature(np.array([[0.8, 0.2]]), 2.0).round(3)
        array([[0.667, 0.333]])
    """
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0)) / float(temperature)
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def negative_log_likelihood(probs: np.ndarray, y_true: np.ndarray) -> float:
    """Mean ``-log p(true class)``: the cross-entropy loss of the predictions."""
    if len(y_true) == 0:
        return 0.0
    p = np.clip(np.asarray(probs, np.float64)[np.arange(len(y_true)), y_true], EPS, 1.0)
    return float(-np.mean(np.log(p)))


def fit_temperature(
    probs: np.ndarray, y_true: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)
) -> float:
    """The temperature minimising the NLL of ``probs`` (from a held-out split).

    A one-dimensional bounded search over ``log T`` (the NLL is smooth and
    convex in ``1/T``), so it needs no gradients and takes milliseconds.

    Example:
        >>> t = fit_temperature(val_probs, val_labels)
        >>> calibrated = apply_temperature(test_probs, t)
    """
    from scipy.optimize import minimize_scalar

    probs = np.asarray(probs, np.float64)
    y_true = np.asarray(y_true)
    if len(y_true) == 0:
        return 1.0
    res = minimize_scalar(
        lambda log_t: negative_log_likelihood(apply_temperature(probs, np.exp(log_t)), y_true),
        bounds=(np.log(bounds[0]), np.log(bounds[1])),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.exp(res.x))


def reliability_png(
    bins: dict, title: str = "Reliability diagram", calibrated: dict | None = None
) -> bytes:
    """Bar chart of accuracy per confidence bin against the diagonal, with the gap shaded,
    as PNG bytes.

    ``calibrated`` (bins after temperature scaling) is drawn as a line on top.
    """
    plt = pyplot()
    lower = np.array(bins["lower"])
    width = np.array(bins["upper"]) - lower
    acc = np.array([a if a is not None else 0.0 for a in bins["accuracy"]])
    conf = np.array(
        [c if c is not None else lo + w / 2 for c, lo, w in zip(bins["confidence"], lower, width)]
    )
    count = np.array(bins["count"])
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(5.2, 6), height_ratios=(3, 1), sharex=True)
    ax.bar(
        lower, acc, width=width, align="edge", color="#4c78a8", edgecolor="white", label="accuracy"
    )
    filled = count > 0  # empty bins have no accuracy, hence no gap to draw
    gap_lo, gap_hi = np.minimum(acc, conf)[filled], np.maximum(acc, conf)[filled]
    ax.bar(
        lower[filled],
        gap_hi - gap_lo,
        bottom=gap_lo,
        width=width[filled],
        align="edge",
        color="#e45756",
        alpha=0.35,
        edgecolor="#e45756",
        hatch="//",
        label="gap to mean confidence",
    )
    if calibrated is not None:
        pts = [
            (c, a)
            for c, a in zip(calibrated["confidence"], calibrated["accuracy"])
            if a is not None
        ]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, "o-", color="#f58518", label="after temperature scaling")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_ylim(0, 1)
    ax.set_xlim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    axc.bar(lower, count, width=width, align="edge", color="#72b7b2", edgecolor="white")
    axc.set_xlabel("confidence (top-1 probability)")
    axc.set_ylabel("predictions")
    fig.tight_layout()
    return H.fig_png(fig, dpi=90)
