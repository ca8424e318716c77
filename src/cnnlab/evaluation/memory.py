"""The memory plan of scoring, prediction and export: one line on start, and a smaller
batch (or a refusal) when the requested one would not fit the budget.

The estimate is :func:`cnnlab.models.footprint.inference_estimate`; the budget is
``$CNNLAB_MEMORY_BUDGET``, else 60 % of the memory available within 2-4 GB
(:mod:`cnnlab.memory`).
"""

from __future__ import annotations

import logging

from cnnlab.memory import Estimate, fit_batch, format_gb, resolve_budget

log = logging.getLogger("cnnlab")


def plan_inference(
    model,
    batch_size: int,
    image_size,
    channels: int,
    *,
    what: str = "scoring",
    held_bytes: float = 0.0,
    fix: str = "Pass a smaller --batch-size",
    shrink: bool = True,
    extra_overhead: float = 0.0,
) -> Estimate:
    """Log the estimated peak of running ``model`` over batches of ``batch_size`` and
    return it; over the budget, the largest power-of-two batch that fits is planned
    instead (``shrink``) or the run is refused naming ``fix``. ``extra_overhead`` is
    memory the command needs besides running the model (an exporter's converters).

    Example:
        >>> plan_inference(model, 64, (32, 32), 3).batch_size
        64
    """
    from cnnlab.memory import OVERHEAD_BYTES
    from cnnlab.models.footprint import inference_estimate

    budget, source = resolve_budget()
    pixels = int(image_size[0]) * int(image_size[1]) * int(channels)

    def estimate(batch: int) -> Estimate:
        est = inference_estimate(
            model,
            batch,
            pixels,
            what=what,
            held_bytes=held_bytes,
            overhead=OVERHEAD_BYTES + extra_overhead,
        )
        est.budget, est.budget_source = budget, source
        return est

    est = fit_batch(estimate, batch_size, fix, shrink=shrink)
    if est.batch_size != batch_size:
        log.info(
            "Memory: %s at batch %d needs ~%s, over the budget of %s: running batches of %d",
            what,
            batch_size,
            format_gb(estimate(batch_size).total, 2),
            format_gb(budget or 0, 2),
            est.batch_size,
        )
    log.info("%s", est.line())
    return est
