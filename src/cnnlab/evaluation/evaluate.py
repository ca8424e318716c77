"""Scoring a trained model on its held-out split or on other data, and saving the results."""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab._io import unique_dir, write_json, write_text
from cnnlab.errors import DataError
from cnnlab.evaluation.memory import plan_inference
from cnnlab.evaluation.metrics import collect_predictions, compute_metrics, format_report
from cnnlab.evaluation.plots import plot_confusion_matrix


@dataclass
class EvaluationResult:
    """Metrics plus the per-example predictions they came from."""

    metrics: dict
    probs: np.ndarray
    y_true: np.ndarray
    class_names: list[str]
    names: list[str] = field(default_factory=list)  # file path or example index, per row
    output_dir: Path | None = None
    report_path: Path | None = None  # report.html, when it was written

    @property
    def accuracy(self) -> float:
        return self.metrics["accuracy"]

    def report(self) -> str:
        return format_report(self.metrics)


def save_evaluation(result: EvaluationResult, out_dir: str | os.PathLike) -> Path:
    """Write metrics.json, classification_report.txt, confusion_matrix.{json,png}, predictions.csv."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m = result.metrics
    write_json(out / "metrics.json", {k: v for k, v in m.items() if k != "confusion_matrix"})
    write_json(
        out / "confusion_matrix.json",
        {
            "class_names": result.class_names,
            "rows": "true",
            "columns": "predicted",
            "matrix": m["confusion_matrix"],
        },
    )
    write_text(out / "classification_report.txt", format_report(m) + "\n")
    plot_confusion_matrix(m["confusion_matrix"], result.class_names, out / "confusion_matrix.png")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["example", "true", "predicted", "confidence", "p_true"])
    pred = result.probs.argmax(axis=1)
    for i, (y, p) in enumerate(zip(result.y_true, pred)):
        name = result.names[i] if i < len(result.names) else i
        w.writerow(
            [
                name,
                result.class_names[y],
                result.class_names[p],
                f"{result.probs[i, p]:.5f}",
                f"{result.probs[i, y]:.5f}",
            ]
        )
    write_text(out / "predictions.csv", buf.getvalue())
    result.output_dir = out
    return out


def score(
    model,
    bundle,
    split: str,
    class_names: list[str],
    top_k: int = 5,
    label_map: np.ndarray | None = None,
) -> EvaluationResult:
    """Predict one split of a DataBundle and compute its metrics."""
    ds = bundle.dataset(split, training=False)
    if ds is None:
        raise DataError(
            f"The {split} split of {bundle.source.spec} is empty",
            fix="Choose another --split, or pass --data with images to score",
        )
    probs, y = collect_predictions(model, ds)
    if label_map is not None:
        y = label_map[y]
    ex = bundle.examples(split)
    names = [str(p) for p in ex["paths"]] if "paths" in ex else [str(i) for i in ex["indices"]]
    metrics = compute_metrics(y, probs, class_names, top_k)
    return EvaluationResult(metrics, probs, y, list(class_names), names)


@dataclass
class ScoredRun:
    """What :func:`score_run` scored: the result (already saved), the model and the data."""

    result: EvaluationResult
    loaded: Any  # cnnlab.models.saving.LoadedModel
    bundle: Any  # the DataBundle scored
    split: str


def score_run(
    model_or_run,
    data: str | None = None,
    *,
    split: str = "test",
    batch_size: int = 64,
    top_k: int = 5,
    output: str | os.PathLike | None = None,
    skip_bad_images: bool = False,
    data_dir: str | None = None,
) -> ScoredRun:
    """Score a run folder or ``.keras`` model and save the results (no report:
    ``cnnlab.workflows.evaluate`` adds it).

    Without ``data``, a run is scored on the ``split`` it saved (its held-out
    test images by default, or its separate test set). With ``data`` (a spec),
    every image of that source is scored, or its ``split`` if it has
    train/val/test parts. Class names are matched by name, so a test folder may
    hold a subset of classes.

    Results are written to ``<run>/evaluation-<tag>/`` (never over an earlier
    one) or to ``output``.
    """
    from cnnlab.models.saving import load_for_inference
    from cnnlab.runtime import is_artifact, load_artifact

    # An exported .tflite/.onnx/SavedModel runs in its own runtime (same interface).
    loaded = (load_artifact if is_artifact(model_or_run) else load_for_inference)(model_or_run)
    cfg = loaded.config
    if data is None and split == "test" and cfg.get("test_data"):
        data = cfg["test_data"]  # the run's separate test set
    if data is None:
        label_map, tag = None, split
        bundle = load_saved_split(
            loaded, batch_size=batch_size, skip_bad_images=skip_bad_images, data_dir=data_dir
        )
    else:
        bundle, label_map = load_test_data(
            data,
            loaded.class_names,
            split=split,
            data_dir=data_dir,
            image_size=loaded.image_size,
            channels=loaded.channels,
            batch_size=batch_size,
            resize=loaded.resize,
            skip_bad_images=skip_bad_images,
        )
        kind, value = data.split(":", 1) if ":" in data else ("data", data)
        tag = f"{kind}-{Path(value.rstrip('/')).name or 'data'}"
        tag = f"{tag}-{split}" if np.any(bundle.source.parts != "") else tag
    bundle.eval_batch_size = plan_inference(
        loaded.model,
        batch_size,
        loaded.image_size,
        loaded.channels,
        held_bytes=bundle.cached_bytes(split),
    ).batch_size
    result = score(loaded.model, bundle, split, loaded.class_names, top_k, label_map)
    if output is None:
        base = loaded.run_dir or loaded.model_path.parent
        output = unique_dir(base / f"evaluation-{tag}")
    save_evaluation(result, output)
    return ScoredRun(result, loaded, bundle, split)


def load_saved_split(
    loaded, *, batch_size: int = 64, skip_bad_images: bool = False, data_dir: str | None = None
):
    """The data of the run ``loaded`` came from, split as that run saved it (``split.csv``),
    without augmentation: what ``evaluate`` and the report score (builtin sources too).

    Raises:
        DataError: the model is not inside a run folder (there is no saved split).
    """
    from cnnlab.data import load_data
    from cnnlab.data.sources import open_source
    from cnnlab.data.splits import Split

    if loaded.run_dir is None:
        raise DataError(
            f"{loaded.model_path} is not inside a run folder, so there is no saved split to score",
            fix="Pass --data SPEC with labelled images to evaluate on",
        )
    cfg = loaded.config
    data_dir = cfg.get("data_dir") or data_dir
    source = open_source(cfg["data"], data_dir)
    saved = Split.load(loaded.run_dir / "split.csv", source)
    bundle = load_data(
        cfg["data"],
        data_dir=data_dir,
        split=saved,
        scan=False,
        image_size=loaded.image_size,
        channels=loaded.channels,
        batch_size=batch_size,
        resize=loaded.resize,
        augment="none",
        skip_bad_images=skip_bad_images,
    )
    return bundle


def load_test_data(
    data: str,
    class_names: list[str],
    *,
    image_size,
    channels: int,
    resize: str = "stretch",
    batch_size: int = 64,
    split: str = "test",
    skip_bad_images: bool = False,
    data_dir: str | None = None,
):
    """Open labelled images to score a model trained on ``class_names``.

    A plain folder or CSV is all ``split`` (every decodable image); a source
    with its own train/val/test parts keeps them. Returns the DataBundle and the
    map from its class indices to the model's (classes are matched by name, so
    a test set may hold a subset of them).

    Example:
        >>> bundle, label_map = load_test_data("folder:cifar10/test", names, image_size=(32, 32), channels=3)
    """
    from cnnlab.data import load_data
    from cnnlab.data.splits import Split

    bundle = load_data(
        data,
        image_size=image_size,
        channels=channels,
        batch_size=batch_size,
        resize=resize,
        augment="none",
        skip_bad_images=skip_bad_images,
        data_dir=data_dir,
        val_split=0.0,
        test_split=0.0,
    )
    if not np.any(bundle.source.parts != ""):
        assign = np.where(bundle.split.assignment == "skipped", "skipped", split)
        bundle.split = Split(assign)
    return bundle, _label_map(bundle.class_names, class_names, data)


def _label_map(data_classes: list[str], model_classes: list[str], spec: str) -> np.ndarray:
    if all(c in model_classes for c in data_classes):
        return np.array([model_classes.index(c) for c in data_classes])
    if model_classes == [str(i) for i in range(len(model_classes))] and len(data_classes) == len(
        model_classes
    ):
        return np.arange(len(data_classes))  # model without class names: same order assumed
    unknown = [c for c in data_classes if c not in model_classes]
    raise DataError(
        f"{spec} has class(es) the model does not know: {', '.join(unknown[:10])}",
        expected=f"class names among the model's: {', '.join(model_classes[:20])}",
        fix="Rename the class folders to match the training classes",
    )
