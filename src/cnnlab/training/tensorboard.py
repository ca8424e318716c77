"""TensorBoard event files for every run: ``tensorboard --logdir runs/`` shows them.

    <run>/tensorboard/train/       epoch_loss, epoch_accuracy, epoch_top5, epoch_learning_rate,
                                   epoch_images_per_second, epoch_seconds
    <run>/tensorboard/validation/  epoch_loss, epoch_accuracy, epoch_top5 (the val_* logs)
                                   and the validation confusion matrix as an image at the end

The tags follow Keras' own TensorBoard callback (train and validation curves of
one metric share a chart), but the values are the epoch logs after cnnlab's
callbacks added the learning rate and throughput, and nothing else is written
(no graph, no histograms, no profile), so the files stay small.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import keras
import numpy as np

from cnnlab.models.inference import predict_batch

log = logging.getLogger("cnnlab")

TRAIN, VALIDATION = "train", "validation"


def tensorboard_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "tensorboard"


def confusion_png(matrix: np.ndarray, class_names: list[str], title: str) -> bytes:
    """The confusion matrix (rows: true class, columns: predicted) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    side = min(12.0, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(matrix, cmap="Blues")
    ticks = range(n)
    ax.set_xticks(ticks, [str(c)[:12] for c in class_names], rotation=90, fontsize=8)
    ax.set_yticks(ticks, [str(c)[:12] for c in class_names], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    if n <= 20:
        top = matrix.max() if matrix.size else 0
        for i in range(n):
            for j in range(n):
                colour = "white" if matrix[i, j] > top / 2 else "black"
                ax.text(
                    j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=7, color=colour
                )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def log_confusion_matrix(
    log_dir: str | Path,
    matrix,
    class_names: list[str],
    step: int,
    tag: str = "confusion_matrix",
    title: str = "",
) -> None:
    """Write ``matrix`` as an image summary into the event files of ``log_dir``."""
    import tensorflow as tf

    png = confusion_png(np.asarray(matrix), list(class_names), title or tag)
    image = tf.expand_dims(tf.io.decode_png(png, channels=3), 0)
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default():
        tf.summary.image(tag, image, step=step)
    writer.flush()
    writer.close()


class TensorBoardLogger(keras.callbacks.Callback):
    """Per-epoch scalars into ``<run>/tensorboard/{train,validation}``, and the validation
    confusion matrix as an image when fitting ends.

    Place it after ``EpochStats`` so the learning rate and images/s are in the logs.

    Args:
        run_dir: the run folder.
        val_data: the validation pipeline (images, one-hot labels) for the confusion
            matrix; None skips it.
        class_names: names of the classes, in output order.
    """

    def __init__(self, run_dir: str | Path, val_data=None, class_names=None):
        super().__init__()
        self.dir = tensorboard_dir(run_dir)
        self.val_data = val_data
        self.class_names = list(class_names or [])
        self._writers: dict[str, object] = {}
        self._last_epoch: int | None = None

    def _writer(self, name: str):
        import tensorflow as tf

        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(str(self.dir / name))
        return self._writers[name]

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        by_writer: dict[str, dict[str, float]] = {TRAIN: {}, VALIDATION: {}}
        for key, value in (logs or {}).items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if math.isnan(number):
                continue
            if key.startswith("val_"):
                by_writer[VALIDATION][f"epoch_{key[4:]}"] = number
            elif key == "epoch_seconds":
                by_writer[TRAIN][key] = number
            else:
                by_writer[TRAIN][f"epoch_{key}"] = number
        for name, scalars in by_writer.items():
            if not scalars:
                continue
            writer = self._writer(name)
            with writer.as_default():
                for tag, number in scalars.items():
                    tf.summary.scalar(tag, number, step=epoch)
            writer.flush()
        self._last_epoch = epoch

    def on_train_end(self, logs=None):
        try:
            if self.val_data is not None and self.class_names and self._last_epoch is not None:
                matrix = self._confusion()
                if matrix is not None:
                    log_confusion_matrix(
                        self.dir / VALIDATION,
                        matrix,
                        self.class_names,
                        self._last_epoch,
                        "confusion_matrix",
                        f"validation, after epoch {self._last_epoch + 1}",
                    )
        except Exception as e:  # noqa: BLE001 - the curves are written; a picture must not fail a run
            log.warning(
                "TensorBoard: the confusion matrix could not be logged (%s: %s)",
                type(e).__name__,
                e,
            )
        finally:
            for writer in self._writers.values():
                writer.close()
            self._writers = {}

    def _confusion(self) -> np.ndarray | None:
        n = len(self.class_names)
        matrix = np.zeros((n, n), np.int64)
        for batch in self.val_data:
            x, y = batch[0], batch[1]
            expected = tuple(self.model.inputs[0].shape[1:]) if self.model.inputs else None
            if expected is not None and tuple(x.shape[1:]) != expected:
                return None  # a model fitted on features (fine-tuning's stage 1), not images
            probs = predict_batch(self.model, x)  # compiled: an eager call holds every layer
            if probs.ndim != 2 or probs.shape[-1] != n:
                return None  # a model that does not output class scores (a feature head)
            true = np.asarray(y).argmax(-1) if np.asarray(y).ndim == 2 else np.asarray(y)
            np.add.at(matrix, (true.astype(np.int64), probs.argmax(-1)), 1)
        return matrix
