"""Saving and loading models and the run artifacts that travel with them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cnnlab._io import atomic_write, read_json
from cnnlab.errors import ModelError, RunError
from cnnlab.run_folder import RunFolder


def save_model(model, path: str | os.PathLike) -> Path:
    """Save a Keras model to ``.keras`` atomically (never half a file on disk)."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ModelError(f"Cannot save a model as {path}", expected="a path ending in .keras")
    return atomic_write(path, model.save, suffix=".keras")


def load_model(path: str | os.PathLike):
    """Load a ``.keras`` model saved by cnnlab (its custom layers, schedules and optimizer
    included); imports ``cnnlab.nn`` only, never training code."""
    import keras

    # Registers cnnlab's serialisable layers (the pretrained families' preprocessing too),
    # schedules and optimizers with Keras: all a .keras file may need (no training code).
    import cnnlab.nn  # noqa: F401

    path = Path(path)
    if not path.is_file():
        raise ModelError(
            f"Model file {path} does not exist",
            expected="a .keras file or a run folder holding model.keras",
            fix="Check the path; run folders are under runs/ by default",
        )
    try:
        return keras.saving.load_model(path, compile=True)
    except Exception as e:  # noqa: BLE001 - any reason a file is not a loadable model
        raise ModelError(
            f"{path} cannot be loaded as a Keras model ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''})",
            expected="a .keras file written by cnnlab or keras.Model.save",
            fix="Check the file is complete; an .h5 from Keras 2 must be re-saved as .keras",
        ) from None


@dataclass
class LoadedModel:
    """A model with what is needed to feed it and read its output."""

    model: Any
    class_names: list[str]
    config: dict[str, Any]
    run_dir: Path | None
    model_path: Path

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(int(v) for v in self.model.input_shape[1:3])

    @property
    def channels(self) -> int:
        return int(self.model.input_shape[-1])

    @property
    def resize(self) -> str:
        return self.config.get("resize", "stretch")


def find_run_dir(path: Path) -> Path | None:
    """The run folder a model file belongs to (its folder or the one above), if any."""
    for cand in (path if path.is_dir() else path.parent, path.parent.parent):
        if (cand / "config.yaml").is_file() and (cand / "classes.json").is_file():
            return cand
    return None


def load_for_inference(model_or_run: str | os.PathLike, which: str = "model") -> LoadedModel:
    """Load a model from a run folder or a ``.keras`` file, with its class names and config."""
    path = Path(model_or_run)
    if path.is_dir():
        RunFolder.open(path, expected="a folder written by `cnnlab train`, or a .keras file")
        model_path = path / f"{which}.keras"
        if not model_path.is_file():
            fallback = path / "checkpoints" / "best.keras"
            if which == "model" and fallback.is_file():
                model_path = fallback
            else:
                raise RunError(
                    f"Run folder {path} has no {which}.keras: the run did not finish",
                    fix=f"Finish it with `cnnlab train --resume {path}`",
                )
    else:
        model_path = path
    run_dir = find_run_dir(model_path)
    model = load_model(model_path)
    class_names: list[str] | None = None
    config: dict[str, Any] = {}
    if run_dir is not None:
        class_names = read_json(run_dir / "classes.json")
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    elif (model_path.parent / "classes.json").is_file():
        class_names = read_json(model_path.parent / "classes.json")
    n_out = int(model.output_shape[-1])
    if class_names is None or len(class_names) != n_out:
        class_names = [str(i) for i in range(n_out)]
    return LoadedModel(model, list(class_names), config, run_dir, model_path)
