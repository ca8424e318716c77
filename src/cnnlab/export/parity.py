"""Parity: each artifact against the Keras model, in the artifact's own runtime.

For every format the same held-out images go through the Keras model and through
the artifact as a deployment would run it (ONNX Runtime, the LiteRT interpreter,
``tf.saved_model.load``, or the re-loaded ``.keras`` file). Measured: max
|Δ probability|, top-1 agreement and the accuracy of each on those images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Defaults that fail an export (override with ``thresholds=`` in export_model).
THRESHOLDS = {
    "fp32_max_abs_diff": 1e-4,  # keras, savedmodel, tflite, onnx
    "fp32_agreement": 1.0,
    "fp16_agreement": 0.995,  # on the images that are not near-ties (below)
    "fp16_tie_margin": 0.05,  # Keras' top-1 leads its runner-up by less: a near-tie
    "fp16_accuracy_drop": 0.01,  # and accuracy at most 1 point below Keras'
    "int8_accuracy_drop": 0.01,  # accuracy may be at most 1 point below Keras'
}
PRECISION = {
    "keras": "fp32",
    "savedmodel": "fp32",
    "tflite": "fp32",
    "onnx": "fp32",
    "tflite-fp16": "fp16",
    "tflite-int8": "int8",
}
RUNTIME = {
    "keras": "keras.saving.load_model",
    "savedmodel": "tf.saved_model.load",
    "tflite": "ai_edge_litert Interpreter",
    "tflite-fp16": "ai_edge_litert Interpreter",
    "tflite-int8": "ai_edge_litert Interpreter",
    "onnx": "onnxruntime",
}


@dataclass
class Parity:
    """One artifact's figures against the Keras model on the same images."""

    format: str
    images: int
    max_abs_diff: float
    agreement: float
    accuracy: float | None
    keras_accuracy: float | None
    passed: bool = True
    problems: list[str] = field(default_factory=list)
    near_ties: int = 0  # fp16: images whose Keras top-2 margin is under fp16_tie_margin
    decisive_agreement: float | None = None  # fp16: agreement on the other images

    def to_dict(self) -> dict:
        return {
            "runtime": RUNTIME[self.format],
            "images": self.images,
            "max_abs_diff": self.max_abs_diff,
            "top1_agreement": self.agreement,
            "accuracy": self.accuracy,
            "keras_accuracy": self.keras_accuracy,
            "passed": self.passed,
            "problems": self.problems,
            **(
                {"near_ties": self.near_ties, "decisive_agreement": self.decisive_agreement}
                if self.decisive_agreement is not None
                else {}
            ),
        }


def run_artifact(fmt: str, path: Path, images: np.ndarray) -> np.ndarray:
    """Probabilities from the artifact at ``path``, run in its own runtime."""
    if fmt == "keras":
        from cnnlab.models.inference import predict_batch
        from cnnlab.models.saving import load_model

        model = load_model(path)
        batches = range(0, len(images), 64)
        return np.concatenate([predict_batch(model, images[i : i + 64]) for i in batches])
    from cnnlab.runtime import load_artifact

    return load_artifact(path).predict(images)


def measure(
    fmt: str,
    probs: np.ndarray,
    reference: np.ndarray,
    labels: np.ndarray | None,
    thresholds: dict | None = None,
) -> Parity:
    """Compare ``probs`` with the Keras model's ``reference``; apply the thresholds."""
    t = {**THRESHOLDS, **(thresholds or {})}
    diff = float(np.abs(probs.astype(np.float64) - reference).max()) if len(probs) else 0.0
    agree = float(np.mean(probs.argmax(1) == reference.argmax(1))) if len(probs) else 1.0
    acc = keras_acc = None
    if labels is not None and len(labels):
        acc = float(np.mean(probs.argmax(1) == labels))
        keras_acc = float(np.mean(reference.argmax(1) == labels))
    result = Parity(fmt, len(probs), diff, agree, acc, keras_acc)
    precision = PRECISION[fmt]
    if precision == "fp32":
        if diff > t["fp32_max_abs_diff"]:
            result.problems.append(f"max |Δp| {diff:.2e} > {t['fp32_max_abs_diff']:.0e}")
        if agree < t["fp32_agreement"]:
            result.problems.append(f"top-1 agreement {agree:.2%} < {t['fp32_agreement']:.2%}")
    elif precision == "fp16":
        _fp16_agreement(result, probs, reference, t)
    else:
        _accuracy_drop(result, t["int8_accuracy_drop"])
    result.passed = not result.problems
    return result


def _fp16_agreement(result: Parity, probs: np.ndarray, reference: np.ndarray, t: dict) -> None:
    """fp16's agreement check, leaving out near-ties, and its accuracy.

    Rounding the weights to fp16 moves the probabilities: on a MobileNetV2 fine-tune
    from 200 flower photos at 96 px (test accuracy 0.60, median top-1 probability
    0.6) by 0.006 at the median and 0.04 at most, and flipped 2 of its 300 test
    images (5 when resized by Pillow), each a near-tie (top-2 margins 0.002-0.02).
    That is the model's own indecision, not a broken file. So agreement is required
    on the images whose
    Keras top-1 leads by ``fp16_tie_margin`` or more (the rest are counted), and
    the accuracy may fall at most ``fp16_accuracy_drop`` below Keras'.
    """
    top2 = np.sort(reference, axis=1)[:, -2:] if reference.shape[1] > 1 else None
    margin = top2[:, 1] - top2[:, 0] if top2 is not None else np.ones(len(reference))
    decisive = margin >= t["fp16_tie_margin"]
    same = probs.argmax(1) == reference.argmax(1)
    result.near_ties = int(np.sum(~decisive))
    result.decisive_agreement = float(np.mean(same[decisive])) if decisive.any() else 1.0
    if result.decisive_agreement < t["fp16_agreement"]:
        result.problems.append(
            f"top-1 agreement {result.decisive_agreement:.2%} < {t['fp16_agreement']:.2%} "
            f"on the {int(decisive.sum())} images that are not near-ties (Keras' top-1 "
            f"leads by {t['fp16_tie_margin']:g} or more)"
        )
    _accuracy_drop(result, t["fp16_accuracy_drop"])


def _accuracy_drop(result: Parity, allowed: float) -> None:
    acc, keras_acc = result.accuracy, result.keras_accuracy
    if acc is not None and acc < keras_acc - allowed - 1e-12:
        result.problems.append(
            f"accuracy {acc:.2%} is more than {100 * allowed:g} point(s) below Keras' "
            f"{keras_acc:.2%}"
        )


def format_table(rows: list[dict]) -> str:
    """The parity table the CLI prints: one row per artifact."""
    head = (
        f"{'format':<12} {'file':<20} {'size':>10}  {'runtime':<27} {'max|Δp|':>9} "
        f"{'top-1 agree':>11} {'accuracy':>9} {'keras acc':>9}  status"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        p = r["parity"]
        acc = "-" if p["accuracy"] is None else f"{p['accuracy']:.2%}"
        kacc = "-" if p["keras_accuracy"] is None else f"{p['keras_accuracy']:.2%}"
        status = "ok" if p["passed"] else "FAILED: " + "; ".join(p["problems"])
        if p.get("near_ties"):
            status += f" ({p['near_ties']} near-ties not counted)"
        lines.append(
            f"{r['format']:<12} {r['file'] or '(deleted)':<20} {_size(r['bytes']):>10}  "
            f"{p['runtime']:<27} {p['max_abs_diff']:>9.2e} {p['top1_agreement']:>11.2%} "
            f"{acc:>9} {kacc:>9}  {status}"
        )
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
