"""The report page: one HTML fragment per section, and the page around them (``cnnlab._html``)."""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

import numpy as np

from cnnlab import _html as H
from cnnlab.evaluation.plots import LABELLED_CLASSES

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


def render_page(data: dict, sections: dict[str, str], seconds: float) -> str:
    """The whole self-contained page, sections in :data:`SECTIONS` order."""
    s = data["summary"]
    title = f"cnnlab report: {s['model']} on {s['data']}"
    subtitle = (
        f"{Path(s['run']).name if s['run'] else 'model'} · {data['split']} split, "
        f"{data['num_examples']:,} images · accuracy {100 * s['accuracy']:.2f} % · "
        f"generated {data['generated']}"
    )
    return H.page(
        title,
        subtitle,
        [(sid, head, sections[sid]) for sid, head in SECTIONS],
        footer=f"Written by cnnlab in {seconds:.1f} s. The same numbers are in report.json.",
    )


def file_caption(name: str) -> str:
    base = os.path.basename(name) if os.sep in name else name
    return f'<span class="file" title="{H.esc(name)}">{H.esc(base)}</span>'


def card(images: list[bytes | None], caption: list[str]) -> str:
    imgs = "".join(H.img(p, "example", cls="") for p in images)
    return f'<div class="card"><div class="imgs">{imgs}</div><div class="cap">{"<br>".join(caption)}</div></div>'


def notes_html(notes: list[str]) -> str:
    return "".join(f'<p class="note warn">{H.esc(n)}</p>' for n in notes)


# --------------------------------------------------------------------------- summary
def _hms(seconds) -> str:
    return str(_dt.timedelta(seconds=round(seconds))) if seconds is not None else "–"


def summary_html(s: dict, split: str, n: int, k: int) -> str:
    """Headline tiles, a table of the data, model and run, and the images per class."""
    return (
        _summary_tiles(s, split, n, k)
        + H.table(["", ""], _summary_rows(s, split, n))
        + (_per_class_counts(s))
    )


def _summary_tiles(s: dict, split: str, n: int, k: int) -> str:
    topk = s.get(f"top{k}")
    return H.tiles(
        [
            (f"accuracy on {split}", f"{100 * s['accuracy']:.2f} %"),
            (f"top-{k} accuracy", f"{100 * topk:.2f} %" if topk is not None else "–"),
            ("macro F1", f"{s['macro_f1']:.3f}"),
            ("loss", f"{s['loss']:.4f}"),
            (f"{split} images", f"{n:,}"),
            ("training time", _hms(s["training_seconds"])),
        ]
    )


def _summary_rows(s: dict, split: str, n: int) -> list[tuple[str, str]]:
    sizes = s["split_sizes"] or {}
    evaluated = f"{split} split, {n:,} images"
    if s["evaluated_on"] != s["data"]:
        evaluated = f"{s['evaluated_on']} — {evaluated}"
    more = " …" if s["num_classes"] > 40 else ""
    epochs = f"{s['epochs_done']} (best: {s['best_epoch']})" if s["epochs_done"] else "–"
    devices = ", ".join(s["devices"] or []) or "–"
    kept = [("classifier kept", s["classifier"])] if s.get("classifier") else []
    if s.get("decisions"):
        kept.append(("decisions", "; ".join(s["decisions"])))
    return kept + [
        ("data", s["data"]),
        ("evaluated on", evaluated),
        ("classes", f"{s['num_classes']}: " + ", ".join(s["class_names"][:40]) + more),
        ("images per split", ", ".join(f"{key} {v:,}" for key, v in sizes.items() if v)),
        ("image size", f"{s['image_size'][0]}×{s['image_size'][1]}×{s['channels']}"),
        ("model", s["model"] + (f" {s['model_kwargs']}" if s["model_kwargs"] else "")),
        ("parameters", f"{s['parameters']:,}"),
        ("epochs", epochs),
        ("training time", _hms(s["training_seconds"])),
        ("settings", ", ".join(f"{key} {v}" for key, v in s["settings"].items()) or "–"),
        ("versions", ", ".join(f"{key} {v}" for key, v in s["versions"].items() if v) or "–"),
        ("python, devices", f"{s['python'] or '–'}, {devices}"),
    ]


def _per_class_counts(s: dict) -> str:
    counts = s.get("per_class_counts") or {}
    parts = [p for p in ("train", "val", "test") if p in counts and sum(counts[p].values())]
    if not parts:
        return ""
    rows = [(c, *(counts[p].get(c, 0) for p in parts)) for c in s["class_names"]]
    return (
        "<details><summary>images per class and split</summary>"
        + '<div class="scroll">'
        + H.table(["class", *parts], rows, numeric=range(1, len(parts) + 1))
        + "</div></details>"
    )


# --------------------------------------------------------------------------- metrics
def curves_html(history: dict[str, list[float]], png: bytes | None) -> str:
    if png is None:
        return H.note(
            "No history.csv: this model was not trained in a cnnlab run folder, "
            "so there are no learning curves."
        )
    last = {key: vals[-1] for key, vals in history.items() if vals}
    best = ""
    if history.get("val_accuracy"):
        b = int(np.nanargmax(history["val_accuracy"]))
        best = f" Best validation accuracy {history['val_accuracy'][b]:.4f} at epoch {b + 1}."
    return H.img(png, "learning curves") + H.note(
        f"{len(history['loss'])} epoch(s). Final training loss {last.get('loss', float('nan')):.4f}"
        + (f", validation loss {last['val_loss']:.4f}." if "val_loss" in last else ".")
        + best
    )


def _metric_cells(name: str, r: dict, f1: str) -> tuple:
    return (name, f"{r['precision']:.3f}", f"{r['recall']:.3f}", f1, f"{int(r['support'])}")


def per_class_html(per: list[dict], m: dict) -> str:
    """scikit-learn's classification report as a table; the three lowest F1 in red."""
    rows, classes = [], []
    worst = {r["class"] for r in sorted(per, key=lambda r: r["f1-score"])[: min(3, len(per) - 1)]}
    for r in per:
        bar = f'<span class="bar" style="width:{60 * r["f1-score"]:.0f}px"></span>'
        rows.append(_metric_cells(H.esc(r["class"]), r, f"{r['f1-score']:.3f} {bar}"))
        classes.append("bad" if r["class"] in worst and r["f1-score"] < 0.999 else "")
    for name in ("macro avg", "weighted avg"):
        rows.append(_metric_cells(name, m[name], f"{m[name]['f1-score']:.3f}"))
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


def confusion_html(counts_png: bytes, norm_png: bytes, n: int) -> str:
    if n <= LABELLED_CLASSES:
        body = (
            f'<div class="figs">{H.img(counts_png, "confusion matrix, counts")}'
            f"{H.img(norm_png, 'confusion matrix, row-normalised')}</div>"
        )
        return body + H.note("Rows are the true classes, columns the predictions.")
    # Many classes: shown at full resolution in scroll boxes instead of shrunk to a blur.
    body = (
        f'<h3>Row-normalised</h3><div class="wide">{H.img(norm_png, "row-normalised", cls="plot native")}</div>'
        f'<details><summary>counts (log colour scale)</summary><div class="wide">'
        f"{H.img(counts_png, 'counts', cls='plot native')}</div></details>"
    )
    return body + H.note(
        f"{n} classes: the matrices are shown at full size (scroll to read the labels); "
        "exact numbers are in report.json and the most-confused pairs below."
    )


def confused_pairs_html(pairs: list[dict]) -> str:
    if not pairs:
        return H.note("No confusions: every example was classified correctly.")
    return H.table(
        ["true class", "predicted as", "images", "share of true class"],
        [
            (p["true"], p["predicted"], p["count"], f"{100 * p['share_of_true']:.1f} %")
            for p in pairs
        ],
        numeric=(2, 3),
    ) + H.note(f"The {len(pairs)} largest off-diagonal cells of the confusion matrix.")


# --------------------------------------------------------------------------- examples
def mistakes_html(mistakes: list[dict], thumbs: list[bytes | None], total: int, n: int) -> str:
    """The gallery of the shown mistakes, worst first."""
    if total == 0:
        return H.note("No mistakes on this split.")
    cards = [
        card(
            [thumb],
            [
                f"<b>true</b> {H.esc(mk['true'])}",
                (
                    f'<span class="bad"><b>predicted</b> {H.esc(mk["predicted"])} '
                    f"{mk['confidence']:.2f}</span>"
                ),
                f"p(true) {mk['p_true']:.3f} · loss {mk['loss']:.2f}",
                file_caption(mk["example"]),
            ],
        )
        for thumb, mk in zip(thumbs, mistakes)
    ]
    return (
        H.note(
            f"The {len(mistakes)} highest-loss mistakes of {total} "
            f"({100 * total / max(n, 1):.1f} % of {n}), worst first; confidence is the "
            "probability of the predicted class."
        )
        + '<div class="gallery">'
        + "".join(cards)
        + "</div>"
    )


def gradcam_card(
    example: dict, pngs: list[bytes | None], map_pred: np.ndarray, map_true: np.ndarray | None
) -> str:
    """One explained example: the input and its heat maps (for the predicted class and, for
    a mistake, the true class), with what was predicted."""

    def blank(m) -> str:
        # An all-zero map: no region raises that class's score (ReLU of the weighted sum).
        return " (no evidence)" if m.max() <= 0 else ""

    ok = example["correct"]
    labels = [f"→ {example['predicted']}{blank(map_pred)}"]
    if map_true is not None:
        labels.append(f"→ {example['true']}{blank(map_true)}")
    caption = [
        f"<b>true</b> {H.esc(example['true'])}",
        (
            f'<span class="{"good" if ok else "bad"}"><b>predicted</b> '
            f"{H.esc(example['predicted'])} {example['confidence']:.2f}</span>"
        ),
        "heat maps: " + " | ".join(H.esc(lb) for lb in labels),
        file_caption(example["example"]),
    ]
    return card(pngs, caption)


def gradcam_html(layer: str, cards: list[tuple[bool, str]], model_size) -> str:
    right = [c for ok, c in cards if ok]
    wrong = [c for ok, c in cards if not ok]
    out = H.note(
        f"Heat maps from layer {layer} (the last convolutional feature map), "
        f"upsampled to the model's input of {model_size[0]}×{model_size[1]}; red is where the "
        "evidence for the named class lies. Mistakes show the map for the predicted and for "
        "the true class."
    )
    out += "<h3>Correct predictions (random sample)</h3>"
    out += ('<div class="gallery">' + "".join(right) + "</div>") if right else H.note("None.")
    out += "<h3>Mistakes (highest loss)</h3>"
    out += ('<div class="gallery">' + "".join(wrong) + "</div>") if wrong else H.note("None.")
    return out


def gradcam_unavailable(error: str) -> str:
    return H.note(f"Grad-CAM is not available for this model ({error[:300]}).")


# --------------------------------------------------------------------------- calibration, TTA
def calibration_html(cal: dict, png: bytes | None, split: str, note: str) -> str:
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
    figure = H.img(png, "reliability diagram") if png else ""
    return H.tiles(items) + figure + H.note(text) + (H.note(note) if note else "")


def tta_html(tta: dict, flip: bool, n: int) -> str:
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
