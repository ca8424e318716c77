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

A ``mixed_bfloat16`` run (``--precision``) keeps most layer outputs at half the
size, but its BatchNorm layers compute in float32 and every layer casts; the
estimate still counts float32 outputs, so it is an upper bound there: the fast
recipe's 7-epoch CIFAR-10 run in bfloat16 peaked at 2.31 GB against the same
3.4 GB estimate (3.12 GB in float32).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from cnnlab.config import GB, TrainConfig
from cnnlab.errors import ConfigError
from cnnlab.memory import (  # noqa: F401 - the budget's names, used from here too
    MEMORY_BUDGET_ENV,
    OVERHEAD_BYTES,
    available_memory,
    budget_origin,
    default_budget,
    format_gb,
    peak_resident_bytes,
    resolve_budget,
)
from cnnlab.models.footprint import (  # noqa: F401 - the model's side, used from here too
    ACTIVATION_FACTOR,
    BATCHES_IN_FLIGHT,
    INFERENCE_FACTOR,
    activation_bytes,
    inference_bytes,
    tta_views,
)

log = logging.getLogger("cnnlab")

# Micro-batches smaller than this are not chosen (BatchNorm statistics of a few images
# are noise, and small steps leave the cores idle); a given micro_batch_size may be smaller.
MIN_MICRO_BATCH = 16

# Calibrated constants (the measurements are in the module docstring; OVERHEAD_BYTES,
# ACTIVATION_FACTOR and INFERENCE_FACTOR live with the budget and the model's footprint).
TRAIN_CACHE_COPIES = 2.5  # the training cache, its shuffle buffer, tf.data's slack
IN_MEMORY_COPIES = 1.5  # an in-memory source's array and the split's copy of it


def optimizer_slots(optimizer: str) -> int:
    """Variables the optimizer keeps per weight (momentum, second moments)."""
    return {"sgd": 1, "muon": 1, "rmsprop": 1, "adam": 2, "adamw": 2}.get(str(optimizer), 2)


# ---------------------------------------------------------------------- the data's side
def held_image_bytes(bundle) -> float:
    """Bytes of decoded images the run keeps in memory: the training split's cache and
    its shuffle buffer (:data:`TRAIN_CACHE_COPIES`), the validation and test caches, and
    an in-memory source's arrays (:data:`IN_MEMORY_COPIES`)."""
    total = sum(
        copies * bundle.cached_bytes(split)
        for split, copies in (("train", TRAIN_CACHE_COPIES), ("val", 1.0), ("test", 1.0))
    )
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
    trained_layers: list | None = None,
) -> MemoryEstimate:
    """Estimate the peak resident memory of training ``model`` as ``inputs`` describe, each
    batch computed as micro-batches of ``micro_batch_size`` (default: whole) and scored
    at ``eval_batch`` (default: :func:`eval_batch_size`).

    ``trained_layers`` (default: all) are the layers whose outputs a training step keeps
    for backpropagation: fine-tuning's frozen blocks below them run as in inference
    (their outputs freed layer by layer), so a stage 2 that unfreezes the top quarter of
    MobileNet keeps 8.6 of its 67 MB per 224×224 image; it scores at the micro-batch.

    Example:
        >>> est = estimate_memory(model, MemoryInputs(1024, (32, 32), 3), 256)
        >>> est.line()
        'Memory: ~1.9 GB estimated peak (batch 1024 as 4 micro-batches of 256; no budget)'
    """
    micro = int(micro_batch_size or inputs.batch_size)
    activations = ACTIVATION_FACTOR * micro * activation_bytes(model)
    if trained_layers is not None:
        from cnnlab.models.footprint import output_bytes

        eval_batch = eval_batch or micro
        activations = micro * (
            INFERENCE_FACTOR * inference_bytes(model)
            + ACTIVATION_FACTOR * output_bytes(trained_layers)
        )
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
        activations=activations,
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
    trained_layers: list | None = None,
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
        est = estimate_memory(model, inputs, micro, trained_layers=trained_layers)
        est.budget, est.budget_source = budget, budget_source
        if est.fits:
            return est
    raise over_budget(est, given=micro_batch_size is not None)


def over_budget(est: MemoryEstimate, given: bool = False) -> ConfigError:
    """The refusal of a run whose estimate exceeds its budget at every micro-batch."""
    source = budget_origin(est.budget_source)
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
def plan_fine_tuning(model, cfg: TrainConfig, bundle, trained_layers=None) -> MemoryEstimate:
    """The micro-batch of a fine-tuning run's training stages, logged as one line: its
    whole batch when the estimate fits the budget, else the largest divisor that fits
    (refused when none does), or ``cfg.micro_batch_size`` when given. BatchNorm stays frozen when fine-tuning, so micro-batches
    train exactly as the whole batch. ``trained_layers``: see :func:`estimate_memory`.
    """
    budget, source = resolve_budget(cfg.memory_budget)
    inputs = MemoryInputs.of(cfg, bundle)
    inputs.held_bytes += bundle.cached_bytes("train")  # stage 1's features: cached once more
    est = choose_micro_batch(model, inputs, budget, source, cfg.micro_batch_size, trained_layers)
    if est.micro_batches > 1 and cfg.micro_batch_size is None:
        whole = estimate_memory(model, inputs, trained_layers=trained_layers)
        _log_split(est, whole.total, budget)
    log.info("%s", est.line())
    return est


def plan_whole_batches(model, cfg: TrainConfig, bundle, trained_layers=None) -> MemoryEstimate:
    """Log the estimated peak of training ``model`` in whole batches (``cnnlab lr-find``,
    whose sweep takes a few hundred steps) and return it. Over a budget the user set
    (``memory_budget``, ``$CNNLAB_MEMORY_BUDGET``) the run is refused; over the default
    one (60 % of the memory available, at most 4 GB) it warns.
    """
    budget, source = resolve_budget(cfg.memory_budget)
    est = estimate_memory(
        model,
        MemoryInputs.of(cfg, bundle),
        eval_batch=cfg.batch_size,
        trained_layers=trained_layers,
    )
    est.budget, est.budget_source = budget, source
    if not est.fits and source != "default":
        raise over_budget(est, given=True)
    log.info("%s", est.line())
    if not est.fits:
        log.warning(
            "Memory: the estimate is over the default budget of %s (60%% of the memory "
            "available); a smaller --batch-size or --image-size needs less, and "
            "--memory-budget makes the budget a hard limit",
            format_gb(budget),
        )
    return est


def _log_split(est: MemoryEstimate, whole: float, budget: float | None) -> None:
    log.info(
        "Memory: batch %d needs ~%s, over the budget of %s: computing it as %d "
        "micro-batches of %d (gradients accumulated into one step)",
        est.batch_size,
        format_gb(whole),
        format_gb(budget or 0),
        est.micro_batches,
        est.micro_batch_size,
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
            _log_split(est, estimate_memory(model, inputs).total, budget)
    log.info("%s", est.line())
    return est
