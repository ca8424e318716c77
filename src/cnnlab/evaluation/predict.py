"""``predict``: top-k labels for image files and folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cnnlab.errors import DataError
from cnnlab.evaluation.memory import plan_inference


def expand_paths(paths) -> list[str]:
    """Files as given; folders searched recursively for image files (sorted)."""
    from cnnlab.data.sources import _image_files

    out: list[str] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out += _image_files(p)
        elif p.is_file():
            out.append(str(p))
        else:
            raise DataError(f"{p} does not exist", fix="Check the image paths given to predict")
    if not out:
        raise DataError(
            f"No image files found in {', '.join(map(str, paths))}",
            expected="JPEG, PNG, GIF, BMP or WebP files",
        )
    return out


def predict(model, paths, *, top_k: int = 3, batch_size: int = 32) -> list[dict]:
    """Classify image files (and folders of them) with a run folder, ``.keras`` file or loaded model.

    Returns one dict per file: ``{"path", "top": [{"label", "probability"}, ...]}``,
    or ``{"path", "error"}`` for a file that cannot be decoded.

    Example:
        >>> for row in predict("runs/my-run", ["photos/"]):
        ...     print(row["path"], row["top"][0]["label"])
    """
    import tensorflow as tf

    from cnnlab.data.pipeline import apply_options, decode_file, make_resizer, to_uint8
    from cnnlab.data.scan import scan_images
    from cnnlab.models.inference import predict_batch
    from cnnlab.models.saving import LoadedModel, load_for_inference
    from cnnlab.runtime import Artifact, is_artifact, load_artifact

    if isinstance(model, (LoadedModel, Artifact)):
        loaded = model
    else:  # an exported .tflite/.onnx/SavedModel runs in its own runtime (same interface)
        loaded = (load_artifact if is_artifact(model) else load_for_inference)(model)
    files = expand_paths(paths if isinstance(paths, (list, tuple)) else [paths])
    infos = scan_images(files)
    good = [i.path for i in infos if i.ok]
    results: dict[str, dict] = {
        i.path: {"path": i.path, "error": i.problem} for i in infos if not i.ok
    }
    if good:
        batch_size = plan_inference(
            loaded.model, batch_size, loaded.image_size, loaded.channels, what="prediction"
        ).batch_size
        resizer = make_resizer(loaded.image_size, loaded.resize)
        ds = tf.data.Dataset.from_tensor_slices(np.array(good))
        ds = ds.map(
            lambda p: tf.cast(to_uint8(resizer(decode_file(p, loaded.channels))), tf.float32),
            num_parallel_calls=tf.data.AUTOTUNE,
        ).batch(batch_size)
        ds = apply_options(ds)
        probs = np.concatenate([predict_batch(loaded.model, x) for x in ds])
        k = min(top_k, probs.shape[1])
        for path, p in zip(good, probs):
            order = np.argsort(-p)[:k]
            results[path] = {
                "path": path,
                "top": [
                    {"label": loaded.class_names[j], "probability": float(p[j])} for j in order
                ],
            }
    return [results[f] for f in files]


def format_predictions(rows: list[dict], fmt: str = "table") -> str:
    """Render predict() output as an aligned table, CSV or JSON."""
    import csv
    import io
    import json

    if fmt == "json":
        return json.dumps(rows, indent=2)
    k = max((len(r.get("top", [])) for r in rows), default=0)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(
            ["path"] + [f"{c}{i}" for i in range(1, k + 1) for c in ("label", "prob")] + ["error"]
        )
        for r in rows:
            cells = [c for t in r.get("top", []) for c in (t["label"], f"{t['probability']:.4f}")]
            cells += [""] * (2 * k - len(cells))
            w.writerow([r["path"], *cells, r.get("error", "")])
        return buf.getvalue()
    width = min(60, max(len(os.path.basename(r["path"])) for r in rows))
    lines = []
    for r in rows:
        name = os.path.relpath(r["path"]) if len(rows) < 2 else r["path"]
        name = name if len(name) <= 60 else "…" + name[-59:]
        if "error" in r:
            lines.append(f"{name:<{width}}  ERROR: {r['error']}")
        else:
            tops = "   ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top"])
            lines.append(f"{name:<{width}}  {tops}")
    return "\n".join(lines)
