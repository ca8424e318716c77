"""The run folder: everything a run made, described well enough to repeat it.

runs/20261126-153000-simple_cnn-32/
  config.yaml        resolved config (feed it back with -c to repeat the run)
  env.json           versions, hardware, seed
  classes.json       class names, in output order
  data.json          the data summary: sizes per split and class, image size
  split.csv          which example went to which split
  bad_files.csv      undecodable files left out (only with --skip-bad-images)
  history.csv        one row per finished epoch
  checkpoints/       last.keras, best.keras, state.json
  model.keras        the final model (best validation epoch)
  metrics.json       test metrics and timings
  evaluation-test/   per-class report, confusion matrix (JSON and PNG), predictions
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from pathlib import Path

from cnnlab._io import write_text
from cnnlab.config import monitor_mode
from cnnlab.errors import RunError


class RunFolder:
    """Paths inside one run folder, and its creation rules (never overwrite unasked)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # files
    config = property(lambda self: self.path / "config.yaml")
    env = property(lambda self: self.path / "env.json")
    classes = property(lambda self: self.path / "classes.json")
    data = property(lambda self: self.path / "data.json")
    split = property(lambda self: self.path / "split.csv")
    bad_files = property(lambda self: self.path / "bad_files.csv")
    history = property(lambda self: self.path / "history.csv")
    checkpoints = property(lambda self: self.path / "checkpoints")
    state = property(lambda self: self.path / "checkpoints" / "state.json")
    model = property(lambda self: self.path / "model.keras")
    metrics = property(lambda self: self.path / "metrics.json")

    @classmethod
    def create(
        cls, output: str, model: str, image_size, name: str | None = None, overwrite: bool = False
    ) -> RunFolder:
        h, w = image_size
        size = f"{h}" if h == w else f"{h}x{w}"
        base = Path(output) / (name or f"{time.strftime('%Y%m%d-%H%M%S')}-{model}-{size}")
        path = base
        if path.exists() and any(path.iterdir()):
            if name and not overwrite:
                raise RunError(
                    f"Run folder {path} already exists",
                    fix="Choose another --name, pass --overwrite to replace it, "
                    f"or continue it with --resume {path}",
                )
            if name and overwrite:
                import shutil

                shutil.rmtree(path)
            else:  # two runs started in the same second
                i = 2
                while Path(f"{base}-{i}").exists():
                    i += 1
                path = Path(f"{base}-{i}")
        path.mkdir(parents=True, exist_ok=True)
        (path / "checkpoints").mkdir(exist_ok=True)
        return cls(path)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        expected: str = "a folder written by `cnnlab train`",
        fix: str | None = None,
    ) -> RunFolder:
        """The run folder at ``path``; a clear error when it is not one."""
        run = cls(path)
        if not run.config.is_file():
            raise RunError(
                f"{run.path} is not a cnnlab run folder (no config.yaml)",
                expected=expected,
                fix=fix,
            )
        return run

    def read_history(self) -> dict[str, list[float]]:
        return read_history(self.history)

    def write_setup(self, config: dict, bundle, seed: int) -> None:
        """Write what defines the run before it trains: config, environment, classes,
        data summary, split and skipped files."""
        from cnnlab._io import environment, write_json
        from cnnlab.config import dump_yaml

        write_text(self.config, dump_yaml(config))
        write_json(self.env, environment(seed))
        write_json(self.classes, bundle.class_names)
        write_json(self.data, {**bundle.summary(), "augment": vars(bundle.augment)})
        bundle.split.save(self.split, bundle.source)
        if bundle.bad_files:
            self.write_bad_files(bundle.bad_files)

    def truncate_history(self, epochs_done: int) -> None:
        """Drop history rows of epochs that did not finish (killed between callbacks)."""
        if not self.history.is_file():
            return
        with open(self.history, newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        kept = [rows[0]] + [r for r in rows[1:] if r and int(float(r[0])) < epochs_done]
        buf = io.StringIO()
        csv.writer(buf).writerows(kept)
        write_text(self.history, buf.getvalue())

    def write_bad_files(self, bad) -> None:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["path", "problem"])
        for b in bad:
            w.writerow([b.path, b.problem])
        write_text(self.bad_files, buf.getvalue())


def read_history(path: str | os.PathLike | None) -> dict[str, list[float]]:
    """history.csv as columns of floats, one value per finished epoch.

    Unreadable cells are NaN, so epochs stay aligned across columns; columns with no
    number at all (files written before ``HistoryCSV`` hold "NA" val_* columns without validation) are
    dropped. A missing file gives ``{}``.
    """
    if path is None or not Path(path).is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, list[float]] = {}
    for key in rows[0] if rows else {}:
        vals = []
        for r in rows:
            try:
                vals.append(float(r[key]))
            except (TypeError, ValueError):
                vals.append(float("nan"))
        if not all(math.isnan(v) for v in vals):
            out[key] = vals
    return out


def best_in_history(
    path: str | os.PathLike | None, monitor: str, first_epoch: int = 0
) -> tuple[int | None, float | None]:
    """The best epoch (1-based) and value of ``monitor`` from epoch ``first_epoch`` (0-based)
    on: the lowest for a loss, else the highest; ``(None, None)`` when none was logged.

    Example:
        >>> best_in_history("runs/x/history.csv", "val_accuracy", first_epoch=4)
        (6, 0.91)
    """
    history = read_history(path)
    epochs = history.get("epoch", [])
    pairs = [
        (int(e) + 1, v)
        for e, v in zip(epochs, history.get(monitor, []))
        if e >= first_epoch and not math.isnan(v)
    ]
    if not pairs:
        return None, None
    pick = min if monitor_mode(monitor) == "min" else max
    return pick(pairs, key=lambda pair: pair[1])
