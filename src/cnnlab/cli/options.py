"""Parsing helpers shared by the commands."""

from __future__ import annotations

import re

import yaml

from cnnlab.errors import ConfigError


def parse_kwargs(items) -> dict:
    """``("filters=[32, 64] dropout=0.2",)`` → ``{"filters": [32, 64], "dropout": 0.2}``.

    Each item may hold several KEY=VALUE pairs separated by spaces; a value may
    itself contain spaces (``[32, 64]``) since pairs split only before ``KEY=``.
    """
    out = {}
    for item in items:
        for part in re.split(r"\s+(?=[A-Za-z_][\w-]*=)", item.strip()):
            if "=" not in part:
                raise ConfigError(
                    f"Bad --model-kwargs value '{part}'",
                    expected="KEY=VALUE, e.g. dropout=0.2 or filters=[32,64]",
                )
            key, value = part.split("=", 1)
            try:
                out[key.strip().replace("-", "_")] = yaml.safe_load(value)
            except yaml.YAMLError:
                raise ConfigError(
                    f"Bad --model-kwargs value for {key}: {value!r}", expected="a YAML value"
                ) from None
    return out


def show_log() -> None:
    """``cnnlab: ...`` lines on stderr for a command that is not a training run (whose
    config's ``verbose`` decides): its memory estimate, progress and decisions."""
    from cnnlab.workflows.skeleton import setup_logging

    setup_logging(1)
