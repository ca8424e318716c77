"""``lr_find``: an exponential learning-rate sweep that plots loss against rate and suggests one.

The model trains for ``num_steps`` batches while the rate grows geometrically
from ``start_lr`` to ``end_lr`` (Smith 2015, as in fastai's ``lr_find``); the
sweep stops early once the smoothed loss exceeds 4x its minimum. The
suggestion is the rate at the minimum of the smoothed loss divided by 10, a
conservative point on the descending slope; the steepest-descent rate is
reported too. The model is built fresh and thrown away: nothing is trained
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

import numpy as np

from cnnlab._io import atomic_write, write_json, write_text
from cnnlab.errors import ConfigError

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


def _smooth(losses: list[float], beta: float = 0.98) -> list[float]:
    """Exponential moving average with bias correction (fastai's smoothing)."""
    out, avg = [], 0.0
    for i, value in enumerate(losses, start=1):
        avg = beta * avg + (1 - beta) * value
        out.append(avg / (1 - beta**i))
    return out


def suggest_learning_rate(lrs: list[float], smoothed: list[float]) -> tuple[float | None, ...]:
    """``(suggestion, steepest, min_loss_lr)`` from a sweep.

    The suggestion is the rate of the lowest smoothed loss / 10; ``steepest`` is
    where the smoothed loss falls fastest per decade before that minimum.

    Example:
        >>> suggest_learning_rate([1e-4, 1e-3, 1e-2, 1e-1], [2.0, 1.5, 1.0, 3.0])
        (0.001, 0.001, 0.01)
    """
    finite = [i for i, v in enumerate(smoothed) if math.isfinite(v)]
    if len(finite) < 3:
        return None, None, None
    i_min = min(finite, key=lambda i: smoothed[i])
    min_lr = lrs[i_min]
    steepest = None
    if i_min >= 2:
        log_lr = np.log10(np.asarray(lrs[: i_min + 1]))
        grads = np.gradient(np.asarray(smoothed[: i_min + 1]), log_lr)
        steepest = float(lrs[int(np.argmin(grads))])
    return float(min_lr / 10), steepest, float(min_lr)


def _optimizer(name: str, lr: float, weight_decay: float, momentum: float, nesterov: bool):
    import keras

    wd = weight_decay or None
    if name == "adam":
        return keras.optimizers.Adam(lr, weight_decay=wd)
    if name == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=weight_decay or 0.01)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(lr, weight_decay=wd)
    return keras.optimizers.SGD(lr, momentum=momentum, nesterov=nesterov, weight_decay=wd)


def _plot(lrs, losses, smoothed, suggestion, path: Path, title: str) -> None:
    from cnnlab.evaluation.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(lrs, losses, color="0.75", linewidth=0.8, label="loss per batch")
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


def lr_find(
    config=None,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 1.0,
    num_steps: int = 100,
    stage: str = "auto",
    output_dir: str | Path | None = None,
    **overrides: Any,
) -> LRFindResult:
    """Sweep the learning rate exponentially and suggest one.

    Args:
        config: a training config (object, dict or YAML path), as for ``train``.
        start_lr, end_lr: the range swept (geometrically).
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

    from cnnlab.models import create_model, get_spec
    from cnnlab.training.finetune import (
        _extract_features,
        _feature_dataset,
        _train_dataset,
        freeze_for_stage,
        head_model,
        resolve_finetune_config,
    )
    from cnnlab.training.trainer import _setup_logging, data_from_config

    if not (0 < start_lr < end_lr):
        raise ConfigError(
            f"Bad learning-rate range: received {start_lr} to {end_lr}",
            expected="0 < start_lr < end_lr, e.g. 1e-7 to 1",
        )
    if num_steps < 5:
        raise ConfigError(
            f"Bad num_steps: received {num_steps}", expected="at least 5 (100 is typical)"
        )
    if stage not in ("auto", "head", "full"):
        raise ConfigError(f"Bad stage: received {stage!r}", expected="auto, head or full")
    model_name = overrides.get("model") or (
        config.get("model") if isinstance(config, dict) else None
    )
    spec = get_spec(model_name) if model_name else None
    if spec is not None and not spec.pretrained:
        # Scratch models: the plain training config, no fine-tuning defaults.
        from cnnlab.config import resolve_config

        cfg = resolve_config(config, overrides)
    else:
        cfg, _ = resolve_finetune_config(config, overrides)
    _setup_logging(cfg.verbose)
    keras.utils.set_random_seed(cfg.seed)
    spec = get_spec(cfg.model)
    stage = ("head" if spec.pretrained else "full") if stage == "auto" else stage
    if stage == "head" and not spec.pretrained:
        raise ConfigError(
            f"stage='head' needs a pretrained backbone; {spec.name} is not one",
            fix="Use --stage full",
        )

    bundle = data_from_config(
        cfg, image_size=cfg.image_size or (spec.default_image_size if spec.pretrained else None)
    )
    options = dict(cfg.model_kwargs)
    accepted = spec.options()
    if "weights" in accepted:
        w = cfg.weights
        options["weights"] = None if str(w).lower() in ("none", "") else w
    if "mean" in accepted and "mean" not in options:
        from cnnlab.training.trainer import input_statistics

        options["mean"], options["std"] = input_statistics(bundle)
    model = create_model(
        spec.name, bundle.num_classes, bundle.image_size, bundle.channels, **options
    )

    if stage == "head":
        freeze_for_stage(model, 1)
        feats, labels = _extract_features(model, bundle.dataset("train", training=False))
        data = _feature_dataset(feats, labels, cfg.batch_size, cfg.seed, shuffle=True)
        fit_model = head_model(model)
        log.info("LR sweep of the head on frozen %s features (%d images)", spec.name, len(labels))
    else:
        data = _train_dataset(bundle, augment=False)
        fit_model = model
        log.info("LR sweep of every trainable layer of %s", spec.name)

    opt = _optimizer(cfg.optimizer, start_lr, cfg.weight_decay, cfg.momentum, cfg.nesterov)
    fit_model.compile(
        optimizer=opt,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
    )
    lrs, losses = [], []
    factor = (end_lr / start_lr) ** (1 / (num_steps - 1))
    best = math.inf
    batches = iter(data.repeat())
    for i in range(num_steps):
        lr = start_lr * factor**i
        fit_model.optimizer.learning_rate = lr
        batch = next(batches)
        loss = float(fit_model.train_on_batch(batch[0], batch[1]))
        lrs.append(lr)
        losses.append(loss)
        smoothed_now = _smooth(losses)[-1]
        if not math.isfinite(loss):
            break
        best = min(best, smoothed_now)
        if i >= 10 and smoothed_now > 4 * best:
            break
    smoothed = _smooth(losses)
    suggestion, steepest, min_lr = suggest_learning_rate(lrs, smoothed)

    h, w = bundle.image_size
    out = (
        Path(output_dir)
        if output_dir
        else (Path(cfg.output) / f"{time.strftime('%Y%m%d-%H%M%S')}-lr-find-{spec.name}-{h}")
    )
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["learning_rate", "loss", "smoothed_loss"])
    writer.writerows([f"{a:.6g}", f"{b:.6f}", f"{c:.6f}"] for a, b, c in zip(lrs, losses, smoothed))
    files = {"csv": out / "lr_find.csv", "plot": out / "lr_find.png", "json": out / "lr_find.json"}
    write_text(files["csv"], buf.getvalue())
    _plot(
        lrs,
        losses,
        smoothed,
        suggestion,
        files["plot"],
        f"{spec.name} ({stage}), {cfg.optimizer}, batch {cfg.batch_size}",
    )
    write_json(
        files["json"],
        {
            "suggestion": suggestion,
            "steepest": steepest,
            "min_loss_lr": min_lr,
            "stage": stage,
            "model": spec.name,
            "data": cfg.data,
            "optimizer": cfg.optimizer,
            "batch_size": cfg.batch_size,
            "start_lr": start_lr,
            "end_lr": end_lr,
            "steps_run": len(lrs),
            "image_size": [h, w],
        },
    )
    if suggestion:
        log.info(
            "Suggested learning rate %.3g (min loss at %.3g, steepest at %s); plot %s",
            suggestion,
            min_lr,
            f"{steepest:.3g}" if steepest else "n/a",
            files["plot"],
        )
    else:
        log.warning("The sweep was too short to suggest a rate; see %s", files["plot"])
    return LRFindResult(lrs, losses, smoothed, suggestion, steepest, min_lr, stage, out, files)
