"""Forward and backward time of airbench's GELU and BatchNorm: Keras' layers against cnnlab's fused ones.

One training-mode call and its input gradient, on one activation tensor, timed
alone (the median of ``--repeats`` calls after one warm-up): Keras'
``Activation("gelu")`` against ``cnnlab.nn.layers.GELU`` (one XLA loop each way),
and Keras' ``BatchNormalization`` against ``FusedBatchNorm`` (TensorFlow's
``FusedBatchNormV3``), both without scale or offset as airbench builds them. The
baseline is Keras' layer in the same run; the ratio is baseline / fused.

Usage:
    python bench/fused_layers.py                           # (1024, 31, 31, 48) in bfloat16
    python bench/fused_layers.py --shape 1024,15,15,192 --dtype float32

Results are appended to bench/results/fused_layers.jsonl.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

_common.quiet_tensorflow()


def layer_pairs():
    """(name, Keras' layer, cnnlab's fused layer), as airbench builds them."""
    import keras

    from cnnlab.nn.layers import GELU, FusedBatchNorm

    bn = {"momentum": 0.6, "epsilon": 1e-12, "scale": False, "center": False}
    return [
        ("gelu", keras.layers.Activation("gelu"), GELU()),
        ("batchnorm", keras.layers.BatchNormalization(**bn), FusedBatchNorm(**bn)),
    ]


def time_ms(layer, x, repeats: int) -> float:
    """Median milliseconds of one training-mode call and its input gradient."""
    import tensorflow as tf

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
        return tape.gradient(y, x, output_gradients=tf.ones_like(y))

    step(x).numpy()  # trace, compile, build
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step(x).numpy()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="1024,31,31,48", help="N,H,W,C of the activation")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)

    import keras
    import tensorflow as tf

    if args.dtype == "bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    shape = [int(v) for v in args.shape.split(",")]
    x = tf.cast(tf.random.stateless_normal(shape, seed=[0, 1]) * 2 + 1, args.dtype)
    rows = []
    for name, plain, fused in layer_pairs():
        keras_ms, fused_ms = time_ms(plain, x, args.repeats), time_ms(fused, x, args.repeats)
        row = {
            "layer": name,
            "shape": args.shape,
            "dtype": args.dtype,
            "keras ms": round(keras_ms, 1),
            "fused ms": round(fused_ms, 1),
            "keras / fused": round(keras_ms / fused_ms, 2),
        }
        rows.append(row)
        print(_common.table([row]).splitlines()[-1], flush=True)
    print()
    print(_common.table(rows))
    path = _common.append_result("fused_layers", {"args": vars(args), "rows": rows})
    print(f"\nappended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
