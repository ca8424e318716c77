"""The training configuration: one dataclass, read from YAML, overridden by flags.

Keys are the CLI flag names with underscores (``--batch-size`` is ``batch_size``;
dashes are accepted in YAML too). The fully resolved config is written into
every run folder, so ``cnnlab train -c runs/<run>/config.yaml`` repeats a run.

This module is cnnlab's one vocabulary: long names are canonical, :data:`ALIASES`
are short spellings accepted everywhere, and :data:`DEPRECATED_KEYS` /
:data:`DEPRECATED_MODEL_OPTIONS` are old names accepted for one more release with
a warning that names the new key. :func:`normalise_keys` (and
:func:`normalise_model_options` for ``model_kwargs``) is where they are resolved.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cnnlab.errors import ConfigError, close_matches

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "muon")
# "linear" is the fast recipe's (airbench): warm-up from 0.2x, then linear decay to 0.07x.
SCHEDULES = ("constant", "cosine", "step", "onecycle", "linear")
RECIPES = ("auto", "fast", "plain")  # see cnnlab.training.recipes
AUGMENT_POLICIES = ("auto", "none", "light", "standard", "strong")
RESIZE_MODES = ("stretch", "crop", "pad")
STRATEGIES = ("default", "mirrored", "multiworker")  # see cnnlab.training.distribute
PRECISIONS = ("auto", "float32", "mixed_bfloat16")  # see cnnlab.models.precision


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults give a sound first run."""

    # data
    data: str = "builtin:digits"
    data_dir: str | None = None
    image_size: list[int] | None = None
    channels: int | None = None
    resize: str = "stretch"
    val_split: float = 0.1
    test_split: float = 0.1
    # a separate labelled test set scored after training (a spec, or "none");
    # default: the test/ folder beside a folder:.../train, if there is one
    test_data: str | None = None
    skip_bad_images: bool = False
    cache: str = "auto"
    # augmentation (training split only)
    augment: str = "auto"
    flip: str | None = None
    rotation: float | None = None
    zoom: float | None = None
    translation: float | None = None
    contrast: float | None = None
    random_crop: int | None = None
    # progressive resizing: this fraction of the epochs (the first ones) trains at a
    # lower resolution, the side growing from 1/2 to 3/4 of the image's, a quarter to
    # a half of the compute per image (models with a TrainingResize layer: airbench);
    # 0 trains every epoch at full size
    progressive_resize: float = 0.0
    # recipe: defaults for the keys not given (auto = fast for 20-40 px images)
    recipe: str = "auto"
    # model
    model: str = "simple_cnn"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    # optimisation
    batch_size: int = 64
    # each batch computed as batch_size / micro_batch_size micro-batches whose gradients
    # are accumulated into one optimizer step (None: the whole batch, unless the memory
    # budget needs micro-batches; see cnnlab.training.memory)
    micro_batch_size: int | None = None
    # peak memory the run may plan for: "4GB", "3.5GiB", "none" (no budget); None:
    # $CNNLAB_MEMORY_BUDGET, else 60% of the memory available, within 2-4 GB
    memory_budget: str | None = None
    epochs: int = 20
    optimizer: str = "adam"
    learning_rate: float | None = None
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = True
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    step_epochs: list[int] | None = None
    step_gamma: float = 0.1
    label_smoothing: float = 0.0
    class_weight: str = "none"
    early_stopping: int = 0
    monitor: str = "val_accuracy"
    top_k: int = 5
    # reproducibility and devices
    seed: int = 42
    deterministic: bool = False
    strategy: str = "default"
    # the Keras dtype policy training computes in: float32, mixed_bfloat16, or auto
    # (mixed_bfloat16 where the hardware has bfloat16 units); the saved model is float32
    precision: str = "float32"
    # checkpoints (last/best.keras, state.json) go here instead of <run>/checkpoints: a
    # folder every worker of a multi-worker cluster can reach
    backup_dir: str | None = None
    # output: run folders are made inside runs_dir
    runs_dir: str = "runs"
    name: str | None = None
    overwrite: bool = False
    verbose: int = 1
    # TensorBoard event files in <run>/tensorboard/ (tensorboard --logdir runs/)
    tensorboard: bool = True

    # ------------------------------------------------------------------ helpers
    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **overrides: Any) -> TrainConfig:
        return resolve_config(self.to_dict(), overrides)

    @property
    def output(self) -> str:
        """Deprecated name of :attr:`runs_dir` (the parent folder of run folders)."""
        _deprecated("output", "runs_dir", "TrainConfig", what="attribute")
        return self.runs_dir


# timm-style short names, accepted in YAML and Python as in the CLI.
ALIASES = {
    "lr": "learning_rate",
    "opt": "optimizer",
    "sched": "schedule",
    "smoothing": "label_smoothing",
}

# Old names, accepted until the next release with a warning naming the new key.
DEPRECATED_KEYS = {
    "output": "runs_dir",  # train/finetune/lr-find: the parent folder of run folders
    "stage2_lr": "stage2_learning_rate",  # finetune
    "start_lr": "start_learning_rate",  # lr-find
    "end_lr": "end_learning_rate",  # lr-find
}

# Model options renamed so that ``width`` is a multiplier in every model:
# {model-name pattern: {old option: new option}}.
DEPRECATED_MODEL_OPTIONS = {
    r"resnet(9|20|32|44|56|110)": {"width": "filters"},  # a filter count, not a multiplier
    r"vgg\d+_bn": {"width_mult": "width"},
}


class CnnlabDeprecationWarning(FutureWarning):
    """An old key or option name was used; the message names the new one.

    A ``FutureWarning`` so that Python shows it to users by default; the CLI prints
    it as one line (``cnnlab: warning: ...``).
    """


def monitor_mode(metric: str) -> str:
    """``"min"`` for a loss (``loss``, ``val_loss``), else ``"max"``: which way a monitored
    metric improves, for checkpoints, early stopping, stage summaries and sweeps.

    Example:
        >>> monitor_mode("val_loss"), monitor_mode("val_accuracy")
        ('min', 'max')
    """
    return "min" if "loss" in metric else "max"


def _deprecated(old: str, new: str, where: str, what: str = "key") -> None:
    # Point the warning at the first caller outside cnnlab: the user's line.
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(0), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(
        f"'{old}' in {where} is a deprecated {what} name; use '{new}' instead "
        "(the old name stops working in the next release)",
        CnnlabDeprecationWarning,
        stacklevel=level,
    )


def canonical_key(key: Any) -> tuple[str, bool]:
    """``(name, deprecated)``: dashes to underscores, short aliases and old names resolved."""
    k = str(key).replace("-", "_")
    k = ALIASES.get(k, k)
    if k in DEPRECATED_KEYS:
        return DEPRECATED_KEYS[k], True
    return k, False


def normalise_keys(
    raw: dict[str, Any], where: str, extra_keys: tuple[str, ...] = (), command: str = "train"
) -> dict[str, Any]:
    """Canonical key names (dashes to underscores, aliases, deprecated names with a
    warning); unknown keys are refused with the closest names. ``extra_keys`` are
    accepted too (``cnnlab finetune``'s and ``cnnlab lr-find``'s own)."""
    known = TrainConfig.keys() + list(extra_keys)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        k, deprecated = canonical_key(key)
        if k not in known:
            raise ConfigError(
                f"Unknown config key '{key}' in {where}.{close_matches(k, known)}",
                expected=f"one of: {', '.join(known)}",
                fix=f"Fix the spelling, or see `cnnlab {command} --help` for every option",
            )
        if deprecated:
            _deprecated(str(key), k, where)
        if k in out and out[k] != value:
            raise ConfigError(
                f"'{key}' and another spelling of '{k}' are both given in {where}, "
                f"with different values ({value!r} and {out[k]!r})",
                fix=f"Keep only '{k}'",
            )
        out[k] = value
    return out


def normalise_model_options(model: str, options: dict[str, Any], where: str) -> dict[str, Any]:
    """``options`` with ``model``'s renamed options under their new names (with a warning)."""
    renames: dict[str, str] = {}
    for pattern, table in DEPRECATED_MODEL_OPTIONS.items():
        if re.fullmatch(pattern, str(model).lower().replace("-", "_")):
            renames.update(table)
    out: dict[str, Any] = {}
    for key, value in options.items():
        new = renames.get(key)
        if new is None:
            out[key] = value
            continue
        if new in options:
            raise ConfigError(
                f"{model}: both '{key}' (the old name) and '{new}' are given in {where}",
                fix=f"Keep only '{new}'",
            )
        _deprecated(key, new, f"{where} ({model})", what="model option")
        out[new] = value
    return out


def _parse_image_size(value: Any) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return [value, value]
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*(?:[x,]\s*(\d+))?\s*", value.lower())
        nums = [int(g) for g in m.groups() if g] if m else []
    else:
        try:
            nums = [int(v) for v in value]
        except (TypeError, ValueError):
            nums = []
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) < 1:
        raise ConfigError(
            f"Bad image_size: received {value!r}",
            expected="one size like 32, or height and width like 64x48 or [64, 48]",
            fix="Pass --image-size 32 or --image-size 64x48",
        )
    return nums


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(
            f"Bad {name}: received {value!r}.{close_matches(str(value), choices)}",
            expected=f"one of {', '.join(choices)}",
            fix=f"Pass --{name.replace('_', '-')} with one of those",
        )


def _check_range(name: str, value: float, lo: float, hi: float) -> None:
    if not (lo <= value <= hi):
        raise ConfigError(
            f"Bad {name}: received {value}",
            expected=f"a number from {lo} to {hi}",
            fix=f"Pass --{name.replace('_', '-')} within that range",
        )


def _coerce(cfg_dict: dict[str, Any]) -> TrainConfig:
    """Build a TrainConfig, converting types and validating every field."""
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    values = dict(cfg_dict)
    for key, value in list(values.items()):
        if value is None:
            continue
        t = str(types[key])
        try:
            if t.startswith("int"):
                values[key] = int(value)
            elif t.startswith("float"):
                values[key] = float(value)
            elif t == "bool":
                if isinstance(value, str):
                    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError(value)
                    value = value.lower() in ("true", "1", "yes")
                values[key] = bool(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"Bad value for {key}: received {value!r}",
                expected=f"a value of type {t}",
                fix=f"Pass --{key.replace('_', '-')} with a {t.split(' ')[0]}",
            ) from None
    values["image_size"] = _parse_image_size(values.get("image_size"))
    if isinstance(values.get("step_epochs"), str):
        values["step_epochs"] = [int(v) for v in values["step_epochs"].split(",") if v.strip()]
    if values.get("model_kwargs") is None:
        values["model_kwargs"] = {}
    if not isinstance(values["model_kwargs"], dict):
        raise ConfigError(
            f"Bad model_kwargs: received {values['model_kwargs']!r}",
            expected="a mapping of option names to values",
            fix="Write model_kwargs as a YAML mapping, or pass --model-kwargs key=value",
        )
    values["model_kwargs"] = normalise_model_options(
        str(values.get("model")), values["model_kwargs"], "model_kwargs"
    )
    cfg = TrainConfig(**values)
    cfg.optimizer = cfg.optimizer.lower()
    _check_choice("optimizer", cfg.optimizer, OPTIMIZERS)
    _check_choice("schedule", cfg.schedule, SCHEDULES)
    _check_choice("recipe", cfg.recipe, RECIPES)
    _check_choice("augment", cfg.augment, AUGMENT_POLICIES)
    _check_choice("resize", cfg.resize, RESIZE_MODES)
    _check_choice("strategy", cfg.strategy, STRATEGIES)
    _check_choice("precision", cfg.precision, PRECISIONS)
    _check_choice("class_weight", cfg.class_weight, ("none", "balanced"))
    _check_choice("cache", cfg.cache, ("auto", "memory", "none"))
    _check_range("val_split", cfg.val_split, 0.0, 0.9)
    _check_range("test_split", cfg.test_split, 0.0, 0.9)
    _check_range("label_smoothing", cfg.label_smoothing, 0.0, 0.99)
    _check_range("progressive_resize", cfg.progressive_resize, 0.0, 0.9)
    for name in ("batch_size", "epochs", "top_k"):
        _check_range(name, getattr(cfg, name), 1, 1_000_000)
    if cfg.micro_batch_size is not None:  # dividing the batch is checked once the recipe
        _check_range("micro_batch_size", cfg.micro_batch_size, 1, 1_000_000)  # set the batch
    if cfg.memory_budget is not None:
        cfg.memory_budget = str(cfg.memory_budget).strip()
        parse_memory_size(cfg.memory_budget)  # a bad size fails here, naming the key
    if cfg.channels is not None and cfg.channels not in (1, 3):
        raise ConfigError(
            f"Bad channels: received {cfg.channels}",
            expected="1 (grayscale) or 3 (RGB)",
            fix="Pass --channels 1 or --channels 3, or leave it out to follow the data",
        )
    if cfg.learning_rate is not None and cfg.learning_rate <= 0:
        raise ConfigError(
            f"Bad learning_rate: received {cfg.learning_rate}",
            expected="a positive number such as 1e-3",
            fix="Pass --learning-rate 1e-3, or leave it out for the optimizer's default",
        )
    return cfg


GB = 1e9  # memory sizes are decimal: --memory-budget 4GB is 4e9 bytes
_SIZE_UNITS = {
    "": GB,
    "b": 1.0,
    "k": 1e3,
    "kb": 1e3,
    "m": 1e6,
    "mb": 1e6,
    "g": GB,
    "gb": GB,
    "t": 1e12,
    "tb": 1e12,
    "kib": 1024.0,
    "mib": 1024.0**2,
    "gib": 1024.0**3,
    "tib": 1024.0**4,
}


def parse_memory_size(value: Any, name: str = "memory_budget") -> float | None:
    """Bytes of a size such as ``4GB``, ``3.5GiB``, ``800MB`` or a bare number of
    gigabytes (``4``); None for ``none``/``off`` (no budget).

    Example:
        >>> parse_memory_size("4GB"), parse_memory_size("512MiB"), parse_memory_size("none")
        (4000000000.0, 536870912.0, None)
    """
    if value is None:
        return None
    text = str(value).strip().lower().replace(" ", "")
    if text in ("none", "off", ""):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)([a-z]*)", text)
    if not m or m.group(2) not in _SIZE_UNITS or float(m.group(1)) <= 0:
        raise ConfigError(
            f"Bad {name}: received {value!r}",
            expected="a size such as 4GB, 3.5GiB or 800MB, or 'none' for no budget",
            fix="Pass --memory-budget 4GB (or set CNNLAB_MEMORY_BUDGET=4GB)",
        )
    return float(m.group(1)) * _SIZE_UNITS[m.group(2)]


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config file into a dict of known keys, with errors that name the file."""
    return normalise_keys(read_yaml_mapping(path), str(path))


def read_yaml_mapping(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; its keys are returned as written."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"Config file {p} does not exist",
            fix="Check the path given with -c/--config",
        )
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(
            f"Config file {p} is not valid YAML: {e}",
            fix="Fix the YAML syntax (keys are flag names, e.g. `epochs: 10`)",
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"Config file {p} holds a {type(raw).__name__}",
            expected="a mapping of option names to values, e.g. `epochs: 10`",
        )
    return raw


def resolve_config(
    base: TrainConfig | dict[str, Any] | str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """Merge defaults, a config (object, dict or YAML path) and overrides.

    ``None`` values in ``overrides`` mean "not given" and do not override.
    """
    values = TrainConfig().to_dict()
    if isinstance(base, TrainConfig):
        values.update(base.to_dict())
    elif isinstance(base, dict):
        values.update(normalise_keys(base, "the config"))
    elif base is not None:
        values.update(load_yaml(base))
    if overrides:
        given = {k: v for k, v in overrides.items() if v is not None}
        given = normalise_keys(given, "the arguments")
        if "model_kwargs" in given and isinstance(values.get("model_kwargs"), dict):
            given["model_kwargs"] = {**values["model_kwargs"], **given["model_kwargs"]}
        values.update(given)
    return _coerce(values)


def dump_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
