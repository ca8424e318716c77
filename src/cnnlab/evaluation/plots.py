"""Plots written as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

import os

import numpy as np

from cnnlab._io import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(cm, class_names, path: str | os.PathLike, normalize: bool = True,
                          title: str = "Confusion matrix") -> None:  # fmt: skip
    """Row-normalised heat map (recall on the diagonal); counts written in when ≤ 30 classes."""
    plt = _pyplot()
    cm = np.asarray(cm, dtype=np.float64)
    n = len(class_names)
    shown = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
    size = min(24, max(5, 0.35 * n + 3))
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04,
                 label="share of true class" if normalize else "count")  # fmt: skip
    ticks = np.arange(n)
    fontsize = 9 if n <= 20 else max(4, 9 - n // 20)
    ax.set_xticks(ticks, class_names, rotation=90 if n > 10 else 45, ha="right" if n <= 10 else "center",
                  fontsize=fontsize)  # fmt: skip
    ax.set_yticks(ticks, class_names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=fontsize - 1,
                            color="white" if shown[i, j] > 0.5 else "black")  # fmt: skip
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"), suffix=".png")
    plt.close(fig)
