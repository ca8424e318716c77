"""Parsing helpers shared by the commands."""

from __future__ import annotations

import yaml

from cnnlab.errors import ConfigError


def parse_kwargs(items) -> dict:
    """``("filters=[32,64]", "dropout=0.2")`` → ``{"filters": [32, 64], "dropout": 0.2}``."""
    out = {}
    for item in items:
        for part in [item] if "=" in item and item.count("=") == 1 else item.split():
            if "=" not in part:
                raise ConfigError(
                    f"Bad --model-kwargs value '{part}'",
                    expected="KEY=VALUE, e.g. dropout=0.2 or filters=[32,64]",
                )
            key, value = part.split("=", 1)
            try:
                out[key.strip().replace("-", "_")] = yaml.safe_load(value)
            except yaml.YAMLError:
                raise ConfigError(f"Bad --model-kwargs value for {key}: {value!r}",
                                  expected="a YAML value") from None  # fmt: skip
    return out
