"""The evaluation report: one HTML page (and a JSON file with the same numbers) per run.

``write_report(run)`` looks at a trained model from every side a user asks
about, in pictures first:

* learning curves (loss, accuracy, train and validation, learning rate);
* per-class precision, recall, F1 and support with macro and weighted averages;
* the confusion matrix as counts and row-normalised, and the most-confused pairs;
* a gallery of the worst mistakes (highest loss);
* calibration: ECE, a reliability diagram, temperature scaling fitted on validation;
* test-time augmentation: accuracy with and without it;
* Grad-CAM heat maps for a few right and wrong predictions;
* a summary of the data and the run (sizes, model, parameters, time, versions).

The HTML is self-contained (inline CSS, images as base64 PNG, no script, no
link outside the file), so it opens from disk, offline, or as an attachment.
Work that grows with the test set (TTA, gallery, Grad-CAM) is bounded by
:class:`ReportLimits` and the page says when it used a sample.

Written to ``<run>/report.html`` and ``report.json`` at the end of training,
to ``<evaluation folder>/report.*`` by ``evaluate``, and by ``cnnlab report RUN``.
"""

from __future__ import annotations

import csv
import datetime as _dt
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab import _html as H
from cnnlab._io import read_json, write_json, write_text
from cnnlab.errors import RunError
from cnnlab.run_folder import RunFolder, read_history

log = logging.getLogger("cnnlab")

SECTIONS = (
    ("summary", "Summary"),
    ("curves", "Learning curves"),
    ("per-class", "Per-class metrics"),
    ("confusion", "Confusion matrix"),
    ("confused-pairs", "Most confused pairs"),
    ("mistakes", "Worst mistakes"),
    ("calibration", "Calibration"),
    ("tta", "Test-time augmentation"),
    ("gradcam", "Grad-CAM"),
)
SECTION_IDS = tuple(s for s, _ in SECTIONS)


@dataclass
class ReportLimits:
    """Bounds that keep a report to seconds on tiny runs and well under a minute on CIFAR."""

    gallery: int = 24  # worst mistakes shown
    gradcam_correct: int = 4
    gradcam_wrong: int = 4
    # On CPU, a CIFAR-size model predicts a few hundred to a few thousand images per
    # second: these two bound the report's extra forward passes to about 7,000.
    tta_examples: int = 1000  # TTA costs len(views) - 1 forward passes per example
    temperature_examples: int = 2000  # validation predictions used to fit T (one number)
    confused_pairs: int = 20
    calibration_bins: int = 15
    seed: int = 0


@dataclass
class ReportResult:
    """Where the report went, and its numbers (the content of report.json)."""

    html: Path
    json: Path
    data: dict
    seconds: float


# --------------------------------------------------------------------------- inputs
def _read(run_dir: Path | None, name: str) -> Any:
    if run_dir is None or not (run_dir / name).is_file():
        return None
    try:
        if name.endswith(".json"):
            return read_json(run_dir / name)
        import yaml

        return yaml.safe_load((run_dir / name).read_text())
    except Exception:  # noqa: BLE001 - a damaged side file only blanks its part of the report
        return None


def _load_bundle(run_dir: Path, loaded, batch_size: int):
    """The run's data with its saved split, as ``evaluate`` does (works for builtin sources too)."""
    from cnnlab.data import load_data
    from cnnlab.data.sources import open_source
    from cnnlab.data.splits import Split

    cfg = loaded.config
    source = open_source(cfg["data"], cfg.get("data_dir"))
    saved = Split.load(run_dir / "split.csv", source)
    return load_data(
        cfg["data"],
        data_dir=cfg.get("data_dir"),
        split=saved,
        scan=False,
        image_size=loaded.image_size,
        channels=loaded.channels,
        batch_size=batch_size,
        resize=loaded.resize,
        augment="none",
    )


def subset_dataset(bundle, split: str, rows: np.ndarray):
    """A pipeline (no augmentation, no cache) over ``rows`` (positions within ``split``)."""
    from cnnlab.data.pipeline import make_dataset

    ex = bundle.examples(split)
    rows = np.asarray(rows, np.int64)
    kw = {"images": ex["images"][rows]} if "images" in ex else {"paths": ex["paths"][rows]}
    return make_dataset(
        ex["labels"][rows],
        num_classes=bundle.num_classes,
        image_size=bundle.image_size,
        channels=bundle.channels,
        batch_size=256,
        resize=bundle.resize,
        cache="none",
        **kw,
    )


def model_inputs(bundle, split: str, rows: np.ndarray) -> np.ndarray:
    """The images of ``rows`` (positions within ``split``) exactly as the model takes them."""
    rows = np.asarray(rows, np.int64)
    if len(rows) == 0:
        return np.zeros((0, *bundle.image_size, bundle.channels), np.float32)
    x = np.concatenate([np.asarray(b[0]) for b in subset_dataset(bundle, split, rows)])
    if len(x) != len(rows):
        raise RunError(
            f"{len(rows) - len(x)} image(s) of the {split} split could not be read again",
            fix="Check that the data folder has not changed since training",
        )
    return x


def _display_images(
    bundle, split: str, rows: np.ndarray, max_side: int = 160
) -> list[bytes | None]:
    """PNG thumbnails as users know the images: the file itself, or the in-memory array."""
    ex = bundle.examples(split)
    if "paths" in ex:
        return [H.file_png(str(ex["paths"][r]), max_side) for r in rows]
    return [H.array_png(ex["images"][r], max_side) for r in rows]


def _example_name(bundle, split: str, row: int) -> str:
    ex = bundle.examples(split)
    if "paths" in ex:
        return str(ex["paths"][row])
    return f"{bundle.source.spec} #{int(ex['indices'][row])}"


# --------------------------------------------------------------------------- analysis
def most_confused(cm: np.ndarray, class_names: list[str], top: int = 20) -> list[dict]:
    """Off-diagonal cells of a confusion matrix (rows true), largest count first.

    Example:
        >>> most_confused(np.array([[5, 2], [0, 3]]), ["cat", "dog"])
        [{'true': 'cat', 'predicted': 'dog', 'count': 2, 'share_of_true': 0.2857...}]
    """
    cm = np.asarray(cm)
    support = cm.sum(axis=1)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")
    out = []
    for flat in order[:top]:
        i, j = divmod(int(flat), cm.shape[1])
        if off[i, j] <= 0:
            break
        out.append(
            {
                "true": class_names[i],
                "predicted": class_names[j],
                "count": int(off[i, j]),
                "share_of_true": float(off[i, j] / max(support[i], 1)),
            }
        )
    return out


def _pyplot():
    from cnnlab.evaluation.plots import _pyplot as p

    return p()


def _curves_png(history: dict[str, list[float]]) -> bytes | None:
    if not history or "loss" not in history:
        return None
    plt = _pyplot()
    epochs = np.arange(1, len(history["loss"]) + 1)
    panels = [("loss", "loss"), ("accuracy", "accuracy")]
    if "learning_rate" in history:
        panels.append(("learning_rate", "learning rate"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.3))
    marker = "o" if len(epochs) <= 30 else None
    for ax, (key, label) in zip(np.atleast_1d(axes), panels):
        if key in history:
            ax.plot(
                epochs,
                history[key],
                marker=marker,
                ms=3,
                label="train" if key != "learning_rate" else None,
                color="#4c78a8",
            )
        if f"val_{key}" in history:
            ax.plot(
                epochs,
                history[f"val_{key}"],
                marker=marker,
                ms=3,
                label="validation",
                color="#f58518",
            )
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if key == "learning_rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        elif ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        if len(epochs) <= 20:
            ax.set_xticks(epochs)
        else:
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return H.fig_png(fig)


def _matrix_png(matrix: np.ndarray, class_names: list[str], normalised: bool) -> bytes:
    """A confusion-matrix heat map sized so that 100 classes stay legible (scroll, don't shrink)."""
    plt = _pyplot()
    n = len(class_names)
    cell = 0.32 if n <= 30 else 0.16  # inches per class
    size = max(4.5, cell * n + 2.2)
    fig, ax = plt.subplots(figsize=(size + 0.8, size))
    shown = matrix
    if normalised and n > 30:
        from matplotlib.colors import PowerNorm

        # Square-root colours: with many classes, the confusions worth seeing are 1-5 %.
        im = ax.imshow(shown, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=1))
    elif normalised:
        im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1)
    else:
        from matplotlib.colors import LogNorm, Normalize

        # A log scale keeps the few-error cells visible next to the big diagonal.
        vmax = max(float(shown.max()), 1.0)
        norm = LogNorm(vmin=1, vmax=vmax) if vmax > 10 else Normalize(0, vmax)
        im = ax.imshow(
            np.where(shown > 0, shown, np.nan) if vmax > 10 else shown, cmap="Blues", norm=norm
        )
    fig.colorbar(
        im,
        ax=ax,
        fraction=0.046,
        pad=0.03,
        label="share of the true class" if normalised else "images",
    )
    fontsize = 8 if n <= 30 else 6
    ticks = np.arange(n)
    ax.set_xticks(ticks, class_names, rotation=90, fontsize=fontsize)
    ax.set_yticks(ticks, class_names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(
        ("row-normalised (recall on the diagonal)" if normalised else "counts")
        + (", square-root colours" if normalised and n > 30 else "")
    )
    if n > 30:  # a light grid every 10 classes to find one's way across the rows
        for k in range(10, n, 10):
            ax.axhline(k - 0.5, color="#bbbbbb", lw=0.4)
            ax.axvline(k - 0.5, color="#bbbbbb", lw=0.4)
    if n <= 30:
        top = np.nanmax(shown) if shown.size else 1
        for i in range(n):
            for j in range(n):
                v = shown[i, j]
                if v:
                    text = f"{v:.2f}".lstrip("0") if normalised else f"{int(v)}"
                    ax.text(
                        j,
                        i,
                        text,
                        ha="center",
                        va="center",
                        fontsize=fontsize - 1,
                        color="white" if v > 0.55 * (1 if normalised else top) else "black",
                    )
    fig.tight_layout()
    return H.fig_png(fig, dpi=100 if n > 30 else 90)


# --------------------------------------------------------------------------- build
def build_report(
    run: str | os.PathLike | None = None,
    *,
    model=None,
    bundle=None,
    evaluation=None,
    split: str = "test",
    batch_size: int = 128,
    limits: ReportLimits | None = None,
) -> tuple[dict, dict[str, str]]:
    """Compute every number and picture of the report: ``(data for JSON, HTML per section)``.

    Pass what you already have (the trainer passes its model, data bundle and
    test evaluation); the rest is loaded from the run folder ``run``.
    """
    from cnnlab.evaluation.calibration import (
        apply_temperature,
        expected_calibration_error,
        fit_temperature,
        negative_log_likelihood,
        plot_reliability,
        reliability_bins,
    )
    from cnnlab.evaluation.evaluate import score
    from cnnlab.evaluation.gradcam import find_last_conv_layer, gradcam, overlay
    from cnnlab.evaluation.tta import tta_predict, tta_views

    limits = limits or ReportLimits()
    run_dir = Path(run) if run is not None else None
    if run_dir is not None:
        RunFolder.open(run_dir)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    config = _read(run_dir, "config.yaml") or {}
    if model is None or bundle is None:
        from cnnlab.models.saving import load_for_inference

        if run_dir is None:
            raise RunError(
                "A report needs a run folder, or a model and its data",
                fix="Pass the run folder written by `cnnlab train`",
            )
        loaded = load_for_inference(run_dir)
        model = model or loaded.model
        bundle = bundle or _load_bundle(run_dir, loaded, batch_size)
    class_names = list(
        evaluation.class_names
        if evaluation is not None
        else (_read(run_dir, "classes.json") or bundle.class_names)
    )
    fallback_note = None
    if evaluation is None:
        if (
            split == "test"
            and len(bundle.examples("test")["labels"]) == 0
            and len(bundle.examples("val")["labels"])
        ):
            split = "val"  # a run trained with --test-split 0 is reported on its validation split
            fallback_note = "This run has no test split; the report is on the validation split."
        evaluation = score(model, bundle, split, class_names, int(config.get("top_k", 5)))
    timings["load_and_score"] = time.perf_counter() - t

    probs = np.asarray(evaluation.probs, np.float64)
    y = np.asarray(evaluation.y_true, np.int64)
    m = evaluation.metrics
    n = len(y)
    pred = probs.argmax(axis=1) if n else np.zeros(0, np.int64)
    p_true = probs[np.arange(n), y] if n else np.zeros(0)
    losses = -np.log(np.clip(p_true, 1e-12, 1.0))
    conf = probs.max(axis=1) if n else np.zeros(0)
    rng = np.random.default_rng(limits.seed)
    notes: list[str] = [fallback_note] if fallback_note else []
    sec: dict[str, str] = {}
    data: dict[str, Any] = {
        "split": split,
        "num_examples": n,
        "generated": _dt.datetime.now().isoformat(timespec="seconds"),
    }

    # ---- summary
    env = _read(run_dir, "env.json") or {}
    dj = _read(run_dir, "data.json") or {}
    rm = _read(run_dir, "metrics.json") or {}
    history = read_history(run_dir / "history.csv" if run_dir else None)
    train_seconds = (
        float(np.nansum(history["epoch_seconds"])) if "epoch_seconds" in history else None
    )
    split_sizes = dj.get("split_sizes") or bundle.split.counts()
    k = m.get("top_k", 5)
    summary = {
        "run": str(run_dir) if run_dir else None,
        "data": config.get("data", bundle.source.spec),
        "evaluated_on": bundle.source.spec,
        "num_classes": len(class_names),
        "class_names": class_names,
        "split_sizes": split_sizes,
        "per_class_counts": dj.get("per_class") or bundle.summary()["per_class"],
        "image_size": list(bundle.image_size),
        "channels": bundle.channels,
        "model": config.get("model", getattr(model, "name", "?")),
        "model_kwargs": config.get("model_kwargs") or {},
        "parameters": int(rm.get("parameters") or model.count_params()),
        "epochs_done": rm.get("epochs_done", len(history.get("loss", [])) or None),
        "best_epoch": rm.get("best_epoch"),
        "training_seconds": round(train_seconds, 1) if train_seconds is not None else None,
        "settings": {
            key: config.get(key)
            for key in (
                "optimizer",
                "learning_rate",
                "schedule",
                "batch_size",
                "epochs",
                "augment",
                "label_smoothing",
                "weight_decay",
                "seed",
                "weights",
            )
            if key in config
        },
        "versions": env.get("versions", {}),
        "python": env.get("python"),
        "devices": env.get("devices"),
        "loss": m["loss"],
        "accuracy": m["accuracy"],
        f"top{k}": m.get(f"top{k}"),
        "macro_f1": m["macro avg"]["f1-score"],
        "weighted_f1": m["weighted avg"]["f1-score"],
    }
    data["summary"] = summary
    sec["summary"] = _summary_html(summary, split, n, k)

    # ---- learning curves
    t = time.perf_counter()
    data["history"] = history
    png = _curves_png(history)
    if png is None:
        sec["curves"] = H.note(
            "No history.csv: this model was not trained in a cnnlab run folder, "
            "so there are no learning curves."
        )
    else:
        last = {key: vals[-1] for key, vals in history.items() if vals}
        best = ""
        if history.get("val_accuracy"):
            b = int(np.nanargmax(history["val_accuracy"]))
            best = f" Best validation accuracy {history['val_accuracy'][b]:.4f} at epoch {b + 1}."
        sec["curves"] = H.img(png, "learning curves") + H.note(
            f"{len(history['loss'])} epoch(s). Final training loss {last.get('loss', float('nan')):.4f}"
            + (f", validation loss {last['val_loss']:.4f}." if "val_loss" in last else ".")
            + best
        )
    timings["curves"] = time.perf_counter() - t

    # ---- per-class metrics
    per = [
        {"class": c, **{kk: float(v) for kk, v in m["per_class"][c].items()}} for c in class_names
    ]
    data["per_class"] = per
    data["macro avg"] = m["macro avg"]
    data["weighted avg"] = m["weighted avg"]
    data["accuracy"] = m["accuracy"]
    sec["per-class"] = _per_class_html(per, m)

    # ---- confusion matrix
    t = time.perf_counter()
    cm = np.asarray(m["confusion_matrix"], np.int64)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    data["confusion_matrix"] = {
        "rows": "true",
        "columns": "predicted",
        "counts": cm.tolist(),
        "row_normalised": np.round(norm, 6).tolist(),
    }
    sec["confusion"] = _confusion_html(cm, norm, class_names)
    timings["confusion"] = time.perf_counter() - t

    # ---- most confused
    pairs = most_confused(cm, class_names, limits.confused_pairs)
    data["most_confused"] = pairs
    if pairs:
        sec["confused-pairs"] = H.table(
            ["true class", "predicted as", "images", "share of true class"],
            [
                (p["true"], p["predicted"], p["count"], f"{100 * p['share_of_true']:.1f} %")
                for p in pairs
            ],
            numeric=(2, 3),
        ) + H.note(f"The {len(pairs)} largest off-diagonal cells of the confusion matrix.")
    else:
        sec["confused-pairs"] = H.note("No confusions: every example was classified correctly.")

    # ---- worst mistakes
    t = time.perf_counter()
    wrong = np.flatnonzero(pred != y)
    order = wrong[np.argsort(-losses[wrong], kind="stable")]
    shown = order[: limits.gallery]
    thumbs = _display_images(bundle, split, shown)
    mistakes = [
        {
            "example": _example_name(bundle, split, int(r)),
            "true": class_names[y[r]],
            "predicted": class_names[pred[r]],
            "confidence": float(conf[r]),
            "p_true": float(p_true[r]),
            "loss": float(losses[r]),
        }
        for r in shown
    ]
    data["mistakes"] = {"total": len(wrong), "shown": mistakes}
    if len(wrong) == 0:
        sec["mistakes"] = H.note("No mistakes on this split.")
    else:
        cards = [
            _card(
                [thumb],
                [
                    f"<b>true</b> {H.esc(mk['true'])}",
                    (
                        f'<span class="bad"><b>predicted</b> {H.esc(mk["predicted"])} '
                        f"{mk['confidence']:.2f}</span>"
                    ),
                    f"p(true) {mk['p_true']:.3f} · loss {mk['loss']:.2f}",
                    _file_caption(mk["example"]),
                ],
            )
            for thumb, mk in zip(thumbs, mistakes)
        ]
        sec["mistakes"] = (
            H.note(
                f"The {len(shown)} highest-loss mistakes of {len(wrong)} "
                f"({100 * len(wrong) / max(n, 1):.1f} % of {n}), worst first; confidence is the "
                "probability of the predicted class."
            )
            + '<div class="gallery">'
            + "".join(cards)
            + "</div>"
        )
    timings["mistakes"] = time.perf_counter() - t

    # ---- calibration
    t = time.perf_counter()
    nb = limits.calibration_bins
    bins = reliability_bins(probs, y, nb)
    cal: dict[str, Any] = {
        "n_bins": nb,
        "ece": expected_calibration_error(probs, y, nb),
        "nll": negative_log_likelihood(probs, y),
        "bins": bins,
    }
    cal_note = ""
    after = None
    val_n = len(bundle.examples("val")["labels"]) if "val" != split else 0
    same_classes = list(bundle.class_names) == class_names
    if val_n and same_classes:
        from cnnlab.evaluation.metrics import collect_predictions

        vrows = np.arange(val_n)
        if val_n > limits.temperature_examples:
            vrows = np.sort(rng.choice(val_n, limits.temperature_examples, replace=False))
            cal_note += f" Temperature fitted on {len(vrows)} of {val_n} validation images."
        vprobs, vy = collect_predictions(model, subset_dataset(bundle, "val", vrows))
        temp = fit_temperature(vprobs, vy)
        cprobs = apply_temperature(probs, temp)
        after = reliability_bins(cprobs, y, nb)
        cal["temperature"] = {
            "fitted_on": "val",
            "num_fit_examples": len(vy),
            "temperature": temp,
            "ece": expected_calibration_error(cprobs, y, nb),
            "nll": negative_log_likelihood(cprobs, y),
            "bins": after,
        }
    else:
        cal["temperature"] = None
        cal_note += (
            " No temperature scaling: there is no validation split to fit it on."
            if same_classes
            else " No temperature scaling: the evaluated data's classes differ from the model's."
        )
    data["calibration"] = cal
    rel_png = None
    if n:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            plot_reliability(
                bins, Path(tmp) / "r.png", f"Reliability on {split} ({nb} bins)", after
            )
            rel_png = (Path(tmp) / "r.png").read_bytes()
    sec["calibration"] = _calibration_html(cal, rel_png, split) + (
        H.note(cal_note.strip()) if cal_note else ""
    )
    timings["calibration"] = time.perf_counter() - t

    # ---- TTA
    t = time.perf_counter()
    flip = _trained_with_flip(dj, bundle)
    views = tta_views(bundle.image_size, flip=flip)
    rows = np.arange(n)
    if n > limits.tta_examples:
        rows = np.sort(rng.choice(n, limits.tta_examples, replace=False))
    tta: dict[str, Any] = {
        "views": views,
        "num_examples": len(rows),
        "subsampled": bool(len(rows) < n),
    }
    if len(rows):
        x = model_inputs(bundle, split, rows)
        mean, per_view = tta_predict(model, x, views, return_views=True, identity_probs=probs[rows])
        base = float(np.mean(probs[rows].argmax(1) == y[rows]))
        tta.update(
            accuracy_without=base,
            accuracy_with=float(np.mean(mean.argmax(1) == y[rows])),
            per_view={v: float(np.mean(p.argmax(1) == y[rows])) for v, p in per_view.items()},
        )
        tta["gain"] = tta["accuracy_with"] - base
    data["tta"] = tta
    sec["tta"] = _tta_html(tta, flip, n)
    timings["tta"] = time.perf_counter() - t

    # ---- Grad-CAM
    t = time.perf_counter()
    correct = np.flatnonzero(pred == y)
    pick_c = (
        np.sort(rng.choice(correct, min(limits.gradcam_correct, len(correct)), replace=False))
        if len(correct)
        else correct
    )
    pick_w = order[: limits.gradcam_wrong]
    gc: dict[str, Any] = {"layer": None, "examples": []}
    try:
        layer = find_last_conv_layer(model)
        gc["layer"] = layer
        pick = np.concatenate([pick_c, pick_w]).astype(np.int64)
        x = model_inputs(bundle, split, pick)
        maps_pred = gradcam(model, x, pred[pick], layer=layer)
        maps_true = gradcam(model, x, y[pick], layer=layer) if len(pick_w) else maps_pred

        def blank(m) -> str:
            # An all-zero map: no region raises that class's score (ReLU of the weighted sum).
            return " (no evidence)" if m.max() <= 0 else ""

        cards = []
        for i, r in enumerate(pick):
            ok = bool(pred[r] == y[r])
            imgs = [H.array_png(x[i]), H.array_png(overlay(x[i], maps_pred[i]))]
            labels = ["input", f"→ {class_names[pred[r]]}{blank(maps_pred[i])}"]
            if not ok:
                imgs.append(H.array_png(overlay(x[i], maps_true[i])))
                labels.append(f"→ {class_names[y[r]]}{blank(maps_true[i])}")
            cap = [
                f"<b>true</b> {H.esc(class_names[y[r]])}",
                (
                    f'<span class="{"good" if ok else "bad"}"><b>predicted</b> '
                    f"{H.esc(class_names[pred[r]])} {conf[r]:.2f}</span>"
                ),
                "heat maps: " + " | ".join(H.esc(lb) for lb in labels[1:]),
                _file_caption(_example_name(bundle, split, int(r))),
            ]
            cards.append((ok, _card(imgs, cap)))
            gc["examples"].append(
                {
                    "example": _example_name(bundle, split, int(r)),
                    "true": class_names[y[r]],
                    "predicted": class_names[pred[r]],
                    "confidence": float(conf[r]),
                    "correct": ok,
                }
            )
        sec["gradcam"] = _gradcam_html(gc, cards, model_size=bundle.image_size)
    except Exception as e:  # noqa: BLE001 - an exotic model must not cost the rest of the report
        gc["error"] = f"{type(e).__name__}: {e}"
        sec["gradcam"] = H.note(f"Grad-CAM is not available for this model ({gc['error'][:300]}).")
    data["gradcam"] = gc
    timings["gradcam"] = time.perf_counter() - t

    data["notes"] = notes
    sec["summary"] += "".join(f'<p class="note warn">{H.esc(n)}</p>' for n in notes)
    data["timings_seconds"] = {key: round(v, 3) for key, v in timings.items()}
    data["limits"] = asdict(limits)
    return data, sec


def _trained_with_flip(data_json: dict, bundle) -> bool:
    """Mirror images at test time only if the run trained on mirrored images."""
    aug = (data_json or {}).get("augment")
    flip = aug.get("flip") if isinstance(aug, dict) else getattr(bundle.augment, "flip", "none")
    # "alternating" (a fast recipe's deterministic flip) mirrors horizontally too.
    return str(flip) not in ("none", "None", "", "vertical", "False")


# --------------------------------------------------------------------------- HTML parts
def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _file_caption(name: str) -> str:
    base = os.path.basename(name) if os.sep in name else name
    return f'<span class="file" title="{H.esc(name)}">{H.esc(base)}</span>'


def _card(images: list[bytes | None], caption: list[str]) -> str:
    imgs = "".join(H.img(p, "example", cls="") for p in images)
    return f'<div class="card"><div class="imgs">{imgs}</div><div class="cap">{"<br>".join(caption)}</div></div>'


def _summary_html(s: dict, split: str, n: int, k: int) -> str:
    def hms(sec) -> str:
        return str(_dt.timedelta(seconds=round(sec))) if sec is not None else "–"

    tiles = H.tiles(
        [
            (f"accuracy on {split}", f"{100 * s['accuracy']:.2f} %"),
            (
                f"top-{k} accuracy",
                f"{100 * s[f'top{k}']:.2f} %" if s.get(f"top{k}") is not None else "–",
            ),
            ("macro F1", f"{s['macro_f1']:.3f}"),
            ("loss", f"{s['loss']:.4f}"),
            (f"{split} images", f"{n:,}"),
            ("training time", hms(s["training_seconds"])),
        ]
    )
    sizes = s["split_sizes"] or {}
    rows = [
        ("data", s["data"]),
        (
            "evaluated on",
            f"{s['evaluated_on']} — {split} split, {n:,} images"
            if s["evaluated_on"] != s["data"]
            else f"{split} split, {n:,} images",
        ),
        (
            "classes",
            f"{s['num_classes']}: "
            + ", ".join(s["class_names"][:40])
            + (" …" if s["num_classes"] > 40 else ""),
        ),
        ("images per split", ", ".join(f"{key} {v:,}" for key, v in sizes.items() if v)),
        ("image size", f"{s['image_size'][0]}×{s['image_size'][1]}×{s['channels']}"),
        ("model", s["model"] + (f" {s['model_kwargs']}" if s["model_kwargs"] else "")),
        ("parameters", f"{s['parameters']:,}"),
        ("epochs", f"{s['epochs_done']} (best: {s['best_epoch']})" if s["epochs_done"] else "–"),
        ("training time", hms(s["training_seconds"])),
        ("settings", ", ".join(f"{key} {v}" for key, v in s["settings"].items()) or "–"),
        ("versions", ", ".join(f"{key} {v}" for key, v in s["versions"].items() if v) or "–"),
        ("python, devices", f"{s['python'] or '–'}, {', '.join(s['devices'] or []) or '–'}"),
    ]
    counts = s.get("per_class_counts") or {}
    parts = [p for p in ("train", "val", "test") if p in counts and sum(counts[p].values())]
    per_class = ""
    if parts:
        crow = [(c, *(counts[p].get(c, 0) for p in parts)) for c in s["class_names"]]
        per_class = (
            "<details><summary>images per class and split</summary>"
            + '<div class="scroll">'
            + H.table(["class", *parts], crow, numeric=range(1, len(parts) + 1))
            + "</div></details>"
        )
    return tiles + H.table(["", ""], rows) + per_class


def _per_class_html(per: list[dict], m: dict) -> str:
    rows, classes = [], []
    worst = {r["class"] for r in sorted(per, key=lambda r: r["f1-score"])[: min(3, len(per) - 1)]}
    for r in per:
        bar = f'<span class="bar" style="width:{60 * r["f1-score"]:.0f}px"></span>'
        rows.append(
            (
                H.esc(r["class"]),
                f"{r['precision']:.3f}",
                f"{r['recall']:.3f}",
                f"{r['f1-score']:.3f} {bar}",
                f"{int(r['support'])}",
            )
        )
        classes.append("bad" if r["class"] in worst and r["f1-score"] < 0.999 else "")
    for name in ("macro avg", "weighted avg"):
        a = m[name]
        rows.append(
            (
                name,
                f"{a['precision']:.3f}",
                f"{a['recall']:.3f}",
                f"{a['f1-score']:.3f}",
                f"{int(a['support'])}",
            )
        )
        classes.append("total")
    rows.append(("accuracy", "", "", f"{m['accuracy']:.3f}", f"{m['num_examples']}"))
    classes.append("total")
    tbl = H.table(
        ["class", "precision", "recall", "f1-score", "support"],
        rows,
        numeric=(1, 2, 3, 4),
        row_classes=classes,
        raw=True,
    )
    return (
        '<div class="scroll">'
        + tbl
        + "</div>"
        + H.note(
            "Laid out like scikit-learn's classification report; the three classes with "
            "the lowest F1 are in red."
        )
    )


def _confusion_html(cm: np.ndarray, norm: np.ndarray, names: list[str]) -> str:
    n = len(names)
    counts_png = _matrix_png(cm.astype(np.float64), names, normalised=False)
    norm_png = _matrix_png(norm, names, normalised=True)
    if n <= 30:
        body = (
            f'<div class="figs">{H.img(counts_png, "confusion matrix, counts")}'
            f"{H.img(norm_png, 'confusion matrix, row-normalised')}</div>"
        )
        hint = "Rows are the true classes, columns the predictions."
    else:
        # Many classes: shown at full resolution in scroll boxes instead of shrunk to a blur.
        body = (
            f'<h3>Row-normalised</h3><div class="wide">{H.img(norm_png, "row-normalised", cls="plot native")}</div>'
            f'<details><summary>counts (log colour scale)</summary><div class="wide">'
            f"{H.img(counts_png, 'counts', cls='plot native')}</div></details>"
        )
        hint = (
            f"{n} classes: the matrices are shown at full size (scroll to read the labels); "
            "exact numbers are in report.json and the most-confused pairs below."
        )
    return body + H.note(hint)


def _calibration_html(cal: dict, png: bytes | None, split: str) -> str:
    items = [("ECE", f"{100 * cal['ece']:.2f} %"), ("NLL", f"{cal['nll']:.4f}")]
    ts = cal.get("temperature")
    if ts:
        items += [
            ("temperature T", f"{ts['temperature']:.3f}"),
            ("ECE after scaling", f"{100 * ts['ece']:.2f} %"),
            ("NLL after scaling", f"{ts['nll']:.4f}"),
        ]
    text = (
        f"Expected calibration error on the {split} split: the average gap between confidence "
        f"and accuracy over {cal['n_bins']} equal-width confidence bins, weighted by the number "
        "of predictions in each."
    )
    if ts:
        direction = (
            "over-confident (T > 1 softens it)"
            if ts["temperature"] > 1
            else "under-confident (T < 1 sharpens it)"
        )
        text += (
            f" Temperature scaling, fitted on {ts['num_fit_examples']} validation images, "
            f"says the model is {direction}; it never changes which class is predicted."
        )
    return H.tiles(items) + (H.img(png, "reliability diagram") if png else "") + H.note(text)


def _tta_html(tta: dict, flip: bool, n: int) -> str:
    if "accuracy_with" not in tta:
        return H.note("No examples to evaluate.")
    gain = 100 * tta["gain"]
    cls = "good" if gain > 0 else ("bad" if gain < 0 else "")
    out = H.tiles(
        [
            ("without TTA", f"{100 * tta['accuracy_without']:.2f} %"),
            ("with TTA", f"{100 * tta['accuracy_with']:.2f} %"),
            ("gain", f"{gain:+.2f} points"),
        ]
    )
    out += H.table(
        ["view", "accuracy alone"],
        [(v, f"{100 * a:.2f} %") for v, a in tta["per_view"].items()],
        numeric=(1,),
    )
    text = (
        f"Predictions averaged over {len(tta['views'])} views: "
        + ", ".join(tta["views"])
        + ". Shifts are in pixels (rows, columns), edges repeated. "
        + (
            "Mirroring is included because the run trained with horizontal flips."
            if flip
            else "No mirroring: the run did not train with horizontal flips."
        )
    )
    if tta["subsampled"]:
        text += f" Measured on a random sample of {tta['num_examples']:,} of the {n:,} images (both columns)."
    return out + f'<p class="note {cls}">{H.esc(text)}</p>'


def _gradcam_html(gc: dict, cards: list[tuple[bool, str]], model_size) -> str:
    right = [c for ok, c in cards if ok]
    wrong = [c for ok, c in cards if not ok]
    out = H.note(
        f"Heat maps from layer {gc['layer']} (the last convolutional feature map), "
        f"upsampled to the model's input of {model_size[0]}×{model_size[1]}; red is where the "
        "evidence for the named class lies. Mistakes show the map for the predicted and for "
        "the true class."
    )
    out += "<h3>Correct predictions (random sample)</h3>"
    out += ('<div class="gallery">' + "".join(right) + "</div>") if right else H.note("None.")
    out += "<h3>Mistakes (highest loss)</h3>"
    out += ('<div class="gallery">' + "".join(wrong) + "</div>") if wrong else H.note("None.")
    return out


# --------------------------------------------------------------------------- writing
def write_report(
    run: str | os.PathLike | None = None,
    *,
    output: str | os.PathLike | None = None,
    model=None,
    bundle=None,
    evaluation=None,
    split: str = "test",
    batch_size: int = 128,
    limits: ReportLimits | None = None,
) -> ReportResult:
    """Write ``report.html`` and ``report.json`` for a run (or a model with its data).

    Args:
        run: the run folder (history, config, versions and, unless given, model and data).
        output: folder for the two files; default: the run folder.
        model, bundle, evaluation: pass them when already in memory (skips reloading).
        split: the split to report on when ``evaluation`` is not given.

    Example:
        >>> result = write_report("runs/20261126-120000-simple_cnn-32")
        >>> result.html
        PosixPath('runs/20261126-120000-simple_cnn-32/report.html')
    """
    t0 = time.perf_counter()
    out_dir = Path(output) if output is not None else (Path(run) if run is not None else None)
    if out_dir is None:
        raise RunError(
            "write_report needs a run folder or an output folder", fix="Pass run=... or output=..."
        )
    data, sections = build_report(
        run,
        model=model,
        bundle=bundle,
        evaluation=evaluation,
        split=split,
        batch_size=batch_size,
        limits=limits,
    )
    s = data["summary"]
    title = f"cnnlab report: {s['model']} on {s['data']}"
    subtitle = (
        f"{Path(s['run']).name if s['run'] else 'model'} · {data['split']} split, "
        f"{data['num_examples']:,} images · accuracy {100 * s['accuracy']:.2f} % · "
        f"generated {data['generated']}"
    )
    seconds = time.perf_counter() - t0
    data["timings_seconds"]["total"] = round(seconds, 3)
    page = H.page(
        title,
        subtitle,
        [(sid, head, sections[sid]) for sid, head in SECTIONS],
        footer=f"Written by cnnlab in {seconds:.1f} s. The same numbers are in report.json.",
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path = write_text(out_dir / "report.html", page)
    json_path = write_json(out_dir / "report.json", data)
    return ReportResult(html_path, json_path, data, seconds)


def try_write_report(run: str | os.PathLike | None = None, **kwargs) -> Path | None:
    """:func:`write_report`, but a failure is a logged warning, never an exception.

    Called at the end of training and evaluation, where the model and metrics
    are already saved and a report problem must not turn success into a crash.

    Example:
        >>> try_write_report(run.path, model=final, bundle=bundle, evaluation=evaluation)
    """
    try:
        result = write_report(run, **kwargs)
    except KeyboardInterrupt:
        raise
    except Exception as e:
        log.warning(
            "The HTML report could not be written (%s: %s); rerun `cnnlab report %s` "
            "(CNNLAB_DEBUG=1 shows the traceback)",
            type(e).__name__,
            e,
            run or "RUN",
        )
        if os.environ.get("CNNLAB_DEBUG", "") not in ("", "0", "false"):
            log.exception("report failure")
        return None
    log.info("Report: %s (%.1f s)", result.html, result.seconds)
    return result.html
