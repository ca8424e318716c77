"""The dataset check's findings as one object: what inspect.json holds, and its views."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.data.inspect.duplicates import pairs_in
from cnnlab.data.inspect.render import format_text, write_results


@dataclass
class InspectReport:
    """The dataset check's findings; ``to_dict()`` is inspect.json, ``format_text()`` the terminal table."""

    spec: str
    class_names: list[str]
    num_images: int
    splits: list[str]
    counts: dict[str, dict[str, int]]  # split -> class -> images
    imbalance: float
    empty: list[dict]  # {"split", "class"}
    sizes: dict[str, Any]
    modes: dict[str, int]
    formats: dict[str, int]
    undecodable: list[dict]
    extension_mismatch: list[dict]
    exif_rotated: list[dict]
    exact_groups: list[dict]  # {"files": [...], "splits": [...], "labels": [...]}
    # {"a", "b", "split_a", "split_b", "label_a", "label_b", "distance", "difference"}
    near_pairs: list[dict]
    leakage: list[dict]  # pairs (exact or near) across splits
    label_conflicts: list[dict]  # pairs (exact or near) with different labels
    settings: dict[str, Any]
    seconds: float
    notes: list[str] = field(default_factory=list)

    def within_split_duplicates(self) -> int:
        """Number of duplicate pairs (exact or near) inside one split."""
        exact = sum(pairs_in(g, same_split=True) for g in self.exact_groups)
        return exact + sum(1 for p in self.near_pairs if p["split_a"] == p["split_b"])

    def problems(self) -> list[str]:
        """One line per finding that needs attention (empty when the data looks clean)."""
        out = []
        if self.undecodable:
            out.append(f"{len(self.undecodable)} file(s) cannot be decoded")
        if self.leakage:
            out.append(f"{len(self.leakage)} duplicate pair(s) across splits (leakage)")
        if self.label_conflicts:
            out.append(f"{len(self.label_conflicts)} duplicate pair(s) with different labels")
        dup = self.within_split_duplicates()
        if dup:
            out.append(f"{dup} duplicate pair(s) within a split")
        if self.extension_mismatch:
            out.append(
                f"{len(self.extension_mismatch)} file(s) whose extension is not their format"
            )
        if self.exif_rotated:
            out.append(f"{len(self.exif_rotated)} image(s) with an EXIF rotation")
        if self.imbalance >= 3:
            out.append(f"class imbalance {self.imbalance:.1f}:1")
        if self.empty:
            out.append(f"{len(self.empty)} class(es) with no image in a split")
        return out

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        d["problems"] = self.problems()
        return d

    def format_text(self, max_rows: int = 10) -> str:
        """The terminal summary: class table, then one line per check, then the worst offenders."""
        return format_text(self, max_rows)

    def write(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write inspect.json, inspect.html and duplicates.csv (every pair) into ``out_dir``."""
        return write_results(self, out_dir)
