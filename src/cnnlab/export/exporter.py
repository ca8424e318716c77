"""``export_model``: a run's model to every deployment format, each one verified.

    cnnlab.export_model("runs/my-run", formats="all")
    # runs/my-run/export/: model.keras saved_model/ model.tflite model_fp16.tflite
    #                      model_int8.tflite model.onnx labels.txt export.json

Every artifact takes raw 0-255 images (the model's preprocessing is inside) with a
dynamic batch dimension, and is run in its own runtime on up to 512 held-out
images before it counts as exported: an artifact that misses its parity
threshold is deleted and the export fails naming it.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab._io import _json_default, read_json
from cnnlab.errors import ConfigError, DataError, ModelError
from cnnlab.export.formats import FILES, FORMATS, WRITERS, quiet, write_bytes
from cnnlab.export.parity import format_table, measure, run_artifact
from cnnlab.models.footprint import footprint_record
from cnnlab.models.inference import predict_batch
from cnnlab.runtime.artifact import LABELS, MANIFEST

log = logging.getLogger("cnnlab")
MAX_PARITY_IMAGES = 512
REPRESENTATIVE_IMAGES = 200
# The converters' working memory beside the loaded model, every format exported: a fixed
# part plus a multiple of the weights' bytes. A fit to two `cnnlab export RUN --format all`
# runs (peak RSS 1.44 GB for airbench at 32 px, 1.1 M parameters; 3.73 GB for MobileNet
# at 224 px, 3.2 M) after the other parts of the estimate.
CONVERTER_BYTES = 0.2e9
CONVERTER_WEIGHT_COPIES = 80


@dataclass
class ExportResult:
    """Where the files went and what was measured."""

    output_dir: Path
    manifest: dict
    failed: list[str]

    @property
    def files(self) -> dict[str, Path]:
        return {f: self.output_dir / e["file"] for f, e in self.manifest["artifacts"].items()}

    def table(self) -> str:
        rows = [{"format": f, **e} for f, e in self.manifest["artifacts"].items()]
        return format_table(rows)


def parse_formats(formats) -> list[str]:
    """``"all"``, one name, a comma list or a list of names → the formats, in order."""
    names = formats.split(",") if isinstance(formats, str) else list(formats)
    names = [n.strip().lower() for n in names if n.strip()]
    if "all" in names:
        return list(FORMATS)
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise ConfigError(
            f"Unknown export format(s): {', '.join(unknown) or '(none)'}",
            expected=f"all or any of {', '.join(FORMATS)}",
            fix="Pass e.g. --format onnx or --format tflite,tflite-int8",
        )
    return [f for f in FORMATS if f in names]


def _versions() -> dict:
    out = {}
    for pkg in (
        "cnnlab",
        "tensorflow-cpu",
        "tensorflow",
        "keras",
        "tf2onnx",
        "onnx",
        "onnxruntime",
        "ai-edge-litert",
        "numpy",
    ):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _bytes(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def _input_entry(fmt: str, extra: dict) -> dict:
    if fmt == "tflite-int8":
        return {"dtype": "uint8", "quantization": extra.pop("input_quantization")}
    return {"dtype": "float32", "quantization": None}


def export_keras(
    model,
    output: str | os.PathLike,
    formats="all",
    *,
    class_names: list[str],
    images: np.ndarray,
    labels: np.ndarray | None = None,
    representative: np.ndarray | None = None,
    resize: str = "stretch",
    info: dict | None = None,
    thresholds: dict | None = None,
) -> ExportResult:
    """Export a loaded Keras model, checking each artifact on ``images`` (uint8 NHWC).

    ``representative`` (uint8 images, by default ``images``) calibrates int8.
    ``info`` goes into ``export.json`` (source run, model name, test metrics...).
    """
    fmts = parse_formats(formats)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    x = np.asarray(images, np.float32)
    if len(x) == 0:
        raise DataError(
            "No images to check the exported models on", fix="Pass --data with labelled images"
        )
    # Keras' compiled predict step, not an eager call: that keeps every layer's output of
    # the batch alive (4.3 GB for MobileNet at 224 px and 64 images).
    reference = np.concatenate(
        [np.asarray(predict_batch(model, x[i : i + 64]), np.float64) for i in range(0, len(x), 64)]
    )
    rep = x if representative is None else np.asarray(representative, np.float32)
    shape = [None, *[int(v) for v in model.input_shape[1:]]]
    manifest = read_json(out / MANIFEST) if (out / MANIFEST).is_file() else {}
    manifest.update(
        {
            "cnnlab_export": 1,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "class_names": list(class_names),
            "input_shape": shape,
            "input_range": [0, 255],
            "channels": shape[-1],
            "image_size": shape[1:3],
            "resize": resize,
            "output": "probabilities (softmax), float32, one per class in class_names order",
            "versions": _versions(),
            "parity_images": len(x),
            "memory": footprint_record(model),  # for the artifacts' memory estimates
            **(info or {}),
        }
    )
    artifacts = manifest.setdefault("artifacts", {})
    failed = []
    write_bytes(out / LABELS, ("\n".join(class_names) + "\n").encode())
    meta = {"class_names": ",".join(class_names), "resize": resize, "input_range": "0-255"}
    for fmt in fmts:
        path = out / FILES[fmt]
        artifacts.pop(fmt, None)
        start = time.perf_counter()
        try:
            with quiet():
                extra = WRITERS[fmt](model, path, representative=rep, metadata=meta)
        except Exception as e:  # noqa: BLE001 - the converter's reason, in one sentence
            if isinstance(e, ModelError):
                raise
            raise ModelError(
                f"Exporting {model.name} to {fmt} failed ({type(e).__name__}: "
                f"{str(e).strip().splitlines()[0][:300] if str(e).strip() else ''})",
                fix="Run with CNNLAB_DEBUG=1 for the traceback; other formats "
                "can be exported with --format",
            ) from e
        seconds = time.perf_counter() - start
        with quiet():  # LiteRT announces its XNNPACK delegate on stderr
            probs = run_artifact(fmt, path, x)
        parity = measure(fmt, probs, reference, labels, thresholds)
        entry = {
            "format": fmt,
            "file": FILES[fmt],
            "bytes": _bytes(path),
            "input": {"shape": shape, **_input_entry(fmt, extra)},
            **extra,
            "seconds": round(seconds, 2),
            "parity": parity.to_dict(),
        }
        if not parity.passed:
            _remove(path)  # a file that failed its check must not look finished
            entry["file"] = None
            failed.append(f"{fmt} ({'; '.join(parity.problems)})")
        artifacts[fmt] = entry
        log.info(
            "%s: %s, max|Δp| %.2e, agreement %.2f%%",
            fmt,
            FILES[fmt],
            parity.max_abs_diff,
            100 * parity.agreement,
        )
    text = json.dumps(manifest, indent=2, default=_json_default) + "\n"
    write_bytes(out / MANIFEST, text.encode())
    result = ExportResult(out, manifest, failed)
    if failed:
        raise ExportParityError(result, failed)
    return result


class ExportParityError(ModelError):
    """An artifact failed its parity check; ``result`` holds every artifact's figures
    (``result.table()``: the table the CLI prints before this message)."""

    def __init__(self, result: ExportResult, failed: list[str]):
        self.result = result
        super().__init__(
            f"Export parity check failed for {', '.join(failed)}; the failing "
            f"file(s) were deleted, the rest are in {result.output_dir}",
            fix=_parity_fix(failed),
        )


def _parity_fix(failed: list[str]) -> str:
    """What to do about failed parity checks: int8's own causes, else the model's."""
    if not any(f.startswith("tflite-int8") for f in failed):
        return "Check the model, or pass a looser thresholds= in Python"
    others = ",".join(f for f in FORMATS if f != "tflite-int8")
    return (
        "int8 quantisation costs some networks more than a point of accuracy (those "
        "with depthwise convolutions, such as MobileNet, most). Export the other formats "
        f"with --format {others} (tflite-fp16 is half the size at float accuracy), pass "
        "more representative images (--representative-images) if calibration is the "
        "cause, or a looser thresholds= in Python"
    )


def _stratified_rows(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` positions, taken class by class in turn (seeded)."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    rows: list[int] = []
    depth = 0
    while len(rows) < n and any(depth < len(p) for p in per_class):
        rows += [int(p[depth]) for p in per_class if depth < len(p)]
        depth += 1
    return np.sort(np.array(rows[:n], np.int64))


def _images(bundle, split: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for x, y in bundle.subset(split, rows, batch_size=256):
        xs.append(np.asarray(x).astype(np.uint8))
        ys.append(np.argmax(np.asarray(y), axis=-1))
    return np.concatenate(xs), np.concatenate(ys)


def _run_bundle(loaded, data: str | None, data_dir: str | None):
    """The bundle to check on, its held-out split name, and a label map (or None)."""
    from cnnlab.data import load_data
    from cnnlab.data.sources import open_source
    from cnnlab.data.splits import Split
    from cnnlab.evaluation.evaluate import load_test_data

    common = dict(image_size=loaded.image_size, channels=loaded.channels, resize=loaded.resize)
    cfg = loaded.config
    if data is None and cfg.get("test_data"):
        data = cfg["test_data"]
    if data is not None:
        bundle, label_map = load_test_data(data, loaded.class_names, data_dir=data_dir, **common)
        return bundle, "test", label_map
    if loaded.run_dir is None:
        raise DataError(
            f"{loaded.model_path} is not inside a run folder, so there are no "
            "held-out images to check the exports on",
            fix="Pass --data SPEC with labelled images",
        )
    source = open_source(cfg["data"], cfg.get("data_dir") or data_dir)
    saved = Split.load(loaded.run_dir / "split.csv", source)
    bundle = load_data(
        cfg["data"],
        data_dir=cfg.get("data_dir") or data_dir,
        split=saved,
        scan=False,
        augment="none",
        **common,
    )
    split = "test" if len(bundle.examples("test")["labels"]) else "val"
    return bundle, split, None


def _plan_memory(loaded, max_images: int, representative_images: int):
    """Log the export's estimated peak (the model run at batch 64 on the parity and
    calibration images, and the converters), refused when over the memory budget."""
    from cnnlab.evaluation.memory import plan_inference

    h, w = loaded.image_size
    images = (2 * max_images + representative_images) * h * w * loaded.channels * 4.0
    return plan_inference(
        loaded.model,
        64,
        loaded.image_size,
        loaded.channels,
        what="export",
        held_bytes=images,
        shrink=False,
        fix="Pass a smaller --max-images, or fewer --format",
        extra_overhead=CONVERTER_BYTES
        + CONVERTER_WEIGHT_COPIES * 4.0 * loaded.model.count_params(),
    )


def export_model(
    model_or_run,
    formats="all",
    output: str | os.PathLike | None = None,
    *,
    data: str | None = None,
    data_dir: str | None = None,
    max_images: int = MAX_PARITY_IMAGES,
    representative_images: int = REPRESENTATIVE_IMAGES,
    thresholds: dict | None = None,
) -> ExportResult:
    """Export a run folder's (or ``.keras`` file's) model and check every artifact.

    Parity images: up to ``max_images`` of the run's held-out split (test, else
    val), or of ``data`` (a spec). int8 calibration: ``representative_images``
    drawn class by class from the run's training split. Files go to
    ``output`` (default ``<run>/export``); the result's ``table()`` is the parity table.

    Example:
        >>> result = export_model("runs/my-run", formats=["onnx", "tflite-int8"])
        >>> print(result.table())
    """
    from cnnlab.models.saving import load_for_inference

    fmts = parse_formats(formats)
    loaded = load_for_inference(model_or_run)
    _plan_memory(loaded, max_images, representative_images if "tflite-int8" in fmts else 0)
    bundle, split, label_map = _run_bundle(loaded, data, data_dir)
    seed = int(loaded.config.get("seed", 42))
    held = bundle.examples(split)["labels"]
    if len(held) == 0 or max_images < 1:
        raise DataError(
            f"No held-out images to check the exported files on ({split} split of "
            f"{bundle.source.spec} is empty)"
            if len(held) == 0
            else f"--max-images must be at least 1; received {max_images}",
            fix="Pass --data SPEC with labelled images",
        )
    rows = np.sort(np.random.default_rng(seed).permutation(len(held))[:max_images])
    images, labels = _images(bundle, split, rows)
    if label_map is not None:
        labels = label_map[labels]
    representative = None
    if "tflite-int8" in fmts:
        train = bundle.examples("train")["labels"]
        rep_split = "train" if len(train) else split
        pool = train if len(train) else held
        representative, _ = _images(
            bundle, rep_split, _stratified_rows(pool, representative_images, seed)
        )
    base = loaded.run_dir or loaded.model_path.parent
    out = Path(output) if output else base / "export"
    metrics = {}
    if loaded.run_dir is not None and (loaded.run_dir / "metrics.json").is_file():
        metrics = read_json(loaded.run_dir / "metrics.json")
    info = {
        "source_run": str(loaded.run_dir.resolve()) if loaded.run_dir else None,
        "source_model": str(Path(loaded.model_path).resolve()),
        "model": loaded.config.get("model", loaded.model.name),
        "parity_data": data or f"{loaded.config.get('data')} ({split} split)",
        "test_metrics": {
            k: v
            for k, v in (metrics.get("test") or {}).items()
            if isinstance(v, (int, float, str)) and not isinstance(v, bool)
        },
    }
    return export_keras(
        loaded.model,
        out,
        fmts,
        class_names=loaded.class_names,
        images=images,
        labels=labels,
        representative=representative,
        resize=loaded.resize,
        info=info,
        thresholds=thresholds,
    )
