"""Classification metrics from predicted probabilities, with scikit-learn.

Names follow Keras (``loss``, ``accuracy``, ``top5``) and the per-class table
follows scikit-learn's classification report (precision, recall, f1-score,
support; macro and weighted averages).
"""

from __future__ import annotations

import numpy as np


def collect_predictions(model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Run ``model`` over a (images, one-hot labels) dataset: (probabilities, true labels).

    Each batch runs through Keras' compiled predict step (``predict_batch``): an eager call
    keeps every layer's output of the batch alive, twice the memory."""
    from cnnlab.models.inference import predict_batch

    probs, labels = [], []
    for batch in dataset:
        x, y = batch[0], batch[1]
        probs.append(np.asarray(predict_batch(model, x), dtype=np.float64))
        labels.append(np.argmax(np.asarray(y), axis=-1))
    if not probs:
        return np.zeros((0, int(model.output_shape[-1]))), np.zeros((0,), np.int64)
    return np.concatenate(probs), np.concatenate(labels)


def top_k_accuracy(y_true: np.ndarray, probs: np.ndarray, k: int) -> float:
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1)[:, :k]
    return float(np.mean(np.any(top == y_true[:, None], axis=1))) if len(y_true) else 0.0


def compute_metrics(
    y_true: np.ndarray, probs: np.ndarray, class_names: list[str], top_k: int = 5
) -> dict:
    """Loss, accuracy, top-k, per-class precision/recall/F1, averages and confusion matrix."""
    from sklearn.metrics import classification_report, confusion_matrix

    n = len(class_names)
    y_pred = probs.argmax(axis=1)
    eps = 1e-12
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y_true)), y_true], eps, 1.0))))
    report = classification_report(
        y_true,
        y_pred,
        labels=list(range(n)),
        target_names=class_names,
        output_dict=True,
        zero_division=0,
    )
    k = min(top_k, n)
    return {
        "num_examples": int(len(y_true)),
        "loss": loss,
        "accuracy": float(np.mean(y_pred == y_true)) if len(y_true) else 0.0,
        f"top{k}": top_k_accuracy(y_true, probs, k),
        "top_k": k,
        "per_class": {c: report[c] for c in class_names},
        "macro avg": report["macro avg"],
        "weighted avg": report["weighted avg"],
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=list(range(n))).tolist(),
        "class_names": list(class_names),
    }


def format_report(metrics: dict, digits: int = 3) -> str:
    """A plain-text table in scikit-learn's classification report layout, with the totals."""
    names = metrics["class_names"]
    width = max(12, *(len(n) for n in names))
    head = f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}"
    lines = [head, ""]

    def row(name, r):
        return (
            f"{name:>{width}} {r['precision']:>9.{digits}f} {r['recall']:>9.{digits}f} "
            f"{r['f1-score']:>9.{digits}f} {int(r['support']):>9d}"
        )

    lines += [row(n, metrics["per_class"][n]) for n in names]
    lines.append("")
    total = metrics["num_examples"]
    lines.append(
        f"{'accuracy':>{width}} {'':>9} {'':>9} {metrics['accuracy']:>9.{digits}f} {total:>9d}"
    )
    lines.append(row("macro avg", metrics["macro avg"]))
    lines.append(row("weighted avg", metrics["weighted avg"]))
    k = metrics["top_k"]
    lines.append("")
    lines.append(
        f"loss {metrics['loss']:.4f}   accuracy {metrics['accuracy']:.4f}   "
        f"top{k} {metrics[f'top{k}']:.4f}   on {total} images"
    )
    return "\n".join(lines)
