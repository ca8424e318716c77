"""The report's numbers: summary, per-class metrics, confusions, mistakes, calibration, TTA,
and which examples Grad-CAM explains. Everything here ends up in report.json."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cnnlab.evaluation.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
)
from cnnlab.evaluation.gradcam import gradcam
from cnnlab.evaluation.metrics import collect_predictions
from cnnlab.evaluation.plots import row_normalised
from cnnlab.evaluation.report.loading import ReportInputs, example_name, model_inputs
from cnnlab.evaluation.tta import tta_predict, tta_views

# The training settings the summary lists, when the run's config has them.
SUMMARY_SETTINGS = (
    "optimizer",
    "learning_rate",
    "schedule",
    "batch_size",
    "epochs",
    "augment",
    "label_smoothing",
    "weight_decay",
    "seed",
    "weights",
)


@dataclass
class ReportLimits:
    """Bounds that keep a report to seconds on tiny runs and well under a minute on CIFAR."""

    gallery: int = 24  # worst mistakes shown
    gradcam_correct: int = 4
    gradcam_wrong: int = 4
    # On CPU, a CIFAR-size model predicts a few hundred to a few thousand images per
    # second: these two bound the report's extra forward passes to about 7,000.
    tta_examples: int = 1000  # TTA costs len(views) - 1 forward passes per example
    temperature_examples: int = 2000  # validation predictions used to fit T (one number)
    confused_pairs: int = 20
    calibration_bins: int = 15
    seed: int = 0


@dataclass
class Predictions:
    """The scored split, per example: probabilities, truth, prediction, loss, confidence."""

    probs: np.ndarray  # (N, K) float64
    y: np.ndarray  # true class
    pred: np.ndarray  # predicted class
    p_true: np.ndarray  # probability of the true class
    losses: np.ndarray  # -log p_true
    conf: np.ndarray  # probability of the predicted class

    @classmethod
    def of(cls, evaluation) -> Predictions:
        probs = np.asarray(evaluation.probs, np.float64)
        y = np.asarray(evaluation.y_true, np.int64)
        n = len(y)
        if n == 0:
            return cls(probs, y, np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(0))
        p_true = probs[np.arange(n), y]
        losses = -np.log(np.clip(p_true, 1e-12, 1.0))
        return cls(probs, y, probs.argmax(axis=1), p_true, losses, probs.max(axis=1))

    @property
    def n(self) -> int:
        return len(self.y)


def summary_numbers(inputs: ReportInputs) -> dict[str, Any]:
    """The data, the model, the run and the headline metrics, in one flat dict."""
    config, bundle, history = inputs.config, inputs.bundle, inputs.history
    m, rm = inputs.evaluation.metrics, inputs.run_metrics
    train_seconds = (
        float(np.nansum(history["epoch_seconds"])) if "epoch_seconds" in history else None
    )
    k = m.get("top_k", 5)
    return {
        "run": str(inputs.run_dir) if inputs.run_dir else None,
        "data": config.get("data", bundle.source.spec),
        "evaluated_on": bundle.source.spec,
        "num_classes": len(inputs.class_names),
        "class_names": inputs.class_names,
        "split_sizes": inputs.data_json.get("split_sizes") or bundle.split.counts(),
        "per_class_counts": inputs.data_json.get("per_class") or bundle.summary()["per_class"],
        "image_size": list(bundle.image_size),
        "channels": bundle.channels,
        "model": config.get("model", getattr(inputs.model, "name", "?")),
        "model_kwargs": config.get("model_kwargs") or {},
        "parameters": int(rm.get("parameters") or inputs.model.count_params()),
        "epochs_done": rm.get("epochs_done", len(history.get("loss", [])) or None),
        "best_epoch": rm.get("best_epoch"),
        "classifier": rm.get("classifier"),  # fine_tune: the classifier the run kept
        "decisions": rm.get("decisions") or [],  # fine_tune: what it decided and why
        "training_seconds": round(train_seconds, 1) if train_seconds is not None else None,
        "settings": {key: config.get(key) for key in SUMMARY_SETTINGS if key in config},
        "versions": inputs.env.get("versions", {}),
        "python": inputs.env.get("python"),
        "devices": inputs.env.get("devices"),
        "loss": m["loss"],
        "accuracy": m["accuracy"],
        f"top{k}": m.get(f"top{k}"),
        "macro_f1": m["macro avg"]["f1-score"],
        "weighted_f1": m["weighted avg"]["f1-score"],
    }


def per_class_numbers(metrics: dict, class_names: list[str]) -> list[dict]:
    """One row per class: precision, recall, f1-score and support, in class order."""
    return [
        {"class": c, **{key: float(v) for key, v in metrics["per_class"][c].items()}}
        for c in class_names
    ]


def confusion_numbers(metrics: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    """The confusion matrix as counts and row-normalised, and its report.json entry."""
    cm = np.asarray(metrics["confusion_matrix"], np.int64)
    norm = row_normalised(cm)
    entry = {
        "rows": "true",
        "columns": "predicted",
        "counts": cm.tolist(),
        "row_normalised": np.round(norm, 6).tolist(),
    }
    return cm, norm, entry


def most_confused(cm: np.ndarray, class_names: list[str], top: int = 20) -> list[dict]:
    """Off-diagonal cells of a confusion matrix (rows true), largest count first.

    Example:
        >>> most_confused(np.array([[5, 2], [0, 3]]), ["cat", "dog"])
        [{'true': 'cat', 'predicted': 'dog', 'count': 2, 'share_of_true': 0.2857...}]
    """
    cm = np.asarray(cm)
    support = cm.sum(axis=1)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")
    out = []
    for flat in order[:top]:
        i, j = divmod(int(flat), cm.shape[1])
        if off[i, j] <= 0:
            break
        out.append(
            {
                "true": class_names[i],
                "predicted": class_names[j],
                "count": int(off[i, j]),
                "share_of_true": float(off[i, j] / max(support[i], 1)),
            }
        )
    return out


def mistakes_by_loss(preds: Predictions) -> np.ndarray:
    """Rows of the wrong predictions, highest loss first."""
    wrong = np.flatnonzero(preds.pred != preds.y)
    return wrong[np.argsort(-preds.losses[wrong], kind="stable")]


def mistake_numbers(inputs: ReportInputs, preds: Predictions, rows: np.ndarray) -> list[dict]:
    """What the gallery says about each shown mistake."""
    names = inputs.class_names
    return [
        {
            "example": example_name(inputs.bundle, inputs.split, int(r)),
            "true": names[preds.y[r]],
            "predicted": names[preds.pred[r]],
            "confidence": float(preds.conf[r]),
            "p_true": float(preds.p_true[r]),
            "loss": float(preds.losses[r]),
        }
        for r in rows
    ]


def calibration_numbers(
    inputs: ReportInputs, preds: Predictions, limits: ReportLimits, rng
) -> tuple[dict, str]:
    """ECE, NLL and reliability bins, before and after temperature scaling; and a note
    saying how (or why not) the temperature was fitted."""
    nb = limits.calibration_bins
    cal: dict[str, Any] = {
        "n_bins": nb,
        "ece": expected_calibration_error(preds.probs, preds.y, nb),
        "nll": negative_log_likelihood(preds.probs, preds.y),
        "bins": reliability_bins(preds.probs, preds.y, nb),
    }
    bundle = inputs.bundle
    val_n = len(bundle.examples("val")["labels"]) if inputs.split != "val" else 0
    same_classes = list(bundle.class_names) == inputs.class_names
    if not (val_n and same_classes):
        cal["temperature"] = None
        if same_classes:
            return cal, "No temperature scaling: there is no validation split to fit it on."
        return cal, "No temperature scaling: the evaluated data's classes differ from the model's."
    note = ""
    vrows = np.arange(val_n)
    if val_n > limits.temperature_examples:
        vrows = np.sort(rng.choice(val_n, limits.temperature_examples, replace=False))
        note = f"Temperature fitted on {len(vrows)} of {val_n} validation images."
    val = bundle.subset("val", vrows, batch_size=inputs.batch_size)  # bounded memory
    vprobs, vy = collect_predictions(inputs.model, val)
    temp = fit_temperature(vprobs, vy)
    scaled = apply_temperature(preds.probs, temp)
    cal["temperature"] = {
        "fitted_on": "val",
        "num_fit_examples": len(vy),
        "temperature": temp,
        "ece": expected_calibration_error(scaled, preds.y, nb),
        "nll": negative_log_likelihood(scaled, preds.y),
        "bins": reliability_bins(scaled, preds.y, nb),
    }
    return cal, note


def tta_numbers(
    inputs: ReportInputs, preds: Predictions, flip: bool, limits: ReportLimits, rng
) -> dict:
    """Accuracy with and without test-time augmentation, and of each view alone, on up to
    ``limits.tta_examples`` examples (the same sample for both)."""
    n = preds.n
    views = tta_views(inputs.bundle.image_size, flip=flip)
    rows = np.arange(n)
    if n > limits.tta_examples:
        rows = np.sort(rng.choice(n, limits.tta_examples, replace=False))
    tta: dict[str, Any] = {"views": views, "num_examples": len(rows), "subsampled": len(rows) < n}
    if len(rows) == 0:
        return tta
    x = model_inputs(inputs.bundle, inputs.split, rows)
    probs, y = preds.probs[rows], preds.y[rows]
    mean, per_view = tta_predict(
        inputs.model,
        x,
        views,
        batch_size=inputs.batch_size,
        return_views=True,
        identity_probs=probs,
    )
    base = float(np.mean(probs.argmax(1) == y))
    tta.update(
        accuracy_without=base,
        accuracy_with=float(np.mean(mean.argmax(1) == y)),
        per_view={v: float(np.mean(p.argmax(1) == y)) for v, p in per_view.items()},
    )
    tta["gain"] = tta["accuracy_with"] - base
    return tta


def gradcam_rows(
    preds: Predictions, mistakes: np.ndarray, limits: ReportLimits, rng
) -> tuple[np.ndarray, int]:
    """The examples Grad-CAM explains: a random few right ones, then the worst mistakes.
    Returns the rows and how many of them are mistakes."""
    correct = np.flatnonzero(preds.pred == preds.y)
    if len(correct):
        k = min(limits.gradcam_correct, len(correct))
        correct = np.sort(rng.choice(correct, k, replace=False))
    wrong = mistakes[: limits.gradcam_wrong]
    return np.concatenate([correct, wrong]).astype(np.int64), len(wrong)


def gradcam_maps(
    inputs: ReportInputs, preds: Predictions, rows: np.ndarray, n_wrong: int, layer: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The images of ``rows`` and their heat maps for the predicted and for the true class."""
    x = model_inputs(inputs.bundle, inputs.split, rows)
    # Two images per gradient tape: an eager pass keeps every layer's output for the
    # gradient (67 MB per image for MobileNet at 224 px), and the report has few of them.
    maps_pred = gradcam(inputs.model, x, preds.pred[rows], layer=layer, batch_size=2)
    maps_true = (
        gradcam(inputs.model, x, preds.y[rows], layer=layer, batch_size=2) if n_wrong else maps_pred
    )
    return x, maps_pred, maps_true


def gradcam_example(inputs: ReportInputs, preds: Predictions, row: int) -> dict:
    """What report.json says about one explained example."""
    names = inputs.class_names
    return {
        "example": example_name(inputs.bundle, inputs.split, row),
        "true": names[preds.y[row]],
        "predicted": names[preds.pred[row]],
        "confidence": float(preds.conf[row]),
        "correct": bool(preds.pred[row] == preds.y[row]),
    }
