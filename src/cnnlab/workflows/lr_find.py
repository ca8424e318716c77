"""``lr_find``: an exponential learning-rate sweep that plots loss against rate and suggests one.

The sweep itself (``cnnlab.training.lr_finder.range_test``) trains for
``num_steps`` batches while the rate grows geometrically from
``start_learning_rate`` to ``end_learning_rate``; the suggestion is the rate at the minimum of the smoothed loss
divided by 10. The model is built fresh and thrown away: nothing is trained
for real.

For a pretrained backbone the sweep covers stage 1 of ``fine_tune`` (the new
head on the frozen backbone, on features computed once; ``stage="head"``), or
every trainable layer with ``stage="full"``. Other models always sweep the
whole model.

Writes ``lr_find.csv`` (rate, loss, smoothed loss), ``lr_find.png`` and
``lr_find.json`` (the suggestion and the settings) into
``<output>/<timestamp>-lr-find-<model>-<size>/``.

Example:
    >>> result = cnnlab.lr_find(data="folder:flowers", model="mobilenet", image_size=128)
    >>> result.suggestion
    0.0025...
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab._io import atomic_write, write_json, write_text
from cnnlab.errors import ConfigError
from cnnlab.training.lr_finder import check_sweep, range_test, smooth, suggest_learning_rate
from cnnlab.workflows.skeleton import data_from_config, setup_logging

log = logging.getLogger("cnnlab")

__all__ = ["LRFindResult", "lr_find", "suggest_learning_rate"]


@dataclass
class LRFindResult:
    """The sweep: rates tried, losses seen, the suggested rate and where the files are."""

    learning_rates: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float | None
    steepest: float | None
    min_loss_lr: float | None
    stage: str
    output_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def plot(self) -> Path | None:
        return self.files.get("plot")


def lr_find(
    config=None,
    *,
    start_learning_rate: float = 1e-7,
    end_learning_rate: float = 1.0,
    num_steps: int = 100,
    stage: str = "auto",
    output_dir: str | Path | None = None,
    **overrides: Any,
) -> LRFindResult:
    """Sweep the learning rate exponentially and suggest one.

    Args:
        config: a training config (object, dict or YAML path), as for ``train``.
        start_learning_rate, end_learning_rate: the range swept (geometrically);
            ``start_lr`` and ``end_lr`` are their deprecated names.
        num_steps: batches in the sweep (the training split repeats if needed).
        stage: ``head`` (pretrained backbones: frozen backbone, as in stage 1 of
            ``fine_tune``), ``full`` (every trainable layer), or ``auto``
            (``head`` for pretrained backbones, else ``full``).
        output_dir: the folder for the CSV, PNG and JSON
            [``<output>/<timestamp>-lr-find-<model>-<size>``, ``output`` being the
            config's parent folder of runs].
        **overrides: training keys (``data``, ``model``, ``weights``, ``image_size``,
            ``batch_size``, ``optimizer``...). Pretrained backbones default to
            ``weights="imagenet"`` here, as in ``fine_tune``.

    Returns:
        An :class:`LRFindResult` with the suggestion and the plot's path.

    Example:
        >>> r = cnnlab.lr_find(data="builtin:digits", model="simple_cnn", num_steps=60)
        >>> r.suggestion, r.plot
    """
    import keras

    start_lr, end_lr = _sweep_range(start_learning_rate, end_learning_rate, overrides)
    check_sweep(start_lr, end_lr, num_steps, stage)
    cfg, spec = _resolve(config, overrides)
    setup_logging(cfg.verbose)
    keras.utils.set_random_seed(cfg.seed)
    stage = ("head" if spec.pretrained else "full") if stage == "auto" else stage
    if stage == "head" and not spec.pretrained:
        raise ConfigError(
            f"stage='head' needs a pretrained backbone; {spec.name} is not one",
            fix="Use --stage full",
        )
    image_size = cfg.image_size or (spec.default_image_size if spec.pretrained else None)
    bundle = data_from_config(cfg, image_size=image_size)
    fit_model, data = _sweep_target(spec, cfg, bundle, stage)
    lrs, losses = range_test(fit_model, data, cfg, start_lr, end_lr, num_steps)
    smoothed = smooth(losses)
    suggestion, steepest, min_lr = suggest_learning_rate(lrs, smoothed)
    result = LRFindResult(lrs, losses, smoothed, suggestion, steepest, min_lr, stage)
    _write_files(result, cfg, spec, bundle, output_dir, (start_lr, end_lr))
    _log_suggestion(result)
    return result


def _log_suggestion(result: LRFindResult) -> None:
    if result.suggestion:
        log.info(
            "Suggested learning rate %.3g (min loss at %.3g, steepest at %s); plot %s",
            result.suggestion,
            result.min_loss_lr,
            f"{result.steepest:.3g}" if result.steepest else "n/a",
            result.plot,
        )
    else:
        log.warning("The sweep was too short to suggest a rate; see %s", result.plot)


def _sweep_range(start: float, end: float, overrides: dict[str, Any]) -> tuple[float, float]:
    """The swept range, taking the deprecated ``start_lr``/``end_lr`` (with a warning) out of
    ``overrides``."""
    from cnnlab.config import normalise_keys

    old = {k: overrides.pop(k) for k in ("start_lr", "end_lr") if k in overrides}
    names = ("start_learning_rate", "end_learning_rate")
    given = normalise_keys(old, "the arguments", names, "lr-find")
    return float(given.get(names[0], start)), float(given.get(names[1], end))


def _resolve(config, overrides: dict[str, Any]):
    """The config (fine-tuning defaults unless the model is a scratch one) and model spec."""
    from cnnlab.config import resolve_config
    from cnnlab.models import get_spec
    from cnnlab.training.finetune import refuse_train_only_options, resolve_finetune_config

    model_name = overrides.get("model") or (
        config.get("model") if isinstance(config, dict) else None
    )
    spec = get_spec(model_name) if model_name else None
    if spec is not None and not spec.pretrained:
        cfg = resolve_config(config, overrides)  # scratch models: no fine-tuning defaults
    else:
        cfg, _ = resolve_finetune_config(config, overrides, command="lr-find")
    refuse_train_only_options(cfg, "lr-find")
    return cfg, get_spec(cfg.model)


def _sweep_target(spec, cfg, bundle, stage: str):
    """The model the sweep trains and its data: the head on features, or the whole model."""
    from cnnlab.models import create_model
    from cnnlab.training.finetune import (
        extract_features,
        feature_dataset,
        freeze_for_stage,
        head_model,
        train_dataset,
    )
    from cnnlab.training.fit import model_options
    from cnnlab.training.memory import plan_whole_batches

    options = model_options(spec, cfg, bundle)
    model = create_model(
        spec.name, bundle.num_classes, bundle.image_size, bundle.channels, **options
    )
    # The head's sweep trains on features: the backbone only runs as in inference.
    plan_whole_batches(model, cfg, bundle, [] if stage == "head" else None)
    if stage == "head":
        freeze_for_stage(model, 1)
        feats, labels = extract_features(model, bundle.dataset("train", training=False))
        data = feature_dataset(feats, labels, cfg.batch_size, cfg.seed, shuffle=True)
        log.info("LR sweep of the head on frozen %s features (%d images)", spec.name, len(labels))
        return head_model(model), data
    log.info("LR sweep of every trainable layer of %s", spec.name)
    return model, train_dataset(bundle, augment=False)


def _write_files(result: LRFindResult, cfg, spec, bundle, output_dir, lr_range) -> None:
    """``lr_find.csv``, ``lr_find.png`` and ``lr_find.json`` into the output folder."""
    h, w = bundle.image_size
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = (
        Path(output_dir) if output_dir else Path(cfg.runs_dir) / f"{stamp}-lr-find-{spec.name}-{h}"
    )
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["learning_rate", "loss", "smoothed_loss"])
    rows = zip(result.learning_rates, result.losses, result.smoothed)
    writer.writerows([f"{a:.6g}", f"{b:.6f}", f"{c:.6f}"] for a, b, c in rows)
    files = {"csv": out / "lr_find.csv", "plot": out / "lr_find.png", "json": out / "lr_find.json"}
    write_text(files["csv"], buf.getvalue())
    title = f"{spec.name} ({result.stage}), {cfg.optimizer}, batch {cfg.batch_size}"
    _plot(result, files["plot"], title)
    settings = {
        "suggestion": result.suggestion,
        "steepest": result.steepest,
        "min_loss_lr": result.min_loss_lr,
        "stage": result.stage,
        "model": spec.name,
        "data": cfg.data,
        "optimizer": cfg.optimizer,
        "batch_size": cfg.batch_size,
        "start_learning_rate": lr_range[0],
        "end_learning_rate": lr_range[1],
        "steps_run": len(result.learning_rates),
        "image_size": [h, w],
    }
    write_json(files["json"], settings)
    result.output_dir, result.files = out, files


def _plot(result: LRFindResult, path: Path, title: str) -> None:
    from cnnlab.evaluation.plots import pyplot

    lrs, smoothed, suggestion = result.learning_rates, result.smoothed, result.suggestion
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(lrs, result.losses, color="0.75", linewidth=0.8, label="loss per batch")
    ax.plot(lrs, smoothed, color="C0", linewidth=1.8, label="smoothed")
    if suggestion:
        ax.axvline(suggestion, color="C3", linestyle="--", label=f"suggested {suggestion:.2g}")
    ax.set_xscale("log")
    finite = [v for v in smoothed if math.isfinite(v)]
    if finite:  # keep the blow-up at the end from flattening the interesting part
        lo, hi = min(finite), finite[0]
        ax.set_ylim(lo - 0.1 * (hi - lo + 1e-9), max(hi, lo) + 0.6 * (hi - lo + 1e-9))
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"), suffix=".png")
    plt.close(fig)
