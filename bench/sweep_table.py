"""Markdown tables of a finished sweep, for the README: every trial, and each factor's mean.

    python bench/sweep_table.py sweeps/<time>-cifar10-small [--baseline runs/<run>]

Reads the sweep folder's trials.csv (and each trial's metrics.json for its test
accuracy), prints one row per trial sorted by validation accuracy, then, for every
searched parameter, the mean validation and test accuracy of the complete trials at
each of its values. ``--baseline`` adds a run folder's test accuracy for comparison.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

FIXED = ("trial", "state", "test_accuracy", "epochs", "run_dir")


def read_trials(folder: Path) -> tuple[list[dict], str, list[str]]:
    with open(folder / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    metric = [k for k in rows[0] if k not in FIXED][0]
    params = [k for k in rows[0] if k not in FIXED and k != metric]
    return rows, metric, params


def _f(text: str) -> float | None:
    return float(text) if text not in ("", None) else None


def trial_table(rows, metric, params) -> str:
    head = ["trial", "state", metric, "test accuracy", *params]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    done = [r for r in rows if r["state"] in ("COMPLETE", "PRUNED")]
    for r in sorted(done, key=lambda r: -(_f(r[metric]) or 0)):
        cells = [
            r["trial"],
            r["state"].lower(),
            r[metric],
            r["test_accuracy"],
            *[r[p] for p in params],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def factor_table(rows, metric, params) -> str:
    lines = [
        "| parameter | value | complete trials | mean " + metric + " | mean test accuracy |",
        "|---|---|---|---|---|",
    ]
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    for p in params:
        groups: dict[str, list[dict]] = defaultdict(list)
        for r in complete:
            groups[r[p]].append(r)
        for value, group in sorted(groups.items()):
            val = sum(_f(r[metric]) for r in group) / len(group)
            tests = [_f(r["test_accuracy"]) for r in group if _f(r["test_accuracy"]) is not None]
            test = f"{sum(tests) / len(tests):.4f}" if tests else ""
            lines.append(f"| {p} | {value} | {len(group)} | {val:.4f} | {test} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--baseline", type=Path, help="a run folder to compare against")
    args = ap.parse_args()
    rows, metric, params = read_trials(args.sweep)
    print(trial_table(rows, metric, params))
    print()
    print(factor_table(rows, metric, params))
    if args.baseline:
        m = json.loads((args.baseline / "metrics.json").read_text())
        print(
            f"\nbaseline {args.baseline.name}: test accuracy {m['test']['accuracy']:.4f}, "
            f"best {m['monitor']} {m['best_value']:.4f}"
        )


if __name__ == "__main__":
    main()
