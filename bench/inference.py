"""Inference latency and throughput per deployment format, and file sizes.

Two models: MobileNetV2-224 with ImageNet weights (``KERAS_HOME=../shared/keras``;
cnnlab's 5-class head, untrained: latency does not depend on it) and the CIFAR-10
fast recipe's network (airbench at width 0.75, 32 px, in-model TTA; untrained,
whitening from CIFAR-10 images). Each is exported with ``cnnlab.export`` (so every
file passed its fp32 parity check) and timed in its own runtime at batch 1 and 32:
Keras ``model.predict``, SavedModel (``tf.saved_model.load``), ONNX Runtime, LiteRT
fp32 and int8 (2 threads each, the machine's cores). Latency p50/p99 per call;
throughput = images per second at the mean latency. All runtimes are timed in the
same process and run, so their ratios are comparable even on a busy machine.

    python bench/inference.py                       # both models
    python bench/inference.py --models airbench --seconds 4
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CIFAR_ZIP, SHARED, append_result, quiet_tensorflow, table  # noqa: E402

FORMATS = ["savedmodel", "tflite", "tflite-int8", "onnx"]


def cifar_images(n: int) -> np.ndarray:
    from PIL import Image

    out = []
    with zipfile.ZipFile(CIFAR_ZIP) as z:
        names = sorted(f for f in z.namelist() if f.startswith("test/") and f.endswith(".jpg"))
        for name in names[:: max(1, len(names) // n)][:n]:
            out.append(np.asarray(Image.open(io.BytesIO(z.read(name))).convert("RGB")))
    return np.stack(out)


def photo_images(size: int) -> np.ndarray:
    from PIL import Image

    files = sorted(p for p in (SHARED / "images").iterdir() if p.suffix in (".png", ".jpg"))
    imgs = [
        np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR)) for p in files
    ]
    imgs += [im[:, ::-1] for im in imgs]  # mirrored: 16 calibration images
    return np.stack(imgs)


def build(name: str):
    """The model and real images for parity and int8 calibration."""
    from cnnlab.models import create_model

    if name == "mobilenet_v2":
        model = create_model("mobilenet_v2", 5, 224, 3, weights="imagenet")
        return model, photo_images(224)
    from cnnlab.models.scratch.airbench import init_whitening

    model = create_model("airbench", 10, 32, 3, width=0.75)
    images = cifar_images(256)
    init_whitening(model, images.astype(np.float32))
    return model, images


def timed(fn, x: np.ndarray, seconds: float, min_calls: int = 10) -> dict:
    for _ in range(3):
        fn(x)
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < min_calls:
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1000
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "images_per_s": float(len(x) / (ms.mean() / 1000)),
        "calls": len(ms),
    }


def runners(model, out: Path, threads: int) -> dict:
    import tensorflow as tf

    from cnnlab.runtime import load_artifact

    saved = tf.saved_model.load(str(out / "saved_model"))
    return {
        "keras predict": lambda x: model.predict(x, batch_size=len(x), verbose=0),
        "savedmodel": lambda x: saved.serve(tf.constant(x, tf.float32)).numpy(),
        "onnxruntime": load_artifact(out / "model.onnx", threads=threads).predict,
        "litert fp32": load_artifact(out / "model.tflite", threads=threads).predict,
        "litert int8": load_artifact(out / "model_int8.tflite", threads=threads).predict,
    }


def bench_model(name: str, seconds: float, threads: int, keep: Path | None) -> dict:
    from cnnlab.export import export_keras

    model, images = build(name)
    out = keep / name if keep else Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    start = time.perf_counter()
    result = export_keras(
        model,
        out,
        FORMATS,
        class_names=[str(i) for i in range(model.output_shape[-1])],
        images=images,
        representative=images,
    )
    export_s = time.perf_counter() - start
    sizes = {f: e["bytes"] for f, e in result.manifest["artifacts"].items()}
    parity = {
        f: {
            "max_abs_diff": e["parity"]["max_abs_diff"],
            "top1_agreement": e["parity"]["top1_agreement"],
        }
        for f, e in result.manifest["artifacts"].items()
    }
    rows = []
    rng = np.random.default_rng(0)
    for batch in (1, 32):
        x = images[rng.integers(0, len(images), batch)].astype(np.float32)
        for runtime, fn in runners(model, out, threads).items():
            rows.append(
                {"model": name, "runtime": runtime, "batch": batch, **timed(fn, x, seconds)}
            )
            print(
                f"  {name:<13} {runtime:<14} batch {batch:>2}: p50 {rows[-1]['p50_ms']:8.2f} ms",
                flush=True,
            )
    b1 = {r["runtime"]: r["p50_ms"] for r in rows if r["batch"] == 1}
    ratios = {
        "keras_predict_over_onnxruntime_b1": b1["keras predict"] / b1["onnxruntime"],
        "keras_predict_over_litert_fp32_b1": b1["keras predict"] / b1["litert fp32"],
        "keras_predict_over_litert_int8_b1": b1["keras predict"] / b1["litert int8"],
        "int8_over_fp32_tflite_size": sizes["tflite-int8"] / sizes["tflite"],
    }
    return {
        "model": name,
        "rows": rows,
        "sizes_bytes": sizes,
        "parity": parity,
        "ratios": ratios,
        "export_seconds": export_s,
        "export_dir": str(out),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mobilenet_v2,airbench")
    parser.add_argument("--seconds", type=float, default=6.0, help="timing per cell")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", help="keep the exported files in this folder")
    args = parser.parse_args()
    os.environ.setdefault("KERAS_HOME", str(SHARED / "keras"))
    quiet_tensorflow()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    results = [
        bench_model(m, args.seconds, args.threads, Path(args.keep) if args.keep else None)
        for m in args.models.split(",")
    ]
    rows = [r for res in results for r in res["rows"]]
    print(table(rows, ["model", "runtime", "batch", "p50_ms", "p99_ms", "images_per_s"]))
    for res in results:
        sizes = ", ".join(f"{f} {b / 1e6:.2f} MB" for f, b in res["sizes_bytes"].items())
        print(f"{res['model']}: {sizes}")
        print(f"{res['model']}: " + ", ".join(f"{k} {v:.2f}" for k, v in res["ratios"].items()))
    path = append_result("inference", {"args": vars(args), "results": results})
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
