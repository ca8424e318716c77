"""Training and inference images/s of cnnlab's models on this machine, against its matmul peak.

For each model (32×32×3 input, 10 classes, random data so only compute is
timed): forward FLOPs per image (counted from the layers: 2·MACs of every
convolution and dense layer), training and inference images/s, and the share
of the measured peak matmul FLOP/s they reach (training counted as 3× the
forward FLOPs). ``--variants`` adds bf16 mixed precision and XLA
(``jit_compile``) runs, to decide whether the fast recipe should use them.

Usage:
    python bench/throughput.py                                  # default models, fp32
    python bench/throughput.py --models airbench:0.5 --variants fp32,bf16,xla
    python bench/throughput.py --models airbench-plain:0.75,airbench:0.75 --variants fp32,bf16
    python bench/throughput.py --seconds 5 --batch 256

Results are appended to bench/results/throughput.jsonl. The CPU may be shared:
compare rows of one run only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

_common.quiet_tensorflow()

DEFAULT_MODELS = "airbench:0.5,airbench:1.0,keras_example,simple_cnn,resnet20"


def keras_example_cnn(num_classes: int = 10, input_shape=(32, 32, 3)):
    """The classic Keras ``cifar10_cnn.py`` network (the seed's model): conv32-32, pool,
    conv64-64, pool, dense 512, dropout; input rescaled to 0-1 inside."""
    import keras
    from keras import layers

    return keras.Sequential(
        [
            keras.Input(input_shape),
            layers.Rescaling(1 / 255),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Dropout(0.25),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Dropout(0.25),
            layers.Flatten(),
            layers.Dense(512, activation="relu"),
            layers.Dropout(0.5),
            layers.Dense(num_classes, activation="softmax", dtype="float32"),
        ],
        name="keras_example",
    )


def build(name: str):
    """``airbench:WIDTH``, ``airbench-plain:WIDTH`` (Keras' own GELU and BatchNorm layers
    instead of the fused ones), ``keras_example`` or any registered cnnlab model name."""
    if name == "keras_example":
        return keras_example_cnn()
    from cnnlab.models import create_model

    if name.startswith("airbench"):
        family, _, width = name.partition(":")
        fused = family != "airbench-plain"
        return create_model("airbench", 10, 32, 3, width=float(width or 1), tta=0, fused=fused)
    return create_model(name, 10, 32, 3)


def forward_flops(model) -> int:
    """2 × multiply-adds of the Conv2D, DepthwiseConv2D, Dense and whitening layers, per image."""
    from keras import layers

    total = 0
    for layer in model.layers:
        try:
            out = layer.output.shape
            inp = layer.input.shape
        except (AttributeError, ValueError):
            continue
        if isinstance(layer, layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            total += 2 * out[1] * out[2] * kh * kw * out[3]
        elif isinstance(layer, layers.Conv2D) or type(layer).__name__ == "PatchWhitening":
            kh, kw = layer.kernel.shape[:2]
            total += (
                2 * out[1] * out[2] * kh * kw * inp[-1] * out[-1] // getattr(layer, "groups", 1)
            )
        elif isinstance(layer, layers.Dense):
            total += 2 * inp[-1] * out[-1]
    return int(total)


def measure(model, batch: int, seconds: float, jit: bool) -> tuple[float, float]:
    """(training images/s, inference images/s) on random data, after a warm-up."""
    import keras
    import numpy as np

    x = np.random.default_rng(0).uniform(0, 255, (batch, 32, 32, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(batch) % 10, 10)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True),
        loss="categorical_crossentropy",
        jit_compile=jit,
    )

    def rate(step) -> float:
        step(), step()  # warm-up: tracing and oneDNN kernel selection
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n < 2:
            step()
            n += 1
        return n * batch / (time.perf_counter() - t0)

    train = rate(lambda: model.train_on_batch(x, y))
    infer = rate(lambda: model.predict_on_batch(x))
    return train, infer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated [{DEFAULT_MODELS}]")
    ap.add_argument("--variants", default="fp32", help="comma-separated of fp32, bf16, xla [fp32]")
    ap.add_argument("--batch", type=int, default=256, help="images per step [256]")
    ap.add_argument("--seconds", type=float, default=8.0, help="timing per measurement [8]")
    args = ap.parse_args(argv)

    import keras
    import tensorflow as tf  # noqa: F401 - versions in the record

    peaks = {"fp32": _common.peak_matmul_flops("float32")}
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if "bf16" in variants:
        peaks["bf16"] = _common.peak_matmul_flops("bfloat16")
    print(
        f"peak matmul: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s"
        + (f", bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s" if "bf16" in peaks else ""),
        flush=True,
    )
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        for variant in variants:
            # clear_session() resets the global dtype policy, so the policy comes after it
            # (set before it, every "bf16" row measured float32 until 2026-12-01).
            keras.utils.clear_session()
            keras.mixed_precision.set_global_policy(
                "mixed_bfloat16" if variant == "bf16" else "float32"
            )
            model = build(name)
            if variant == "bf16" and not any(
                layer.compute_dtype == "bfloat16" for layer in model.layers
            ):
                raise RuntimeError(f"{name} was not built in bfloat16")
            flops = forward_flops(model)
            train, infer = measure(model, args.batch, args.seconds, jit=variant == "xla")
            peak = peaks["bf16" if variant == "bf16" else "fp32"]
            row = {
                "model": name,
                "variant": variant,
                "params": model.count_params(),
                "MFLOP/img": flops / 1e6,
                "train img/s": train,
                "infer img/s": infer,
                "train % peak": 100 * 3 * flops * train / peak,
                "infer % peak": 100 * flops * infer / peak,
            }
            rows.append(row)
            print(_common.table([row]).splitlines()[-1], flush=True)
    keras.mixed_precision.set_global_policy("float32")
    print()
    print(_common.table(rows))
    path = _common.append_result(
        "throughput", {"args": vars(args), "peak_flops": peaks, "rows": rows}
    )
    print(f"\nappended to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
