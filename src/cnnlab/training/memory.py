"""Peak training memory: an estimate on start, a budget, and the micro-batch that fits it.

A training step keeps every layer's output of the batch for backpropagation, so
its memory grows with the batch; the rest (TensorFlow itself, the weights and
optimizer slots, the decoded images cached in memory) does not. Every
``cnnlab train`` estimates its peak resident memory before the first step and
logs it; the fast recipe on CIFAR-10's 50,000 training images::

    Memory: ~3.4 GB estimated peak (batch 1024; budget 4.0 GB)
    Memory: ~1.9 GB estimated peak (batch 1024 as 4 micro-batches of 256; budget 2.0 GB)

When the estimate exceeds the budget (``--memory-budget``, ``CNNLAB_MEMORY_BUDGET``,
else :func:`default_budget`), the run computes each batch as micro-batches whose
gradients are accumulated into one optimizer step (:func:`choose_micro_batch`):
the largest divisor of the batch that fits, and refuses with a
:class:`~cnnlab.errors.ConfigError` when even :data:`MIN_MICRO_BATCH` does not.
The effective batch, the steps per epoch, the schedule and the lookahead are the
whole batch's; BatchNorm layers normalise over each micro-batch (and update their
running statistics once per micro-batch), so a network with BatchNorm trains
close to, not exactly as, the whole batch.

The estimate (:func:`estimate_memory`) is a sum of

- ``overhead``: TensorFlow, Keras and cnnlab loaded, the step's graph built;
- ``parameters``: weights, their gradients, the optimizer's slots, gradient
  accumulators and the fast recipe's lookahead copy (4 bytes each);
- ``data``: decoded images held in memory (the pipelines' caches, an in-memory
  source's arrays; a separate test set, loaded after training, adds its decoded
  size: 31 MB for CIFAR-10's) and the input batches in flight;
- the larger of ``activations`` (training: :data:`ACTIVATION_FACTOR` × the
  micro-batch × the bytes of every layer's output per image) and ``inference``
  (scoring and validation at the evaluation batch, every test-time view).

Calibration (``python bench/memory_calibration.py``; raw lines in
``bench/results/memory_calibration.jsonl``). One subprocess per row: airbench at
width 0.75 (the fast recipe's CIFAR-10 network: 1,308 KB of layer outputs per
32×32 image; its largest output times its six test-time views, 1,107 KB), the
fast recipe's SGD, random 32×32×3 data, 6 steps; peak RSS from
``getrusage(RUSAGE_SELF).ru_maxrss`` after building (634 MB) and after the steps;
2-core VM shared with other jobs, TensorFlow 2.21, Keras 3.15::

    training step, batch        64     128    256    512    1024   1024 as 4 x 256
      peak RSS (MB)             854    974    1233   1677   2619   1286
    scoring (compiled), batch   64     256    1024
      peak RSS (MB)             864    1630   4568
    scoring (eager), batch      64     256    1024
      peak RSS (MB)             1232   2962   9222

Training grows by 1.87 MB per image (least squares over 64-1024), 1.43 times its
layer outputs: ``ACTIVATION_FACTOR`` 1.5. Compiled scoring grows by 3.85 MB per
image, 3.47 times the largest output times the views: ``INFERENCE_FACTOR`` 3.6.
Eager scoring (``model(x)``, what scoring did before) grows by 8.3 MB per image:
every layer's output of all six views stays alive; at the fast recipe's batch of
1024 that is the 9.2 GB that set the CIFAR-10 run's peak. Whole runs, ``cnnlab
train --recipe fast --epochs 1 --batch-size 1024`` on 5,000 CIFAR-10 training
JPEGs (1,000 test): 0.6 GB after the imports, 0.74 GB with the data loaded, and a
peak of 9.22 GB before / 2.81 GB after (estimate 3.0 GB): ``OVERHEAD_BYTES``
0.9 GB covers the libraries, graphs and tf.data's threads. The cached, shuffled
training pipeline of 20,000 32×32 PNG files held 3.2 times their decoded bytes
with its batches in flight, of 50,000 in-memory images 3.1 times (and the
source's array): ``TRAIN_CACHE_COPIES`` 2.5 plus ``BATCHES_IN_FLIGHT``, and
``IN_MEMORY_COPIES`` 1.5.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cnnlab.config import GB, TrainConfig, parse_memory_size
from cnnlab.errors import ConfigError

log = logging.getLogger("cnnlab")

MEMORY_BUDGET_ENV = "CNNLAB_MEMORY_BUDGET"
# The default budget: this share of the memory available at start, within these bounds
# (the cap keeps the default CIFAR-10 fast run under 4 GB; the floor keeps a busy
# machine's momentary MemAvailable from refusing small runs).
DEFAULT_BUDGET_SHARE = 0.6
DEFAULT_BUDGET_CAP = 4.0 * GB
DEFAULT_BUDGET_FLOOR = 2.0 * GB
# Micro-batches smaller than this are not chosen (BatchNorm statistics of a few images
# are noise, and small steps leave the cores idle); a given micro_batch_size may be smaller.
MIN_MICRO_BATCH = 16

# Calibrated constants (the measurements are in the module docstring).
OVERHEAD_BYTES = 0.9 * GB  # cnnlab's libraries loaded, graphs built, tf.data threads
ACTIVATION_FACTOR = 1.5  # training bytes per image / bytes of its layer outputs
INFERENCE_FACTOR = 3.6  # scoring bytes per image / (largest layer output x views)
TRAIN_CACHE_COPIES = 2.5  # the training cache, its shuffle buffer, tf.data's slack
IN_MEMORY_COPIES = 1.5  # an in-memory source's array and the split's copy of it
BATCHES_IN_FLIGHT = 4  # float32 batches: augmenting, prefetched, being cut


# ---------------------------------------------------------------------- the budget
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
    """The budget in bytes (None: no budget) and where it came from: ``value`` (the
    config's ``memory_budget``), else ``$CNNLAB_MEMORY_BUDGET``, else the default."""
    if value is not None:
        return parse_memory_size(value), "memory_budget"
    env = os.environ.get(MEMORY_BUDGET_ENV)
    if env is not None:
        return parse_memory_size(env, MEMORY_BUDGET_ENV), MEMORY_BUDGET_ENV
    return default_budget(), "default"


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


# ---------------------------------------------------------------------- the model's side
def _layer_outputs(layer) -> list:
    import keras

    try:
        return [t for t in keras.tree.flatten(layer.output) if hasattr(t, "shape")]
    except (AttributeError, ValueError):  # a layer called several times, or never
        nodes = getattr(layer, "_inbound_nodes", [])
        return [t for node in nodes for t in keras.tree.flatten(node.output_tensors)]


def _layer_sizes(model) -> list[int]:
    """Elements per image of every layer output (nested models included), in order."""
    sizes: list[int] = []
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        if hasattr(layer, "layers") and layer.layers:  # a nested model: its own layers
            sizes += _layer_sizes(layer)
            continue
        for t in _layer_outputs(layer):
            dims = [d for d in t.shape[1:]]
            if any(d is None for d in dims):
                continue
            sizes.append(int(math.prod(dims)) if dims else 1)
    return sizes


def activation_bytes(model) -> int:
    """Bytes of every layer's output for one image (float32): what a training step keeps
    for backpropagation, per image, before :data:`ACTIVATION_FACTOR`."""
    return 4 * sum(_layer_sizes(model))


def inference_bytes(model) -> int:
    """Bytes per image of the largest layer output times the test-time views the model
    stacks on the batch (airbench's ``TTAViews``), before :data:`INFERENCE_FACTOR`."""
    sizes = _layer_sizes(model) or [1]
    return 4 * max(sizes) * tta_views(model)


def tta_views(model) -> int:
    """How many views of each image the model runs at inference (1 without TTA)."""
    for layer in model.layers:
        views = getattr(layer, "views", None)
        if type(layer).__name__ == "TTAViews" and callable(views):
            import numpy as np

            return len(views(np.zeros((1, 4, 4, 1), np.float32)))
    return 1


def optimizer_slots(optimizer: str) -> int:
    """Variables the optimizer keeps per weight (momentum, second moments)."""
    return {"sgd": 1, "muon": 1, "rmsprop": 1, "adam": 2, "adamw": 2}.get(str(optimizer), 2)


# ---------------------------------------------------------------------- the data's side
def held_image_bytes(bundle) -> float:
    """Bytes of decoded images the run keeps in memory: the training split's cache and
    its shuffle buffer (:data:`TRAIN_CACHE_COPIES`), the validation and test caches, and
    an in-memory source's arrays (:data:`IN_MEMORY_COPIES`)."""
    from cnnlab.data.pipeline import CACHE_LIMIT_BYTES

    h, w = bundle.image_size
    per_image = float(h * w * bundle.channels)
    total = 0.0
    for split, copies in (("train", TRAIN_CACHE_COPIES), ("val", 1.0), ("test", 1.0)):
        size = len(bundle.examples(split)["labels"]) * per_image
        if bundle.cache == "memory" or (bundle.cache == "auto" and size <= CACHE_LIMIT_BYTES):
            total += copies * size
    images = getattr(bundle.source, "images", None)
    if images is not None:
        total += IN_MEMORY_COPIES * float(images.nbytes)
    return total


# ---------------------------------------------------------------------- the estimate
@dataclass
class MemoryInputs:
    """What the estimate needs to know about a run besides its model."""

    batch_size: int
    image_size: tuple[int, int]
    channels: int
    held_bytes: float = 0.0  # decoded images kept in memory (see held_image_bytes)
    optimizer: str = "sgd"
    lookahead: bool = False

    @classmethod
    def of(cls, cfg: TrainConfig, bundle) -> MemoryInputs:
        return cls(
            batch_size=int(cfg.batch_size),
            image_size=tuple(bundle.image_size),
            channels=int(bundle.channels),
            held_bytes=held_image_bytes(bundle),
            optimizer=cfg.optimizer,
            lookahead=cfg.recipe == "fast" and cfg.model == "airbench",
        )


@dataclass
class MemoryEstimate:
    """An estimate of a run's peak resident memory, in bytes, by part."""

    batch_size: int
    micro_batch_size: int
    eval_batch_size: int
    overhead: float
    parameters: float
    data: float
    activations: float
    inference: float
    budget: float | None = None
    budget_source: str = "default"

    @property
    def total(self) -> float:
        return self.overhead + self.parameters + self.data + max(self.activations, self.inference)

    @property
    def micro_batches(self) -> int:
        return self.batch_size // self.micro_batch_size

    @property
    def fits(self) -> bool:
        return self.budget is None or self.total <= self.budget

    def line(self) -> str:
        """The start-up log line, e.g. ``Memory: ~3.1 GB estimated peak (batch 1024 as 4
        micro-batches of 256; budget 4.0 GB)``."""
        batch = f"batch {self.batch_size}"
        if self.micro_batches > 1:
            batch += f" as {self.micro_batches} micro-batches of {self.micro_batch_size}"
        budget = "no budget" if self.budget is None else f"budget {format_gb(self.budget)}"
        return f"Memory: ~{format_gb(self.total)} estimated peak ({batch}; {budget})"

    def record(self) -> dict:
        """What ``metrics.json`` keeps under ``memory`` (GB)."""
        return {
            "estimated_peak_gb": round(self.total / GB, 3),
            "budget_gb": None if self.budget is None else round(self.budget / GB, 3),
            "budget_from": self.budget_source,
            "batch_size": self.batch_size,
            "micro_batch_size": self.micro_batch_size,
            "eval_batch_size": self.eval_batch_size,
            "parts_gb": {
                name: round(getattr(self, name) / GB, 3)
                for name in ("overhead", "parameters", "data", "activations", "inference")
            },
        }


def estimate_memory(
    model,
    inputs: MemoryInputs,
    micro_batch_size: int | None = None,
    *,
    eval_batch: int | None = None,
) -> MemoryEstimate:
    """Estimate the peak resident memory of training ``model`` as ``inputs`` describe, each
    batch computed as micro-batches of ``micro_batch_size`` (default: whole) and scored
    at ``eval_batch`` (default: :func:`eval_batch_size`).

    Example:
        >>> est = estimate_memory(model, MemoryInputs(1024, (32, 32), 3), 256)
        >>> est.line()
        'Memory: ~1.9 GB estimated peak (batch 1024 as 4 micro-batches of 256; no budget)'
    """
    micro = int(micro_batch_size or inputs.batch_size)
    evaluation = int(eval_batch or eval_batch_size(model, inputs.batch_size, micro))
    pixels = inputs.image_size[0] * inputs.image_size[1] * inputs.channels
    copies = 2 + optimizer_slots(inputs.optimizer) + (micro < inputs.batch_size) + inputs.lookahead
    return MemoryEstimate(
        batch_size=int(inputs.batch_size),
        micro_batch_size=micro,
        eval_batch_size=evaluation,
        overhead=OVERHEAD_BYTES,
        parameters=4.0 * model.count_params() * copies,
        data=inputs.held_bytes + BATCHES_IN_FLIGHT * 4.0 * inputs.batch_size * pixels,
        activations=ACTIVATION_FACTOR * micro * activation_bytes(model),
        inference=INFERENCE_FACTOR * evaluation * inference_bytes(model),
    )


def eval_batch_size(model, batch_size: int, micro: int) -> int:
    """The batch scoring and validation run at: the training batch, or the largest power
    of two below it whose scoring needs no more memory than a training micro-batch's
    activations (so scoring never sets the peak; airbench with six test-time views
    scores at a quarter of the micro-batch)."""
    per_image = INFERENCE_FACTOR * inference_bytes(model)
    limit = ACTIVATION_FACTOR * micro * activation_bytes(model)
    size = int(limit // max(per_image, 1.0))
    if size >= batch_size:
        return int(batch_size)
    return 2 ** int(math.log2(max(size, 1)))


def micro_batch_candidates(batch_size: int) -> list[int]:
    """Divisors of ``batch_size`` from the batch itself down to :data:`MIN_MICRO_BATCH`."""
    out = [d for d in range(batch_size, 0, -1) if batch_size % d == 0 and d >= MIN_MICRO_BATCH]
    return out or [batch_size]


def check_micro_batch(batch_size: int, micro_batch_size: int) -> None:
    """Refuse a micro-batch that does not divide the batch (every optimizer step must
    accumulate the same number of micro-batches)."""
    if micro_batch_size < 1 or batch_size % micro_batch_size:
        divisors = [d for d in micro_batch_candidates(batch_size) if d < batch_size][:4]
        example = f", e.g. {', '.join(map(str, divisors))}" if divisors else ""
        raise ConfigError(
            f"Bad micro_batch_size: received {micro_batch_size} for batch_size {batch_size}",
            expected=f"a divisor of the batch size{example}",
            fix="Pass --micro-batch-size with a divisor of --batch-size, or leave it out to "
            "let the memory budget choose",
        )


def choose_micro_batch(
    model,
    inputs: MemoryInputs,
    budget: float | None,
    budget_source: str = "default",
    micro_batch_size: int | None = None,
) -> MemoryEstimate:
    """The micro-batch a run computes its batches in, with its estimate.

    A given ``micro_batch_size`` is used as it is (it must divide the batch); otherwise
    the largest divisor of the batch whose estimate fits ``budget``. Raises a
    :class:`ConfigError` naming the budget and the estimate when even the smallest
    (:data:`MIN_MICRO_BATCH`, or the given one) does not fit.

    Example:
        >>> choose_micro_batch(model, MemoryInputs(1024, (32, 32), 3), 2e9).micro_batch_size
        256
    """
    if micro_batch_size is not None:
        check_micro_batch(inputs.batch_size, int(micro_batch_size))
        candidates = [int(micro_batch_size)]
    else:
        candidates = micro_batch_candidates(int(inputs.batch_size))
    for micro in candidates:
        est = estimate_memory(model, inputs, micro)
        est.budget, est.budget_source = budget, budget_source
        if est.fits:
            return est
    raise over_budget(est, given=micro_batch_size is not None)


def over_budget(est: MemoryEstimate, given: bool = False) -> ConfigError:
    """The refusal of a run whose estimate exceeds its budget at every micro-batch."""
    source = {
        "memory_budget": "memory_budget",
        MEMORY_BUDGET_ENV: f"${MEMORY_BUDGET_ENV}",
    }.get(est.budget_source, "the default: 60% of the memory available, within 2-4 GB")
    what = "micro-batches" if given else "the smallest micro-batches"
    if est.micro_batches == 1:
        what = "whole batches"
    return ConfigError(
        f"Training needs ~{format_gb(est.total, 2)} of memory (estimated) even with {what} "
        f"of {est.micro_batch_size} images (batch {est.batch_size}), over the memory budget "
        f"of {format_gb(est.budget, 2)} ({source})",
        expected=f"an estimated peak within the budget; the estimate is "
        f"{format_gb(est.overhead)} TensorFlow, {format_gb(est.data)} images in memory, "
        f"{format_gb(max(est.activations, est.inference))} activations, "
        f"{format_gb(est.parameters)} weights and optimizer state",
        fix="Raise the budget (--memory-budget 8GB, or CNNLAB_MEMORY_BUDGET=none for none), "
        "or train a smaller model, --image-size or --batch-size, or pass --cache none",
    )


# ---------------------------------------------------------------------- a run's plan
def refuse_outside_train(cfg: TrainConfig, command: str) -> None:
    """``micro_batch_size`` and ``memory_budget`` plan ``cnnlab train`` runs only: refuse
    them where they would be ignored (fine-tuning, the learning-rate range test)."""
    given = [k for k in ("micro_batch_size", "memory_budget") if getattr(cfg, k) is not None]
    if given:
        raise ConfigError(
            f"{' and '.join(given)} given to `cnnlab {command}`, which does not use them",
            expected="micro-batches and a memory budget with `cnnlab train` only",
            fix=f"Drop {' and '.join(given)}, or pass a smaller --batch-size",
        )


def plan_memory(model, cfg: TrainConfig, bundle, *, resumed: bool = False) -> MemoryEstimate:
    """The micro-batch and evaluation batch of a ``cnnlab train`` run, logged as one line.

    A resumed run keeps the micro-batch its config recorded (its optimizer already
    accumulates that many) and only logs the estimate. Micro-batches need the default
    strategy: Keras 3.15's gradient accumulation fails under ``tf.distribute``
    (``merge_call`` inside its ``cond``), and cnnlab's multi-worker loop has none, so
    under ``mirrored`` and ``multiworker`` a run that does not fit whole batches is
    refused.
    """
    budget, source = resolve_budget(cfg.memory_budget)
    inputs = MemoryInputs.of(cfg, bundle)
    whole = cfg.strategy != "default"
    if whole and (cfg.micro_batch_size or cfg.batch_size) != cfg.batch_size:
        raise ConfigError(
            f"micro_batch_size is not available under --strategy {cfg.strategy}",
            expected="whole batches (Keras' gradient accumulation does not run under "
            "tf.distribute); each replica already computes its share of the batch",
            fix="Drop --micro-batch-size, or pass a smaller --batch-size",
        )
    if resumed or whole:
        est = estimate_memory(model, inputs, cfg.micro_batch_size)
        est.budget, est.budget_source = budget, source
        if not est.fits and not resumed:
            raise over_budget(est)
    else:
        est = choose_micro_batch(model, inputs, budget, source, cfg.micro_batch_size)
        if cfg.micro_batch_size is None and est.micro_batches > 1:
            log.info(
                "Memory: batch %d needs ~%s, over the budget of %s: computing it as %d "
                "micro-batches of %d (gradients accumulated into one step)",
                est.batch_size,
                format_gb(estimate_memory(model, inputs).total),
                format_gb(budget),
                est.micro_batches,
                est.micro_batch_size,
            )
    log.info("%s", est.line())
    return est
