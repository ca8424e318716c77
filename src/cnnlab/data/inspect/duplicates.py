"""Duplicate and leakage search: exact copies by content hash, near copies by perceptual hash.

Exact copies (same bytes) are grouped first and collapsed, so the near-duplicate
search runs over distinct contents only; every copy of one content is then a
near duplicate of every copy of the other. A pair across splits is *leakage*; a
pair with two labels is a *label conflict*.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from typing import Any

import numpy as np

from cnnlab.data.inspect.aggregate import SPLIT_ORDER
from cnnlab.data.inspect.files import FileCheck
from cnnlab.data.inspect.hashing import MAX_PAIRS, near_duplicate_pairs, phash


def _order(split: str) -> str:
    return split if split in SPLIT_ORDER else "all"


def pair_row(a: FileCheck, b: FileCheck, dist: int, diff: float, is_exact: bool) -> dict:
    """One duplicate pair as inspect.json lists it (train first, then val, then test)."""
    if SPLIT_ORDER.index(_order(a.split)) > SPLIT_ORDER.index(_order(b.split)):
        a, b = b, a
    return {
        "a": a.path,
        "b": b.path,
        "split_a": a.split,
        "split_b": b.split,
        "label_a": a.label,
        "label_b": b.label,
        "distance": int(dist),
        "difference": float(diff),
        "exact": is_exact,
        "index_a": a.index,
        "index_b": b.index,
    }


def content_groups(good: list[FileCheck]) -> dict[str, list[int]]:
    """File indices by content digest (one group per distinct content, in file order)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for c in good:
        groups[c.digest].append(c.index)
    return groups


def exact_duplicates(
    checks: list[FileCheck], groups: dict[str, list[int]]
) -> tuple[list[dict], list[dict]]:
    """The groups of byte-identical files, and their pairs (at most MAX_PAIRS)."""
    exact = [g for g in groups.values() if len(g) > 1]
    exact_groups = [
        {
            "files": [checks[i].path for i in g],
            "splits": [checks[i].split for i in g],
            "labels": [checks[i].label for i in g],
            "indices": g,
        }
        for g in exact
    ]
    rows: list[dict] = []
    for g in exact:
        for x in range(len(g)):
            for y in range(x + 1, len(g)):
                if len(rows) < MAX_PAIRS:
                    rows.append(pair_row(checks[g[x]], checks[g[y]], 0, 0.0, True))
    return exact_groups, rows


def near_duplicates(
    checks: list[FileCheck],
    thumbs: np.ndarray,
    groups: dict[str, list[int]],
    max_distance: int,
    max_difference: float,
    quiet: bool = False,
) -> tuple[list[dict], list[str]]:
    """Near-duplicate pairs among distinct contents, expanded to every copy; and notes."""
    if len(groups) < 2:
        return [], []
    reps = np.array(sorted(g[0] for g in groups.values()), np.int64)
    found, truncated = near_duplicate_pairs(
        phash(thumbs[reps]),
        thumbs[reps],
        max_distance,
        max_difference,
        workers=min(4, os.cpu_count() or 2),
        quiet=quiet,
    )
    notes = [f"Stopped collecting near-duplicate pairs at {MAX_PAIRS:,}."] if truncated else []
    members = {g[0]: g for g in groups.values()}
    near: list[dict] = []
    for i, j, dist, diff in found:
        # Every copy of one content is a near duplicate of every copy of the other.
        for a in members[int(reps[i])]:
            for b in members[int(reps[j])]:
                if len(near) < MAX_PAIRS:
                    near.append(pair_row(checks[a], checks[b], dist, diff, False))
    return near, notes


def leakage_and_conflicts(pairs: list[dict]) -> dict[str, Any]:
    """The pairs across splits (leakage) and the pairs with different labels."""
    return {
        "leakage": [p for p in pairs if p["split_a"] != p["split_b"]],
        "label_conflicts": [p for p in pairs if p["label_a"] != p["label_b"]],
    }


def kind(p: dict) -> str:
    """``exact copy`` or ``near, N bits``: how a pair is described in text."""
    return "exact copy" if p["distance"] == 0 and p.get("exact") else f"near, {p['distance']} bits"


def pairs_in(group: dict, same_split: bool) -> int:
    """Pairs of an exact group inside one split (or across splits)."""
    splits = Counter(group["splits"])
    if same_split:
        return sum(n * (n - 1) // 2 for n in splits.values())
    total = len(group["splits"])
    return total * (total - 1) // 2 - sum(n * (n - 1) // 2 for n in splits.values())


def all_pairs(exact_groups: list[dict], near_pairs: list[dict]) -> list[dict]:
    """Exact pairs (expanded from their groups) then near pairs, at most MAX_PAIRS of each."""
    exact: list[dict] = []
    for g in exact_groups:
        for x in range(len(g["files"])):
            for y in range(x + 1, len(g["files"])):
                if len(exact) >= MAX_PAIRS:
                    break
                exact.append(
                    {
                        "a": g["files"][x],
                        "b": g["files"][y],
                        "split_a": g["splits"][x],
                        "split_b": g["splits"][y],
                        "label_a": g["labels"][x],
                        "label_b": g["labels"][y],
                        "distance": 0,
                        "difference": 0.0,
                        "exact": True,
                        "index_a": g["indices"][x],
                        "index_b": g["indices"][y],
                    }
                )
    return exact + near_pairs
