"""Figures as PNG (matplotlib, no display needed): the one confusion-matrix plotter.

The evaluation report shows :func:`confusion_matrix_png` inline; ``evaluate``
writes the same picture to ``confusion_matrix.png`` with
:func:`plot_confusion_matrix`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cnnlab import _html as H
from cnnlab._io import atomic_write

# Up to this many classes the cells carry their numbers; beyond it they are too small.
LABELLED_CLASSES = 30


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display): every figure
    cnnlab writes is drawn through it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_png(path: str | os.PathLike, png: bytes) -> Path:
    """Write PNG bytes atomically (a crash never leaves half a picture)."""
    return atomic_write(path, lambda p: p.write_bytes(png), suffix=".png")


def row_normalised(cm) -> np.ndarray:
    """Each row of a confusion matrix (rows true) divided by its total: recall on the diagonal."""
    cm = np.asarray(cm, np.float64)
    return cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)


def _draw_matrix(ax, shown: np.ndarray, normalised: bool, many: bool):
    """The heat map itself, with a colour scale that keeps the few-error cells visible."""
    if normalised and many:
        from matplotlib.colors import PowerNorm

        # Square-root colours: with many classes, the confusions worth seeing are 1-5 %.
        return ax.imshow(shown, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=1))
    if normalised:
        return ax.imshow(shown, cmap="Blues", vmin=0, vmax=1)
    from matplotlib.colors import LogNorm, Normalize

    # A log scale keeps the few-error cells visible next to the big diagonal.
    vmax = max(float(shown.max()), 1.0) if shown.size else 1.0
    norm = LogNorm(vmin=1, vmax=vmax) if vmax > 10 else Normalize(0, vmax)
    return ax.imshow(
        np.where(shown > 0, shown, np.nan) if vmax > 10 else shown, cmap="Blues", norm=norm
    )


def _write_cells(ax, shown: np.ndarray, normalised: bool, fontsize: int) -> None:
    top = np.nanmax(shown) if shown.size else 1
    for i in range(shown.shape[0]):
        for j in range(shown.shape[1]):
            v = shown[i, j]
            if v:
                text = f"{v:.2f}".lstrip("0") if normalised else f"{int(v)}"
                colour = "white" if v > 0.55 * (1 if normalised else top) else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=fontsize - 1, color=colour)


def confusion_matrix_png(
    matrix, class_names: list[str], normalised: bool, title: str | None = None
) -> bytes:
    """A confusion-matrix heat map (rows true, columns predicted) as PNG bytes.

    ``matrix`` holds counts, or shares of the true class when ``normalised``
    (see :func:`row_normalised`). Sized so that 100 classes stay legible
    (scroll, don't shrink); up to 30 classes every cell carries its number.
    """
    plt = pyplot()
    shown = np.asarray(matrix, np.float64)
    n = len(class_names)
    many = n > LABELLED_CLASSES
    size = max(4.5, (0.16 if many else 0.32) * n + 2.2)  # inches per class
    fig, ax = plt.subplots(figsize=(size + 0.8, size))
    im = _draw_matrix(ax, shown, normalised, many)
    label = "share of the true class" if normalised else "images"
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label=label)
    fontsize = 6 if many else 8
    ticks = np.arange(n)
    ax.set_xticks(ticks, class_names, rotation=90, fontsize=fontsize)
    ax.set_yticks(ticks, class_names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    what = ("row-normalised (recall on the diagonal)" if normalised else "counts") + (
        ", square-root colours" if normalised and many else ""
    )
    ax.set_title(f"{title}: {what}" if title else what)
    if many:  # a light grid every 10 classes to find one's way across the rows
        for k in range(10, n, 10):
            ax.axhline(k - 0.5, color="#bbbbbb", lw=0.4)
            ax.axvline(k - 0.5, color="#bbbbbb", lw=0.4)
    else:
        _write_cells(ax, shown, normalised, fontsize)
    fig.tight_layout()
    return H.fig_png(fig, dpi=100 if many else 90)


def plot_confusion_matrix(
    cm,
    class_names: list[str],
    path: str | os.PathLike,
    normalize: bool = True,
    title: str = "Confusion matrix",
) -> Path:
    """Write :func:`confusion_matrix_png` of counts ``cm`` to ``path`` (row-normalised by default)."""
    shown = row_normalised(cm) if normalize else np.asarray(cm, np.float64)
    return write_png(path, confusion_matrix_png(shown, class_names, normalize, title))
