"""Peak resident memory of training and scoring steps, to calibrate cnnlab.training.memory.

Each row runs in its own subprocess, so its peak (``getrusage(RUSAGE_SELF).ru_maxrss``)
is its own: the model is built and compiled with the fast recipe's optimizer, the
peak is read (``base``), then a few training steps (or scoring calls, with the
model's test-time views) run on random 32×32×3 data and the peak is read again;
images/s is timed after a first, tracing step (compare rows of one run only: the
machine may be shared).
The table holds both, the estimator's per-image numbers, and what the estimator
predicts, so its constants can be checked against the machine:

    python bench/memory_calibration.py                          # airbench 0.75, batches 64-1024
    python bench/memory_calibration.py --batches 64,256 --micro 4   # 4 micro-batches each
    python bench/memory_calibration.py --modes infer,infer-eager --batches 64,128,256

Run it under ``nice``: it is short (a minute or two) but uses both cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

_common.quiet_tensorflow()


def _peak_bytes() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0


def child(args) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from cnnlab.config import TrainConfig
    from cnnlab.models import create_model
    from cnnlab.training import memory
    from cnnlab.training.fit import compile_model
    from cnnlab.training.recipes import apply_recipe

    keras.utils.set_random_seed(0)
    batch, micro = args.batch, args.batch // args.micro
    model = create_model("airbench", 10, (32, 32), 3, width=args.width)
    cfg, _ = apply_recipe(
        TrainConfig(recipe="fast", batch_size=batch), {"batch_size"}, (32, 32), 50_000
    )
    compile_model(model, cfg, 50, 10, accumulation_steps=args.micro)
    rng = np.random.default_rng(0)
    base = _peak_bytes()
    if args.mode == "train":
        x = rng.uniform(0, 255, (micro, 32, 32, 3)).astype("float32")
        y = np.eye(10, dtype="float32")[rng.integers(0, 10, micro)]
        model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(args.micro), verbose=0)  # traces
        ds = tf.data.Dataset.from_tensors((x, y)).repeat(args.steps * args.micro)
        t0 = time.perf_counter()
        model.fit(ds, epochs=1, verbose=0)
        speed = args.steps * batch / (time.perf_counter() - t0)
    elif args.mode == "infer-eager":  # what cnnlab's scoring did before: model(x) eagerly
        x = rng.uniform(0, 255, (batch, 32, 32, 3)).astype("float32")
        t0 = time.perf_counter()
        for _ in range(args.steps):
            np.asarray(model(x, training=False))
        speed = args.steps * batch / (time.perf_counter() - t0)
    else:  # infer: Keras' compiled predict step (a tf.function), as scoring now runs
        x = rng.uniform(0, 255, (batch, 32, 32, 3)).astype("float32")
        np.asarray(model.predict_on_batch(x))
        t0 = time.perf_counter()
        for _ in range(args.steps):
            np.asarray(model.predict_on_batch(x))
        speed = args.steps * batch / (time.perf_counter() - t0)
    inputs = memory.MemoryInputs(batch, (32, 32), 3, optimizer="sgd", lookahead=False)
    est = memory.estimate_memory(model, inputs, micro, eval_batch=batch)
    return {
        "mode": args.mode,
        "width": args.width,
        "batch": batch,
        "micro": micro,
        "base_mb": round(base / 1e6),
        "peak_mb": round(_peak_bytes() / 1e6),
        "delta_mb": round((_peak_bytes() - base) / 1e6),
        "images_per_s": round(speed),
        "act_kb_per_image": round(memory.activation_bytes(model) / 1e3, 1),
        "infer_kb_per_image": round(memory.inference_bytes(model) / 1e3, 1),
        "estimated_mb": round(
            (
                est.overhead
                + est.parameters
                + (est.activations if args.mode == "train" else est.inference)
            )
            / 1e6
        ),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--width", type=float, default=0.75)
    p.add_argument("--batches", default="64,128,256,512,1024")
    p.add_argument("--modes", default="train,infer")
    p.add_argument("--micro", type=int, default=1, help="micro-batches per batch (train)")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="train", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=64, help=argparse.SUPPRESS)
    p.add_argument("--no-save", action="store_true", help="do not append to bench/results")
    args = p.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return
    rows = []
    for mode in args.modes.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            micro = args.micro if mode == "train" else 1
            cmd = [sys.executable, __file__, "--child", "--mode", mode, "--batch", str(batch)]
            cmd += ["--width", str(args.width), "--micro", str(micro), "--steps", str(args.steps)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if not line:
                print(out.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"child failed: {' '.join(cmd)}")
            rows.append(json.loads(line[-1][len("RESULT ") :]))
            print(_common.table(rows[-1:]), flush=True)
    print(_common.table(rows))
    if not args.no_save:
        _common.append_result("memory_calibration", {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
