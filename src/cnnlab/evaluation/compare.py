"""Compare runs: one table of their key metrics, settings and times, and their curves overlaid.

Reads only what a run folder already holds (config.yaml, metrics.json,
history.csv, data.json): no model is loaded, so comparing many runs is instant.

Example::

    rows = compare_runs(["runs/a", "runs/b"])
    print(format_table(rows))
    write_comparison(["runs/a", "runs/b"], "compare-ab")   # compare.html, .png, .json, .csv
"""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cnnlab import _html as H
from cnnlab._io import read_json, write_json, write_text
from cnnlab.errors import RunError
from cnnlab.evaluation.plots import pyplot, write_png
from cnnlab.run_folder import RunFolder, read_history

# Columns of the table: (key, heading). Settings that differ between runs are added after these.
COLUMNS = (
    ("run", "run"),
    ("model", "model"),
    ("data", "data"),
    ("image_size", "size"),
    ("parameters", "params"),
    ("epochs_done", "epochs"),
    ("best_epoch", "best ep."),
    ("best_val_accuracy", "best val acc"),
    ("test_accuracy", "test acc"),
    ("test_topk", "test top-k"),
    ("test_macro_f1", "macro F1"),
    ("test_loss", "test loss"),
    ("train_seconds", "train time"),
    ("seconds_per_epoch", "s/epoch"),
    ("images_per_second", "img/s"),
)
# Config keys that name where a run went, not how it trained.
NOT_SETTINGS = ("runs_dir", "output", "name", "overwrite", "verbose")
KEY_SETTINGS = (
    "optimizer",
    "learning_rate",
    "batch_size",
    "schedule",
    "augment",
    "weight_decay",
    "label_smoothing",
    "seed",
)


def _read_run(path: Path) -> dict[str, Any]:
    RunFolder.open(
        path,
        expected="folders written by `cnnlab train`",
        fix="Check the paths given to `cnnlab compare`",
    )
    config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    metrics = read_json(path / "metrics.json") if (path / "metrics.json").is_file() else {}
    history = read_history(path / "history.csv")
    return {"path": path, "config": config, "metrics": metrics, "history": history}


def compare_runs(runs: list[str | os.PathLike]) -> list[dict[str, Any]]:
    """One row of key numbers per run folder, in the order given.

    Example:
        >>> rows = compare_runs(["runs/a", "runs/b"])
        >>> rows[0]["test_accuracy"]
        0.91
    """
    if not runs:
        raise RunError("No run folders to compare", fix="Pass two or more run folders")
    names = _short_names([Path(r) for r in runs])
    return [_row(_read_run(Path(run)), name) for run, name in zip(runs, names)]


def _row(r: dict[str, Any], name: str) -> dict[str, Any]:
    """A run's line of the table, from what its folder holds."""
    cfg, m, h = r["config"], r["metrics"], r["history"]
    test = m.get("test") or {}
    topk = next((v for k, v in test.items() if k.startswith("top") and k[3:].isdigit()), None)
    seconds = (
        float(np.nansum(h["epoch_seconds"]))
        if h.get("epoch_seconds")
        else m.get("train_seconds_this_session")
    )
    epochs = len(h.get("loss", [])) or m.get("epochs_done")
    size = cfg.get("image_size")
    return {
        "run": name,
        "path": str(r["path"]),
        "model": cfg.get("model"),
        "data": cfg.get("data"),
        "image_size": "×".join(map(str, size)) if isinstance(size, list) else size,
        "parameters": m.get("parameters"),
        "epochs_done": epochs,
        "best_epoch": m.get("best_epoch"),
        "best_val_accuracy": _summary(np.nanmax, h.get("val_accuracy")),
        "test_accuracy": test.get("accuracy"),
        "test_topk": topk,
        "test_macro_f1": test.get("macro_f1"),
        "test_loss": test.get("loss"),
        "train_seconds": round(seconds, 1) if seconds is not None else None,
        "seconds_per_epoch": round(seconds / epochs, 2) if seconds and epochs else None,
        "images_per_second": _summary(np.nanmedian, h.get("images_per_second")),
        "settings": {k: v for k, v in cfg.items() if k not in NOT_SETTINGS},
        "history": h,
    }


def _summary(reduce, values: list[float] | None) -> float | None:
    return float(reduce(values)) if values else None


def _short_names(paths: list[Path]) -> list[str]:
    names = [p.resolve().name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{p.resolve().parent.name}/{p.resolve().name}" for p in paths]


def differing_settings(rows: list[dict]) -> list[str]:
    """Config keys whose values are not the same in every run (the ones worth reading)."""
    keys = sorted({k for r in rows for k in r["settings"]})
    return [k for k in keys if len({repr(r["settings"].get(k)) for r in rows}) > 1]


def _cell(key: str, v: Any) -> str:
    if v is None:
        return "–"
    if key in ("best_val_accuracy", "test_accuracy", "test_topk", "test_macro_f1"):
        return f"{v:.4f}"
    if key == "test_loss":
        return f"{v:.4f}"
    if key == "train_seconds":
        return time.strftime("%H:%M:%S", time.gmtime(v)) if v >= 60 else f"{v:.1f} s"
    if key == "parameters":
        return f"{v:,}"
    if key == "images_per_second":
        return f"{v:,.0f}"
    return str(v)


def format_table(rows: list[dict]) -> str:
    """Runs as columns, metrics as lines: readable in a terminal however many runs there are."""
    diff = differing_settings(rows)
    lines = [(head, [_cell(k, r.get(k)) for r in rows]) for k, head in COLUMNS]
    lines += [(k, [str(r["settings"].get(k, "–")) for r in rows]) for k in diff]
    width = max(len(h) for h, _ in lines)
    colw = [max(len(c[i]) for _, c in lines) for i in range(len(rows))]
    out = []
    for head, cells in lines:
        out.append(f"{head:<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, colw)))
    return "\n".join(out)


def _curves_png(rows: list[dict]) -> bytes | None:
    if not any(r["history"].get("loss") for r in rows):
        return None
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    panels = [("loss", "loss"), ("accuracy", "accuracy"), ("learning_rate", "learning rate")]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    colours = plt.get_cmap("tab10").colors
    for i, r in enumerate(rows):
        h = r["history"]
        c = colours[i % len(colours)]
        # Markers keep a one-epoch run visible (a line needs two points).
        marker = "o" if len(h.get("loss", [])) <= 30 else None
        for ax, (key, _) in zip(axes, panels):
            if h.get(key):
                ep = np.arange(1, len(h[key]) + 1)
                style = "-" if key == "learning_rate" else "--"
                ax.plot(
                    ep,
                    h[key],
                    style,
                    marker=marker,
                    ms=3,
                    color=c,
                    alpha=0.8 if key == "learning_rate" else 0.55,
                    label=r["run"] if key == "learning_rate" else None,
                )
            if h.get(f"val_{key}"):
                ep = np.arange(1, len(h[f"val_{key}"]) + 1)
                ax.plot(ep, h[f"val_{key}"], "-", marker=marker, ms=4, color=c, label=r["run"])
    for ax, (_, title) in zip(axes, panels):
        ax.set_title(
            title + (" (solid: validation, dashed: train)" if title != "learning rate" else ""),
            fontsize=10,
        )
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    handles, labels = axes[1].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[2].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="lower center", ncol=min(4, len(rows)), fontsize=9, frameon=False
    )
    fig.tight_layout(rect=(0, 0.06 + 0.04 * ((len(rows) - 1) // 4), 1, 1))
    return H.fig_png(fig, dpi=90)


def write_comparison(runs: list[str | os.PathLike], output: str | os.PathLike) -> dict[str, Path]:
    """Write compare.html (table + curves), compare.png (curves), compare.json and compare.csv.

    Example:
        >>> write_comparison(["runs/a", "runs/b"], "compare-ab")["html"]
        PosixPath('compare-ab/compare.html')
    """
    rows = compare_runs(runs)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    diff = differing_settings(rows)
    png = _curves_png(rows)
    written: dict[str, Path] = {}
    if png:
        written["png"] = write_png(out / "compare.png", png)
    curves = H.img(png, "learning curves") if png else H.note("No history.")
    sections = [
        ("table", "Runs", _table_html(rows, diff)),
        ("curves", "Learning curves", curves),
        ("settings", "Key settings", _settings_html(rows)),
    ]
    written["html"] = write_text(
        out / "compare.html",
        H.page(
            f"cnnlab: {len(rows)} runs compared",
            ", ".join(r["run"] for r in rows),
            sections,
            footer="Written by cnnlab compare. The same numbers are in compare.json and compare.csv.",
        ),
    )
    written["json"] = write_json(out / "compare.json", {"runs": rows, "differing_settings": diff})
    written["csv"] = write_text(out / "compare.csv", _csv(rows, diff))
    return written


def _best_rows(rows: list[dict]) -> dict[str, int]:
    """For each headline metric, the row with the highest value."""
    best = {}
    for k in ("best_val_accuracy", "test_accuracy", "test_macro_f1"):
        vals = [r.get(k) for r in rows]
        if any(v is not None for v in vals):
            best[k] = int(np.nanargmax([v if v is not None else -np.inf for v in vals]))
    return best


def _table_html(rows: list[dict], diff: list[str]) -> str:
    """Runs as rows (as in the CSV), the best value per metric in bold."""
    keys = [k for k, _ in COLUMNS]
    best = _best_rows(rows) if len(rows) > 1 else {}
    html_rows = []
    for i, r in enumerate(rows):
        cells = [
            f"<b>{H.esc(_cell(k, r.get(k)))}</b>" if best.get(k) == i else H.esc(_cell(k, r.get(k)))
            for k in keys
        ]
        html_rows.append(cells + [H.esc(str(r["settings"].get(k, "–"))) for k in diff])
    differ = f" Settings that differ: {', '.join(diff)}." if diff else " All settings are the same."
    return (
        '<div class="wide">'
        + H.table([h for _, h in COLUMNS] + diff, html_rows, numeric=range(4, len(keys)), raw=True)
        + "</div>"
        + H.note(
            "Best value per metric in bold. Times are training time summed over epochs "
            "(history.csv); img/s is the median training throughput." + differ
        )
    )


def _settings_html(rows: list[dict]) -> str:
    return H.table(
        ["run", *KEY_SETTINGS],
        [[r["run"], *(str(r["settings"].get(k, "–")) for k in KEY_SETTINGS)] for r in rows],
    )


def _csv(rows: list[dict], diff: list[str]) -> str:
    """Runs as rows with raw numbers (sortable in a spreadsheet)."""
    keys = [k for k, _ in COLUMNS]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", *keys, *diff])
    for r in rows:
        w.writerow([r["path"], *(r.get(k) for k in keys), *(r["settings"].get(k) for k in diff)])
    return buf.getvalue()
