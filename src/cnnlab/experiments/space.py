"""The sweep file: a base config, a search space over its keys, budgets and the search.

    name: digits-small          # the study's name (default: the file's stem)
    command: train              # or finetune
    trials: 8                   # finished trials (complete or pruned) to reach
    timeout: 10m                # optional: no trial starts after this (per process)
    epochs: 3                   # epochs per trial (default: the base config's)
    metric: val_accuracy        # maximised (a *loss metric is minimised)
    sampler: tpe                # tpe (default), random or grid
    pruner: median              # median (default), halving or none; or a mapping
    seed: 0                     # the sampler's seed
    base:                       # any train/finetune keys
      data: builtin:digits
    space:
      optimizer: [adam, rmsprop, sgd]                      # categorical
      learning_rate: {low: 1.0e-4, high: 1.0e-1, log: true}  # float range, log scale
      batch_size: {low: 32, high: 128, step: 32}           # int range (integer bounds)
      model_kwargs:                                        # nested model options
        filters: [[16, 32], [32, 64]]
        dropout: {low: 0.0, high: 0.5}

Parameter names are the config keys; nested model options are ``model_kwargs.NAME``.
Options that must change together are one categorical over mappings, merged into
``model_kwargs``: ``model_kwargs: [{dropout: 0.0, dense_dropout: 0.0}, {dropout: 0.1}]``.
Categorical choices that are not plain numbers or strings (lists, mappings) are
stored in the study as their YAML text, so a study database stays readable.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cnnlab.config import TrainConfig, canonical_key, monitor_mode, read_yaml_mapping
from cnnlab.errors import ConfigError, close_matches

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "halving", "none")
COMMANDS = ("train", "finetune")
TOP_KEYS = (
    "name",
    "command",
    "trials",
    "timeout",
    "epochs",
    "metric",
    "sampler",
    "pruner",
    "seed",
    "base",
    "space",
)
PRUNER_KEYS = ("type", "warmup_epochs", "startup_trials", "reduction_factor")
RANGE_KEYS = ("low", "high", "log", "step", "type")
MODEL_KWARGS = "model_kwargs"


@dataclass
class Param:
    """One searched key: ``kind`` is categorical, float or int."""

    name: str
    kind: str
    choices: list[Any] = field(default_factory=list)
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None

    def encoded_choices(self) -> list[Any]:
        return [encode_choice(c) for c in self.choices]

    def grid(self, where: str) -> list[Any]:
        """Every value of this parameter, for grid search."""
        if self.kind == "categorical":
            return self.encoded_choices()
        if self.step is None:
            raise ConfigError(
                f"Grid search cannot enumerate '{self.name}' in {where}: it is a "
                f"{self.kind} range without a step",
                expected="choices (a list) or a range with `step` for every parameter",
                fix=f"Give '{self.name}' a step, or list its values, or use sampler: tpe",
            )
        n = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        values = [self.low + i * self.step for i in range(n)]
        return [int(v) for v in values] if self.kind == "int" else [round(v, 12) for v in values]

    def describe(self) -> str:
        if self.kind == "categorical":
            return ", ".join(str(encode_choice(c)) for c in self.choices)
        text = f"{self.kind} {self.low} to {self.high}"
        if self.log:
            text += " (log)"
        if self.step is not None:
            text += f" step {self.step}"
        return text


@dataclass
class SweepSpec:
    """A parsed and checked sweep file."""

    name: str
    base: dict[str, Any]
    params: list[Param]
    command: str = "train"
    trials: int | None = 20
    timeout: float | None = None
    epochs: int | None = None
    metric: str = "val_accuracy"
    sampler: str = "tpe"
    pruner: dict[str, Any] = field(default_factory=lambda: {"type": "median"})
    seed: int = 0
    raw: dict[str, Any] = field(default_factory=dict)  # the file as read, for the folder

    @property
    def direction(self) -> str:
        return "minimize" if monitor_mode(self.metric) == "min" else "maximize"

    def grid_space(self) -> dict[str, list[Any]]:
        return {p.name: p.grid(f"sweep '{self.name}'") for p in self.params}

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid_space().values())


def encode_choice(value: Any) -> Any:
    """A categorical choice as Optuna stores it: numbers, strings, bools and None as they
    are; anything else (a list of filters, a mapping) as one-line YAML text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False).strip()


def decode_param(param: Param, value: Any) -> Any:
    """The config value for an Optuna parameter value (undoes :func:`encode_choice`)."""
    if param.kind != "categorical":
        return value
    for choice in param.choices:
        if encode_choice(choice) == value:
            return choice
    return value


def _number(value: Any, where: str) -> float | int:
    """YAML reads ``1e-4`` (no dot) as text; numbers written that way are accepted."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        text = value.strip()
        return int(text) if re.fullmatch(r"[-+]?\d+", text) else float(text)
    raise ValueError(value)


def _parse_param(name: str, spec: Any, where: str) -> Param:
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        raise ConfigError(
            f"Search space entry '{name}' in {where} is {spec!r}",
            expected="a list of choices, or a range like {low: 1.0e-4, high: 1.0e-1, log: true}",
            fix=f"Move a fixed value of '{name}' to `base:`, or give a list or a range",
        )
    if "choices" in spec:
        choices = spec["choices"]
        extra = [k for k in spec if k != "choices"]
        if not isinstance(choices, list) or not choices or extra:
            raise ConfigError(
                f"Search space entry '{name}' in {where} has bad choices {spec!r}",
                expected="a non-empty list, e.g. [adam, sgd]",
            )
        return Param(name, "categorical", choices=list(choices))
    unknown = [k for k in spec if k not in RANGE_KEYS]
    if unknown or "low" not in spec or "high" not in spec:
        raise ConfigError(
            f"Search space entry '{name}' in {where} is {spec!r}",
            expected="a range with low and high (and optionally log, step, type: int|float), "
            "or a list of choices",
        )
    try:
        low, high = _number(spec["low"], where), _number(spec["high"], where)
        step = None if spec.get("step") is None else _number(spec["step"], where)
    except ValueError:
        raise ConfigError(
            f"Search space entry '{name}' in {where}: low, high and step must be numbers, "
            f"received {spec!r}",
            fix="Write numbers like 0.001 or 1.0e-3",
        ) from None
    kind = spec.get("type") or (
        "int"
        if isinstance(low, int)
        and isinstance(high, int)
        and (step is None or isinstance(step, int))
        else "float"
    )
    if kind not in ("int", "float"):
        raise ConfigError(
            f"Search space entry '{name}' in {where} has type {kind!r}", expected="int or float"
        )
    log = bool(spec.get("log", False))
    if not low < high or (log and low <= 0) or (log and step is not None):
        raise ConfigError(
            f"Search space entry '{name}' in {where} is an empty or bad range: {spec!r}",
            expected="low < high; a log range needs low > 0 and no step",
        )
    cast = int if kind == "int" else float
    return Param(
        name,
        kind,
        low=cast(low),
        high=cast(high),
        log=log,
        step=None if step is None else cast(step),
    )


def _parse_space(space: Any, where: str, known: list[str]) -> list[Param]:
    if not isinstance(space, dict) or not space:
        raise ConfigError(
            f"The sweep file {where} has no search space",
            expected="a `space:` mapping of config keys to choices or ranges",
            fix="Add e.g. `space: {optimizer: [adam, sgd]}`",
        )
    params: list[Param] = []
    for key, spec in space.items():
        k, _ = canonical_key(key)
        if k == MODEL_KWARGS and isinstance(spec, dict):
            params += [_parse_param(f"{MODEL_KWARGS}.{opt}", s, where) for opt, s in spec.items()]
            continue
        if k.startswith(MODEL_KWARGS + "."):
            params.append(_parse_param(k, spec, where))
            continue
        if k not in known:
            raise ConfigError(
                f"Unknown key '{key}' in the search space of {where}.{close_matches(k, known)}",
                expected="config keys of the command (those of `cnnlab train --help`), "
                "or model_kwargs.NAME",
            )
        params.append(_parse_param(k, spec, where))
    return params


def parse_duration(value: Any, where: str) -> float | None:
    """Seconds from 90, "90s", "30m", "2h" or "1h30m"."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    m = re.fullmatch(
        r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", str(value)
    )
    if m and any(m.groups()):
        h, mi, s = (float(g) if g else 0.0 for g in m.groups())
        if h * 3600 + mi * 60 + s > 0:
            return h * 3600 + mi * 60 + s
    raise ConfigError(
        f"Bad timeout in {where}: received {value!r}",
        expected="a duration such as 1800, 30m, 2h or 1h30m",
    )


def _positive_int(raw: dict, key: str, where: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"Bad {key} in {where}: received {value!r}", expected="a whole number of 1 or more"
        )
    return value


def _parse_pruner(value: Any, where: str) -> dict[str, Any]:
    spec = {"type": value} if value is None or isinstance(value, str) else value
    if not isinstance(spec, dict):
        raise ConfigError(
            f"Bad pruner in {where}: received {value!r}",
            expected=f"one of {', '.join(PRUNERS)}, or a mapping with `type`",
        )
    spec = {"type": "median", **spec}
    if spec["type"] is None or spec["type"] is False:
        spec["type"] = "none"
    unknown = [k for k in spec if k not in PRUNER_KEYS]
    if spec["type"] not in PRUNERS or unknown:
        raise ConfigError(
            f"Bad pruner in {where}: received {value!r}.{close_matches(str(spec['type']), PRUNERS)}",
            expected=f"type one of {', '.join(PRUNERS)}; options {', '.join(PRUNER_KEYS[1:])}",
        )
    return spec


def command_keys(command: str) -> list[str]:
    """The config keys a trial of ``command`` accepts."""
    keys = TrainConfig.keys()
    if command == "finetune":
        keys = keys + finetune_keys()
    return keys


def finetune_keys() -> list[str]:
    """``cnnlab finetune``'s own keys (stages, unfreezing)."""
    from cnnlab.experiments._quiet import quiet_tensorflow_import

    quiet_tensorflow_import()  # the options live beside the Keras code that uses them
    from cnnlab.training.finetune import FineTuneOptions

    return [f.name for f in dataclasses.fields(FineTuneOptions)]


def parse_sweep(raw: dict[str, Any], where: str, default_name: str = "sweep") -> SweepSpec:
    """Check a sweep file's mapping and return its :class:`SweepSpec`."""
    unknown = [k for k in raw if str(k).replace("-", "_") not in TOP_KEYS]
    config_keys = [k for k in unknown if canonical_key(k)[0] in TrainConfig.keys()]
    if config_keys:
        raise ConfigError(
            f"'{config_keys[0]}' is a config key of cnnlab train: put it under `base:` in {where}",
            expected="config keys in `base:` (fixed) or `space:` (searched); "
            f"top-level keys among {', '.join(TOP_KEYS)}",
        )
    if unknown:
        raise ConfigError(
            f"Unknown key(s) {', '.join(map(str, unknown))} in the sweep file {where}."
            f"{close_matches(str(unknown[0]), TOP_KEYS)}",
            expected=f"top-level keys among {', '.join(TOP_KEYS)} (train keys go under `base:`)",
        )
    raw = {str(k).replace("-", "_"): v for k, v in raw.items()}
    command = raw.get("command", "train")
    if command not in COMMANDS:
        raise ConfigError(
            f"Bad command in {where}: received {command!r}", expected="train or finetune"
        )
    base = raw.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(
            f"`base:` in {where} is not a mapping",
            expected="config keys and values, e.g. `data: builtin:digits`",
        )
    known = command_keys(command)
    params = _parse_space(raw.get("space"), where, known)
    sampler = str(raw.get("sampler", "tpe")).lower()
    if sampler not in SAMPLERS:
        raise ConfigError(
            f"Bad sampler in {where}: received {sampler!r}.{close_matches(sampler, SAMPLERS)}",
            expected=f"one of {', '.join(SAMPLERS)}",
        )
    name = str(raw.get("name") or default_name)
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", name):
        raise ConfigError(
            f"Bad sweep name {name!r} in {where}",
            expected="letters, digits, '.', '_' or '-' (it names a folder)",
        )
    trials = _positive_int(raw, "trials", where)
    timeout = parse_duration(raw.get("timeout"), where)
    spec = SweepSpec(
        name=name,
        base=base,
        params=params,
        command=command,
        trials=trials if trials is not None or timeout is not None else 20,
        timeout=timeout,
        epochs=_positive_int(raw, "epochs", where),
        metric=str(raw.get("metric", "val_accuracy")),
        sampler=sampler,
        pruner=_parse_pruner(raw.get("pruner", "median"), where),
        seed=int(raw.get("seed", 0)),
        raw=raw,
    )
    if sampler == "grid":
        spec.grid_space()  # every parameter must be enumerable
    return spec


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check a sweep file."""
    return parse_sweep(read_yaml_mapping(path), str(path), Path(path).stem)


def trial_config(spec: SweepSpec, values: dict[str, Any]) -> dict[str, Any]:
    """The trial's config: the base, then ``epochs``, then the sampled values
    (``model_kwargs.NAME`` merged into the base's ``model_kwargs``)."""
    config = dict(spec.base)
    if spec.epochs is not None:
        config["epochs"] = spec.epochs
    kwargs = dict(config.get(MODEL_KWARGS) or {})
    for name, value in values.items():
        if name.startswith(MODEL_KWARGS + "."):
            kwargs[name.split(".", 1)[1]] = value
        elif name == MODEL_KWARGS and isinstance(value, dict):  # a set of options chosen together
            kwargs.update(value)
        else:
            config[name] = value
    if kwargs:
        config[MODEL_KWARGS] = kwargs
    return config


def suggest(trial, spec: SweepSpec) -> dict[str, Any]:
    """Ask an Optuna trial for every parameter; returns config values by parameter name."""
    values = {}
    for p in spec.params:
        if p.kind == "categorical":
            raw = trial.suggest_categorical(p.name, p.encoded_choices())
            values[p.name] = decode_param(p, raw)
        elif p.kind == "int":
            values[p.name] = trial.suggest_int(p.name, p.low, p.high, step=p.step or 1, log=p.log)
        else:
            values[p.name] = trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)
    return values
