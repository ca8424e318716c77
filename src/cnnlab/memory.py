"""The memory budget every command plans for, and the one line that states it.

Every ``cnnlab`` command that loads a model estimates its peak resident memory on
start and logs one line, e.g.::

    Memory: ~3.4 GB estimated peak (batch 1024; budget 4.0 GB)              # train
    Memory: ~1.1 GB estimated peak (scoring, batch 64; budget 4.0 GB)       # evaluate

The budget is ``--memory-budget`` where a command takes it, else
``$CNNLAB_MEMORY_BUDGET`` (``4GB``, ``3.5GiB``, ``none``), else :func:`default_budget`:
60 % of the memory available at start, within 2-4 GB. Over it, a command computes in
smaller batches where it can (training: micro-batches, ``cnnlab.training.memory``;
scoring and prediction: a smaller batch, :func:`fit_batch`) and otherwise refuses
with the estimate's parts and how to fix it. What each part holds, and the
measurements behind the constants, are in ``cnnlab.training.memory`` (training)
and ``cnnlab.models.footprint`` (a model's bytes per image).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cnnlab.config import GB, parse_memory_size
from cnnlab.errors import ConfigError

MEMORY_BUDGET_ENV = "CNNLAB_MEMORY_BUDGET"
# The default budget: this share of the memory available at start, within these bounds
# (the cap keeps the default CIFAR-10 fast run under 4 GB; the floor keeps a busy
# machine's momentary MemAvailable from refusing small runs).
DEFAULT_BUDGET_SHARE = 0.6
DEFAULT_BUDGET_CAP = 4.0 * GB
DEFAULT_BUDGET_FLOOR = 2.0 * GB
# TensorFlow, Keras and cnnlab loaded, a step's graph built, tf.data's threads
# (calibrated in cnnlab.training.memory).
OVERHEAD_BYTES = 0.9 * GB
ACTIVATION_FACTOR = 1.5  # training bytes per image / bytes of its layer outputs
INFERENCE_FACTOR = 3.6  # scoring bytes per image / (largest layer output x views)
BATCHES_IN_FLIGHT = 4  # float32 input batches: decoded, prefetched, being run


def available_memory() -> float | None:
    """Bytes of MemAvailable in /proc/meminfo (None where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def default_budget() -> float:
    """:data:`DEFAULT_BUDGET_SHARE` of the memory available now, between
    :data:`DEFAULT_BUDGET_FLOOR` and :data:`DEFAULT_BUDGET_CAP`."""
    available = available_memory()
    if available is None:
        return DEFAULT_BUDGET_CAP
    return min(DEFAULT_BUDGET_CAP, max(DEFAULT_BUDGET_FLOOR, DEFAULT_BUDGET_SHARE * available))


def resolve_budget(value=None) -> tuple[float | None, str]:
    """The budget in bytes (None: no budget) and where it came from: ``value`` (a
    ``memory_budget`` option), else ``$CNNLAB_MEMORY_BUDGET``, else the default."""
    if value is not None:
        return parse_memory_size(value), "memory_budget"
    env = os.environ.get(MEMORY_BUDGET_ENV)
    if env is not None:
        return parse_memory_size(env, MEMORY_BUDGET_ENV), MEMORY_BUDGET_ENV
    return default_budget(), "default"


def budget_origin(source: str) -> str:
    """Where a budget came from, as the refusals say it."""
    return {"memory_budget": "memory_budget", MEMORY_BUDGET_ENV: f"${MEMORY_BUDGET_ENV}"}.get(
        source, "the default: 60% of the memory available, within 2-4 GB"
    )


def peak_resident_bytes() -> float:
    """This process's peak resident memory so far (``ru_maxrss``: KiB on Linux, bytes on
    macOS)."""
    import resource  # POSIX only: imported where it is used

    peak = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return peak if sys.platform == "darwin" else peak * 1024


def format_gb(nbytes: float, digits: int = 1) -> str:
    """``3.1 GB``; sizes under 0.1 GB in MB (``12 MB``)."""
    if abs(nbytes) < 0.1 * GB:
        return f"{nbytes / 1e6:.0f} MB"
    return f"{nbytes / GB:.{digits}f} GB"


@dataclass
class Estimate:
    """A command's estimated peak resident memory, by part (bytes), at one batch size.

    Example:
        >>> est = Estimate("scoring", 64, {"overhead": 0.9e9, "activations": 0.2e9}, 4e9)
        >>> est.line()
        'Memory: ~1.1 GB estimated peak (scoring, batch 64; budget 4.0 GB)'
    """

    what: str  # "scoring", "prediction", "export", "serving", "fine-tuning", ...
    batch_size: int
    parts: dict[str, float] = field(default_factory=dict)
    budget: float | None = None
    budget_source: str = "default"

    @property
    def total(self) -> float:
        return float(sum(self.parts.values()))

    @property
    def fits(self) -> bool:
        return self.budget is None or self.total <= self.budget

    def line(self) -> str:
        budget = "no budget" if self.budget is None else f"budget {format_gb(self.budget)}"
        return (
            f"Memory: ~{format_gb(self.total)} estimated peak "
            f"({self.what}, batch {self.batch_size}; {budget})"
        )

    def record(self) -> dict:
        """The estimate in GB, for a results file."""
        return {
            "what": self.what,
            "estimated_peak_gb": round(self.total / GB, 3),
            "budget_gb": None if self.budget is None else round(self.budget / GB, 3),
            "budget_from": self.budget_source,
            "batch_size": self.batch_size,
            "parts_gb": {k: round(v / GB, 3) for k, v in self.parts.items()},
        }

    def refusal(self, fix: str) -> ConfigError:
        """The error of a command whose estimate exceeds its budget."""
        parts = ", ".join(f"{format_gb(v)} {k}" for k, v in self.parts.items() if v)
        return ConfigError(
            f"{self.what.capitalize()} needs ~{format_gb(self.total, 2)} of memory "
            f"(estimated) at batch {self.batch_size}, over the memory budget of "
            f"{format_gb(self.budget or 0, 2)} ({budget_origin(self.budget_source)})",
            expected=f"an estimated peak within the budget; the estimate is {parts}",
            fix=f"{fix}, or raise the budget (CNNLAB_MEMORY_BUDGET=8GB, or none for none)",
        )


def fit_batch(
    estimate: Callable[[int], Estimate], batch_size: int, fix: str, *, shrink: bool = True
) -> Estimate:
    """The estimate at ``batch_size`` when it fits its budget; else (``shrink``) at the
    largest power of two below it that fits. Raises the estimate's refusal (with
    ``fix``) when nothing down to one image fits, or at once without ``shrink``.

    Example:
        >>> fit_batch(lambda b: Estimate("scoring", b, {"x": b * 1e8}, 2e9), 64, "fix").batch_size
        16
    """
    est = estimate(int(batch_size))
    size = int(batch_size)
    while shrink and not est.fits and size > 1:
        size = 2 ** ((size - 1).bit_length() - 1)  # the largest power of two below size
        est = estimate(size)
    if not est.fits:
        raise est.refusal(fix)
    return est
