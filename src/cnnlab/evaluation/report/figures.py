"""The report's pictures, as PNG bytes: learning curves, the confusion matrices, the
reliability diagram, thumbnails of examples and Grad-CAM overlays."""

from __future__ import annotations

import numpy as np

from cnnlab import _html as H
from cnnlab.evaluation.calibration import reliability_png
from cnnlab.evaluation.gradcam import overlay
from cnnlab.evaluation.plots import confusion_matrix_png, pyplot

TRAIN_COLOUR, VAL_COLOUR = "#4c78a8", "#f58518"


def curves_png(history: dict[str, list[float]]) -> bytes | None:
    """Loss, accuracy (and learning rate) per epoch, train and validation; None without history."""
    if not history or "loss" not in history:
        return None
    plt = pyplot()
    epochs = np.arange(1, len(history["loss"]) + 1)
    panels = [("loss", "loss"), ("accuracy", "accuracy")]
    if "learning_rate" in history:
        panels.append(("learning_rate", "learning rate"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.3))
    for ax, (key, label) in zip(np.atleast_1d(axes), panels):
        _curve_panel(ax, history, epochs, key, label)
    fig.tight_layout()
    return H.fig_png(fig)


def _curve_panel(ax, history: dict, epochs: np.ndarray, key: str, label: str) -> None:
    marker = "o" if len(epochs) <= 30 else None
    if key in history:
        train_label = "train" if key != "learning_rate" else None
        ax.plot(epochs, history[key], marker=marker, ms=3, label=train_label, color=TRAIN_COLOUR)
    if f"val_{key}" in history:
        ax.plot(
            epochs, history[f"val_{key}"], marker=marker, ms=3, label="validation", color=VAL_COLOUR
        )
    ax.set_title(label)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    if key == "learning_rate":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    elif ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    if len(epochs) <= 20:
        ax.set_xticks(epochs)
    else:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def confusion_pngs(cm: np.ndarray, norm: np.ndarray, class_names: list[str]):
    """The confusion matrix as counts and row-normalised: ``(counts PNG, normalised PNG)``."""
    counts = confusion_matrix_png(cm.astype(np.float64), class_names, normalised=False)
    return counts, confusion_matrix_png(norm, class_names, normalised=True)


def reliability_diagram(calibration: dict, split: str, num_examples: int) -> bytes | None:
    """Reliability before (bars) and after temperature scaling (line); None without examples."""
    if not num_examples:
        return None
    scaled = calibration["temperature"]
    return reliability_png(
        calibration["bins"],
        f"Reliability on {split} ({calibration['n_bins']} bins)",
        scaled["bins"] if scaled else None,
    )


def thumbnails(bundle, split: str, rows: np.ndarray, max_side: int = 160) -> list[bytes | None]:
    """PNG thumbnails as users know the images: the file itself, or the in-memory array."""
    ex = bundle.examples(split)
    if "paths" in ex:
        return [H.file_png(str(ex["paths"][r]), max_side) for r in rows]
    if "images" in ex:
        return [H.array_png(ex["images"][r], max_side) for r in rows]
    # tfrecord: the images stay in the shards; read these rows back as the pipeline decodes them
    rows = np.asarray(rows, np.int64)
    images = [np.asarray(x) for x, _ in bundle.subset(split, rows, batch_size=64)]
    if not images:
        return []
    pixels = np.clip(np.concatenate(images), 0, 255).astype(np.uint8)
    return [H.array_png(p, max_side) for p in pixels]


def gradcam_pngs(image: np.ndarray, map_pred: np.ndarray, map_true: np.ndarray | None):
    """The input, its heat map for the predicted class and, for a mistake, for the true class."""
    pngs = [H.array_png(image), H.array_png(overlay(image, map_pred))]
    if map_true is not None:
        pngs.append(H.array_png(overlay(image, map_true)))
    return pngs
