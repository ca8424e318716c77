"""The dataset check's outputs: the terminal summary, inspect.html, and the pair CSVs.

Every function here takes an :class:`~cnnlab.data.inspect.report.InspectReport`
(``report``) and only reads it.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from cnnlab import _html as H
from cnnlab._io import write_json, write_text
from cnnlab.data.inspect.aggregate import HUGE_SIDE, ODD_ASPECT, SMALL_SIDE
from cnnlab.data.inspect.duplicates import all_pairs, kind


# --------------------------------------------------------------------------- text
def _check(ok: bool, text: str) -> str:
    return f"  {'ok' if ok else '!!'}  {text}"


def _text_classes(report) -> list[str]:
    width = max(5, *(len(c) for c in report.class_names)) if report.class_names else 5
    lines = [f"{'class':<{width}}  " + "  ".join(f"{s:>7}" for s in report.splits)]
    for c in report.class_names:
        lines.append(
            f"{c:<{width}}  "
            + "  ".join(f"{report.counts[s].get(c, 0):>7,}" for s in report.splits)
        )
    lines.append(
        f"{'total':<{width}}  "
        + "  ".join(f"{sum(report.counts[s].values()):>7,}" for s in report.splits)
    )
    return lines


def _text_images(report, max_rows: int) -> list[str]:
    lines = [
        _check(
            report.imbalance < 3, f"imbalance (largest / smallest class): {report.imbalance:.2f}"
        )
    ]
    if report.empty:
        empty = ", ".join(f"{e['class']} in {e['split']}" for e in report.empty[:10])
        lines.append(_check(False, "empty: " + empty))
    sz = report.sizes
    if sz.get("most_common"):
        common = ", ".join(f"{s} ×{n:,}" for s, n in sz["most_common"][:3])
        lines.append(
            _check(True, f"sizes: {common}; smallest {sz['smallest']}, largest {sz['largest']}")
        )
        odd = [f"{sz['small']} under {SMALL_SIDE} px"] if sz["small"] else []
        odd += [f"{sz['huge']} over {HUGE_SIDE} px"] if sz["huge"] else []
        if sz["odd_aspect"]:
            odd.append(f"{sz['odd_aspect']} with aspect ratio over {ODD_ASPECT:.0f}:1")
        if odd:
            lines.append(_check(False, "unusual sizes: " + ", ".join(odd)))
    modes = ", ".join(f"{m} ×{n:,}" for m, n in report.modes.items())
    lines.append(_check(True, "colour modes: " + modes))
    lines.append(_check(not report.undecodable, f"undecodable files: {len(report.undecodable)}"))
    lines += [f"        {u['path']}: {u['problem']}" for u in report.undecodable[:max_rows]]
    mismatch = report.extension_mismatch
    lines.append(_check(not mismatch, f"extension differs from format: {len(mismatch)}"))
    lines += [f"        {u['path']}: really {u['format']}" for u in mismatch[:max_rows]]
    rotated = report.exif_rotated
    lines.append(
        _check(not rotated, f"EXIF-rotated images (the model sees them unrotated): {len(rotated)}")
    )
    lines += [f"        {u['path']}: {u['rotation']}" for u in rotated[:max_rows]]
    return lines


def _text_duplicates(report, max_rows: int) -> list[str]:
    n_exact = sum(len(g["files"]) - 1 for g in report.exact_groups)
    lines = [
        _check(
            not report.exact_groups,
            f"exact duplicates: {len(report.exact_groups)} group(s), {n_exact} redundant file(s)",
        )
    ]
    near_within = sum(1 for p in report.near_pairs if p["split_a"] == p["split_b"])
    lines.append(
        _check(
            not report.near_pairs,
            f"near duplicates (resized / re-encoded copies): "
            f"{len(report.near_pairs)} pair(s), {near_within} within a split",
        )
    )
    if len(report.splits) > 1 or report.splits[0] != "all":
        lines.append(
            _check(not report.leakage, f"leakage across splits: {len(report.leakage)} pair(s)")
        )
        for p in report.leakage[:max_rows]:
            lines.append(
                f"        {p['split_a']} {p['a']}  ==  {p['split_b']} {p['b']}  ({kind(p)})"
            )
        if len(report.leakage) > max_rows:
            more = len(report.leakage) - max_rows
            lines.append(f"        ... and {more} more (see leakage.csv)")
    elif report.exact_groups or report.near_pairs:
        lines.append(
            "  !!  no split yet: a random split may put both copies of a pair on both sides"
        )
    conflicts = report.label_conflicts
    lines.append(_check(not conflicts, f"copies with different labels: {len(conflicts)}"))
    for p in conflicts[:max_rows]:
        lines.append(f"        {p['a']} ({p['label_a']})  ==  {p['b']} ({p['label_b']})")
    return lines


def format_text(report, max_rows: int = 10) -> str:
    """The terminal summary: class table, then one line per check, then the worst offenders."""
    head = (
        f"{report.spec}: {report.num_images:,} images, {len(report.class_names)} classes "
        f"(checked in {report.seconds:.1f} s)"
    )
    lines = [head, "", *_text_classes(report), ""]
    lines += _text_images(report, max_rows)
    lines += _text_duplicates(report, max_rows)
    lines += [f"  note: {n}" for n in report.notes]
    return "\n".join(lines)


# --------------------------------------------------------------------------- CSV
CSV_HEADER = [
    "kind",
    "split_a",
    "file_a",
    "label_a",
    "split_b",
    "file_b",
    "label_b",
    "hash_distance",
    "pixel_difference",
]


def pairs_csv(report, leakage_only: bool = False) -> str:
    """Every duplicate pair (or only those across splits), one row each."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_HEADER)
    pairs = report.leakage if leakage_only else all_pairs(report.exact_groups, report.near_pairs)
    for p in pairs:
        w.writerow(
            [
                "exact" if p.get("exact") else "near",
                p["split_a"],
                p["a"],
                p["label_a"],
                p["split_b"],
                p["b"],
                p["label_b"],
                p["distance"],
                p["difference"],
            ]
        )
    return buf.getvalue()


# --------------------------------------------------------------------------- HTML
def _thumb_png(report, index: int) -> bytes | None:
    source = getattr(report, "_source", None)
    if source is None:
        return None
    if source.is_files:
        return H.file_png(str(source.paths[index]), 128)
    if source.is_records:  # packed images are not read back one by one for the page
        return None
    return H.array_png(source.images[index], 128)


def _short(path: str) -> str:
    parts = Path(path).parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else path


def _problem_list(title: str, items: list[dict], keys: tuple[str, str], limit: int = 50) -> str:
    if not items:
        return f"<h3>{H.esc(title)}</h3>" + '<p class="good">None.</p>'
    rows = [(it[keys[0]], it[keys[1]]) for it in items[:limit]]
    more = (
        H.note(f"... and {len(items) - limit} more in inspect.json.") if len(items) > limit else ""
    )
    return (
        f"<h3>{H.esc(title)}: {len(items)}</h3>"
        + '<div class="scroll">'
        + H.table(list(keys), rows)
        + "</div>"
        + more
    )


def _html_summary(report) -> str:
    problems = report.problems()
    tiles = H.tiles(
        [
            ("images", f"{report.num_images:,}"),
            ("classes", str(len(report.class_names))),
            ("imbalance", f"{report.imbalance:.2f}"),
            ("undecodable", str(len(report.undecodable))),
            ("leakage pairs", str(len(report.leakage))),
            ("duplicate pairs in a split", str(report.within_split_duplicates())),
        ]
    )
    summary = tiles + (
        ("<ul>" + "".join(f'<li class="bad">{H.esc(p)}</li>' for p in problems) + "</ul>")
        if problems
        else '<p class="good">No problems found.</p>'
    )
    return summary + H.note(
        f"Checked in {report.seconds:.1f} s. Settings: "
        + ", ".join(f"{k} {v}" for k, v in report.settings.items())
    )


def _html_classes(report) -> str:
    top = max((v for s in report.splits for v in report.counts[s].values()), default=1) or 1
    rows = []
    for c in report.class_names:
        cells = [H.esc(c)]
        for s in report.splits:
            v = report.counts[s][c]
            cells.append(f'{v:,} <span class="bar" style="width:{80 * v / top:.0f}px"></span>')
        rows.append(cells)
    rows.append(["total", *(f"{sum(report.counts[s].values()):,}" for s in report.splits)])
    table = H.table(
        ["class", *report.splits],
        rows,
        numeric=range(1, len(report.splits) + 1),
        raw=True,
        row_classes=[""] * len(report.class_names) + ["total"],
    )
    empty = ", ".join(f"{e['class']} in {e['split']}" for e in report.empty)
    return (
        '<div class="scroll">'
        + table
        + "</div>"
        + H.note(
            f"Imbalance (largest / smallest class over all splits): {report.imbalance:.2f}."
            + (f" Empty: {empty}" if report.empty else "")
        )
    )


def _html_images(report) -> str:
    sz = report.sizes
    rows = [
        (
            "most common sizes (w×h)",
            ", ".join(f"{s} ×{n:,}" for s, n in sz.get("most_common", [])[:5]),
        )
    ]
    if "smallest" in sz:
        rows += [
            ("smallest, largest", f"{sz['smallest']}, {sz['largest']}"),
            ("distinct sizes", f"{sz['unique_sizes']:,}"),
            (
                f"under {SMALL_SIDE} px / over {HUGE_SIDE} px / aspect over {ODD_ASPECT:.0f}:1",
                f"{sz['small']} / {sz['huge']} / {sz['odd_aspect']}",
            ),
        ]
    rows += [
        ("colour modes", ", ".join(f"{m} ×{n:,}" for m, n in report.modes.items())),
        ("formats", ", ".join(f"{m} ×{n:,}" for m, n in report.formats.items())),
    ]
    return (
        H.table(["", ""], rows)
        + _problem_list("Files that cannot be decoded", report.undecodable, ("path", "problem"))
        + _problem_list(
            "Extension differs from the real format (they load fine)",
            report.extension_mismatch,
            ("path", "format"),
        )
        + _problem_list(
            "EXIF-rotated images: viewers turn them, TensorFlow does not, so the model "
            "sees them as stored",
            report.exif_rotated,
            ("path", "rotation"),
        )
    )


def _pair_card(report, p: dict) -> str:
    pics = [_thumb_png(report, p["index_a"]), _thumb_png(report, p["index_b"])]
    imgs = "".join(H.img(x, "image", cls="") for x in pics)
    label = (
        "exact copy" if p.get("exact") else f"near: {p['distance']} bits, Δ {p['difference']:.2f}"
    )
    lab_cls = "bad" if p["label_a"] != p["label_b"] else ""
    files = "<br>".join(
        f'<span class="file" title="{H.esc(p[k])}">{H.esc(p["split_" + k])}: '
        f"{H.esc(_short(p[k]))}</span>"
        for k in ("a", "b")
    )
    cap = (
        f'<b>{H.esc(label)}</b><br><span class="{lab_cls}">{H.esc(p["label_a"])} / '
        f"{H.esc(p['label_b'])}</span><br>{files}"
    )
    return f'<div class="card"><div class="imgs">{imgs}</div><div class="cap">{cap}</div></div>'


def _pair_cards(report, pairs: list[dict], limit: int = 60) -> str:
    cards = "".join(_pair_card(report, p) for p in pairs[:limit])
    more = (
        H.note(f"... and {len(pairs) - limit:,} more in the CSV files.")
        if len(pairs) > limit
        else ""
    )
    return '<div class="gallery">' + cards + "</div>" + more


def _html_leakage(report) -> str:
    if report.splits == ["all"]:
        return H.note(
            "The source has no train/val/test parts yet, so nothing can leak; but a random "
            "split may put the two copies of a duplicate pair on both sides (see below)."
        )
    if report.leakage:
        return H.note(
            f"{len(report.leakage):,} pair(s) of copies across splits (all in leakage.csv). "
            "A test image that is a copy of a training image measures memory, not "
            "generalisation: remove one copy of each pair."
        ) + _pair_cards(report, report.leakage)
    return '<p class="good">No image of one split is a copy of an image in another.</p>'


def _html_within(report) -> str:
    pairs = all_pairs(report.exact_groups, report.near_pairs)
    within = [p for p in pairs if p["split_a"] == p["split_b"]]
    return H.note(
        f"{len(report.exact_groups)} group(s) of byte-identical files; "
        f"{len(report.near_pairs):,} near-duplicate pair(s) (resized, re-encoded or lightly "
        f"edited copies). {len(within):,} pair(s) lie within one split."
    ) + (
        _pair_cards(report, within)
        if within
        else '<p class="good">No duplicates within a split.</p>'
    )


def html_page(report) -> str:
    """inspect.html: summary, classes, images, leakage, duplicates, label conflicts, notes."""
    secs = [
        ("summary", "Summary", _html_summary(report)),
        ("classes", "Classes", _html_classes(report)),
        ("images", "Images", _html_images(report)),
        ("leakage", "Leakage across splits", _html_leakage(report)),
        ("duplicates", "Duplicates within a split", _html_within(report)),
    ]
    if report.label_conflicts:
        conflicts = H.note(
            "The same picture under two labels: at least one label is wrong."
        ) + _pair_cards(report, report.label_conflicts)
        secs.append(("conflicts", "Copies with different labels", conflicts))
    if report.notes:
        secs.append(("notes", "Notes", "".join(H.note(n) for n in report.notes)))
    return H.page(
        f"cnnlab data check: {report.spec}",
        f"{report.num_images:,} images · {len(report.class_names)} classes · "
        f"{', '.join(report.splits)}",
        secs,
        footer="Written by cnnlab data inspect. The same numbers are in inspect.json.",
    )


# --------------------------------------------------------------------------- files
def write_results(report, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write inspect.json, inspect.html, duplicates.csv and (with leakage) leakage.csv."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": write_json(out / "inspect.json", report.to_dict()),
        "html": write_text(out / "inspect.html", html_page(report)),
        "duplicates": write_text(out / "duplicates.csv", pairs_csv(report)),
    }
    if report.leakage:
        paths["leakage"] = write_text(out / "leakage.csv", pairs_csv(report, leakage_only=True))
    return paths
