"""What a report needs: the run folder's side files, the model, its data and its predictions.

Whatever the caller already holds (the workflow passes its model, data bundle
and test evaluation) is used as it is; the rest is loaded from the run folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cnnlab._io import read_json
from cnnlab.errors import RunError
from cnnlab.evaluation.evaluate import EvaluationResult, load_saved_split, score
from cnnlab.run_folder import RunFolder, read_history


@dataclass
class ReportInputs:
    """Everything the report is computed from."""

    run_dir: Path | None
    model: Any
    bundle: Any  # cnnlab.data.DataBundle
    evaluation: EvaluationResult
    split: str  # the split ``evaluation`` scored
    class_names: list[str]
    config: dict
    env: dict  # env.json: versions, python, devices
    data_json: dict  # data.json: split sizes, per-class counts, augmentation
    run_metrics: dict  # metrics.json: parameters, epochs, best epoch
    history: dict[str, list[float]]
    note: str | None = None  # why the report is on another split than the one asked for
    batch_size: int = 128  # the batch the report runs the model at (test-time views)


def read_side_file(run_dir: Path | None, name: str) -> Any:
    """A JSON or YAML file of the run folder; None when absent or damaged."""
    if run_dir is None or not (run_dir / name).is_file():
        return None
    try:
        if name.endswith(".json"):
            return read_json(run_dir / name)
        return yaml.safe_load((run_dir / name).read_text())
    except Exception:  # noqa: BLE001 - a damaged side file only blanks its part of the report
        return None


def load_inputs(
    run: str | os.PathLike | None,
    *,
    model=None,
    bundle=None,
    evaluation: EvaluationResult | None = None,
    split: str = "test",
    batch_size: int = 128,
) -> ReportInputs:
    """Gather a report's inputs; the model and data are loaded from ``run`` unless given.

    Without ``evaluation``, ``split`` is scored here (the validation split when
    the run has no test images).
    """
    run_dir = Path(run) if run is not None else None
    if run_dir is not None:
        RunFolder.open(run_dir)
    config = read_side_file(run_dir, "config.yaml") or {}
    if model is None or bundle is None:  # `cnnlab report`: its own memory plan
        model, bundle = _load_model_and_data(run_dir, model, bundle, batch_size)
        batch_size = _plan_memory(model, bundle, split, batch_size)
    if evaluation is not None:
        class_names = list(evaluation.class_names)
    else:
        class_names = list(read_side_file(run_dir, "classes.json") or bundle.class_names)
    note = None
    if evaluation is None:
        split, note = _split_with_images(bundle, split)
        evaluation = score(model, bundle, split, class_names, int(config.get("top_k", 5)))
    return ReportInputs(
        run_dir=run_dir,
        model=model,
        bundle=bundle,
        evaluation=evaluation,
        split=split,
        class_names=class_names,
        config=config,
        env=read_side_file(run_dir, "env.json") or {},
        data_json=read_side_file(run_dir, "data.json") or {},
        run_metrics=read_side_file(run_dir, "metrics.json") or {},
        history=read_history(run_dir / "history.csv" if run_dir else None),
        note=note,
        batch_size=int(batch_size),
    )


def _plan_memory(model, bundle, split: str, batch_size: int) -> int:
    """Log the report's estimated peak; the batch it runs the model at (smaller when the
    requested one would not fit the memory budget)."""
    from cnnlab.evaluation.memory import plan_inference

    h, w = bundle.image_size
    views = min(len(bundle.examples(split)["labels"]), 1000) * h * w * bundle.channels * 4.0
    batch = plan_inference(
        model,
        batch_size,
        bundle.image_size,
        bundle.channels,
        what="report",
        held_bytes=bundle.cached_bytes(split) + views,  # + the test-time views' images
    ).batch_size
    bundle.eval_batch_size = batch
    return batch


def _load_model_and_data(run_dir: Path | None, model, bundle, batch_size: int):
    from cnnlab.models.saving import load_for_inference

    if run_dir is None:
        raise RunError(
            "A report needs a run folder, or a model and its data",
            fix="Pass the run folder written by `cnnlab train`",
        )
    loaded = load_for_inference(run_dir)
    if model is None:
        model = loaded.model
    if bundle is None:
        bundle = load_saved_split(loaded, batch_size=batch_size)
    return model, bundle


def _split_with_images(bundle, split: str) -> tuple[str, str | None]:
    """A run trained with --test-split 0 is reported on its validation split."""
    if (
        split == "test"
        and len(bundle.examples("test")["labels"]) == 0
        and len(bundle.examples("val")["labels"])
    ):
        return "val", "This run has no test split; the report is on the validation split."
    return split, None


def model_inputs(bundle, split: str, rows: np.ndarray) -> np.ndarray:
    """The images of ``rows`` (positions within ``split``) exactly as the model takes them."""
    rows = np.asarray(rows, np.int64)
    if len(rows) == 0:
        return np.zeros((0, *bundle.image_size, bundle.channels), np.float32)
    x = np.concatenate([np.asarray(b[0]) for b in bundle.subset(split, rows)])
    if len(x) != len(rows):
        raise RunError(
            f"{len(rows) - len(x)} image(s) of the {split} split could not be read again",
            fix="Check that the data folder has not changed since training",
        )
    return x


def example_name(bundle, split: str, row: int) -> str:
    """How a user finds an example: its file, or ``<spec> #<index>`` for in-memory data."""
    ex = bundle.examples(split)
    if "paths" in ex:
        return str(ex["paths"][row])
    return f"{bundle.source.spec} #{int(ex['indices'][row])}"


def trained_with_flip(data_json: dict, bundle) -> bool:
    """Mirror images at test time only if the run trained on mirrored images."""
    aug = (data_json or {}).get("augment")
    flip = aug.get("flip") if isinstance(aug, dict) else getattr(bundle.augment, "flip", "none")
    # "alternating" (a fast recipe's deterministic flip) mirrors horizontally too.
    return str(flip) not in ("none", "None", "", "vertical", "False")
