"""From `cnnlab train` to the first training step: each stage's time, cold and with a warm cache.

Runs ``cnnlab train`` (the CLI's ``main``) in a child process that wraps the
stages it goes through and leaves as soon as the first training step ends:

- **start**: Python and TensorFlow import, config (child start to ``load_data``);
- **listing**: ``open_source`` (walking the folder, or reading a packed index);
- **scan**: the pre-flight scan (``scan_images``; per-file cache, see
  ``cnnlab data cache``);
- **split**: ``make_split``; **load other**: the rest of ``load_data``;
- **check**: the dataset check before training (``check_before_training``:
  hashes, duplicates, leakage; per-file cache);
- **setup**: the rest before ``fit``: the recipe, input statistics from a
  sample of images, model build and compile, the run folder (``split.csv``);
- **first step**: from ``fit`` to the end of step 1: the input pipeline's
  start (iterator, filling the shuffle buffer: decoding), tracing and compiling
  the step, the step. Keras pulls the first batch inside the traced step, so
  these overlap and are timed together;
- **pipeline start** (a part of *first step*, not added to the total): after
  step 1, a new iterator over the same training pipeline is timed to its first
  batch (the files it reads may then be in the OS page cache).

Peak RSS is the child's ``ru_maxrss`` at that point. ``cold`` runs use a new,
empty scan cache (``CNNLAB_CACHE_DIR``); ``warm`` runs then reuse it. Files
may or may not be in the OS page cache (it is not dropped: no privilege here);
the load average beside each row says how busy the shared machine was.

``--fit`` reads the results file and fits each stage's time as ``c * n**k``
through the runs of one mode at different sizes (two sizes: exact), then
projects to 1.28 M images (ImageNet-1k's training set).

``--fill-cache`` runs the two per-file stages alone (the pre-flight scan and
the check's reading, as ``cnnlab train`` calls them) on the files of ``--data``
present now, into ``--cache-dir``, timing the files not cached yet: repeated
while a large folder is still being generated it spreads the cold per-file
work over the generation, and the sum of its rows is the cold per-file cost.
Since the scan's one read of a file also gives the check's result (issue #16),
the check's row counts the files it still had to read (none after a scan).

``--pre-flight`` times the cold pre-flight alone, in this process: ``load_data``
(listing, scan, split) then ``check_before_training`` (reading, duplicates,
report), with a new empty cache; wall and CPU time per image.

Usage:
    python bench/time_to_first_step.py --data folder:/tmp/data/cifar10 --modes cold,warm
    python bench/time_to_first_step.py --data folder:/tmp/imagenet-like --modes cold,warm
    python bench/time_to_first_step.py --data tfrecord:/tmp/imagenet-like-tfr --modes warm
    python bench/time_to_first_step.py --fit
    nice -n 19 python bench/time_to_first_step.py --data folder:/tmp/il10k --pre-flight
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

_common.quiet_tensorflow()
RESULTS = _common.RESULTS / "time_to_first_step.jsonl"
STAGES = ("start", "listing", "scan", "split", "load_other", "check", "setup", "first_step")
PART = "pipeline_start"  # a part of first_step
PRE_FLIGHT = ("listing", "scan", "split", "load_other", "check")
PROJECT_TO = 1_281_167


def child(out_path: str, train_args: list[str]) -> None:
    """Run `cnnlab train` with the stages wrapped; write the marks and exit after step 1."""
    t0 = time.monotonic()
    marks: dict[str, float] = {"child_start": 0.0}

    def mark(name: str) -> None:
        marks.setdefault(name, time.monotonic() - t0)

    def timed(module, name: str, stage: str):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            mark(f"{stage}_begin")
            try:
                return real(*args, **kwargs)
            finally:
                marks[f"{stage}_end"] = time.monotonic() - t0

        setattr(module, name, wrapper)

    import keras
    import tensorflow as tf

    import cnnlab.data
    import cnnlab.data.inspect

    timed(cnnlab.data, "load_data", "load")
    timed(cnnlab.data, "open_source", "listing")
    timed(cnnlab.data, "scan_images", "scan")
    timed(cnnlab.data, "make_split", "split")
    timed(cnnlab.data.inspect, "check_before_training", "check")

    fitted = []

    class FirstStep(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            mark("first_step_end")
            marks["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            if isinstance(fitted[0], tf.data.Dataset):
                start = time.monotonic()
                next(iter(fitted[0]))
                marks["pipeline_probe_s"] = time.monotonic() - start
            Path(out_path).write_text(json.dumps(marks))
            sys.stdout.flush()
            os._exit(0)

    real_fit = keras.Model.fit

    def fit(self, *args, **kwargs):
        mark("fit")
        fitted.append(args[0] if args else kwargs.get("x"))
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), FirstStep()]
        return real_fit(self, *args, **kwargs)

    keras.Model.fit = fit
    from cnnlab.cli.main import main

    code = main(["train", *train_args])
    marks["exit_code"] = code
    Path(out_path).write_text(json.dumps(marks))


def stages_of(m: dict) -> dict[str, float]:
    """Stage durations (s) from the child's marks."""
    load = m["load_end"] - m["load_begin"]
    inner = sum(m.get(f"{s}_end", 0) - m.get(f"{s}_begin", 0) for s in ("listing", "scan", "split"))
    out = {
        "start": m["load_begin"],
        "listing": m["listing_end"] - m["listing_begin"],
        "scan": m.get("scan_end", 0) - m.get("scan_begin", 0),
        "split": m["split_end"] - m["split_begin"],
        "load_other": load - inner,
        "check": m.get("check_end", 0) - m.get("check_begin", 0),
        # Everything between load_data and fit that is not the check.
        "setup": m["fit"] - m["load_end"] - (m.get("check_end", 0) - m.get("check_begin", 0)),
        "first_step": m["first_step_end"] - m["fit"],
        PART: m.get("pipeline_probe_s", float("nan")),
    }
    return {k: round(v, 2) for k, v in out.items()}


def count_images(spec: str) -> int:
    from cnnlab.data import open_source

    return len(open_source(spec))


def run_once(spec: str, mode: str, cache_dir: Path, extra: list[str]) -> dict:
    runs = Path(tempfile.mkdtemp(prefix="ttfs-runs-"))
    out = runs / "marks.json"
    args = ["--data", spec, "--epochs", "1", "--runs-dir", str(runs), "-q", *extra]
    env = {**os.environ, "CNNLAB_CACHE_DIR": str(cache_dir)}
    load_before = os.getloadavg()[0]
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(out), "--", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.monotonic() - start
    if not out.exists():
        raise SystemExit(
            f"child failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    marks = json.loads(out.read_text())
    if "first_step_end" not in marks:
        raise SystemExit(f"child ended without a training step:\n{proc.stderr[-3000:]}")
    return {
        "mode": mode,
        "wall_to_first_step_s": round(wall, 1),
        "child_to_first_step_s": round(marks["first_step_end"], 1),
        "pre_flight_s": None,
        "stages_s": stages_of(marks),
        "peak_rss_mb": round(marks["peak_rss_mb"]),
        "load_avg_before": round(load_before, 2),
        "load_avg_after": round(os.getloadavg()[0], 2),
        "train_args": args,
        "marks": marks,
    }


def measure(args) -> None:
    spec = args.data
    n = count_images(spec)
    cache_dir = Path(args.cache_dir or tempfile.mkdtemp(prefix="ttfs-cache-"))
    extra = args.train_args.split() if args.train_args else []
    rows = []
    for mode in args.modes.split(","):
        if mode == "cold" and any(cache_dir.iterdir()):
            cache_dir = Path(tempfile.mkdtemp(prefix="ttfs-cache-"))
        row = run_once(spec, mode, cache_dir, extra)
        row["pre_flight_s"] = round(sum(row["stages_s"][s] for s in PRE_FLIGHT), 1)
        row.update({"data": spec, "images": n, "label": args.label or spec})
        row["per_image_ms"] = {s: round(1000 * v / n, 4) for s, v in row["stages_s"].items()}
        rows.append(row)
        st = row["stages_s"]
        print(
            f"{spec} ({n:,} images) {mode}: {row['child_to_first_step_s']} s to the first step, "
            f"pre-flight {row['pre_flight_s']} s, peak RSS {row['peak_rss_mb']} MB, load "
            f"{row['load_avg_before']}->{row['load_avg_after']}",
            flush=True,
        )
        print("   " + "  ".join(f"{k} {st[k]}" for k in (*STAGES, PART)), flush=True)
        with open(RESULTS, "a") as f:
            f.write(
                json.dumps({"bench": "time_to_first_step", **row, "machine": _common.machine()})
                + "\n"
            )


def fill_cache(args) -> None:
    """Scan and check-read the files of args.data not yet in args.cache_dir; time them."""
    import numpy as np

    os.environ["CNNLAB_CACHE_DIR"] = args.cache_dir
    from cnnlab.data import open_source
    from cnnlab.data.inspect.files import file_checks
    from cnnlab.data.scan import scan_images
    from cnnlab.data.scan_cache import CHECK_FAST, CHECK_FULL, FileCache

    source = open_source(args.data)
    paths = [str(p) for p in source.paths]
    row = {"bench": "fill_cache", "data": args.data, "images": len(paths)}
    for kind, run in (
        ("scan", lambda: scan_images(paths, quiet=True)),
        (
            "check-fast",
            lambda: file_checks(
                paths,
                np.array(["train"] * len(paths)),
                [source.class_names[y] for y in source.labels],
                False,
                min(8, 2 * (os.cpu_count() or 2)),
                quiet=True,
            ),
        ),
    ):
        # What the check takes from the cache: its own entries and full-decode ones.
        store = FileCache.open(paths, kind, None, also=(CHECK_FULL,) if kind == CHECK_FAST else ())
        cached = len(store.lookup(paths)[0])
        store.close()
        cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        run()
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        row[kind] = {
            "new_files": len(paths) - cached,
            "wall_s": round(time.monotonic() - t0, 1),
            "cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 1),
        }
    row["load_avg"] = round(os.getloadavg()[0], 2)
    print(json.dumps(row), flush=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps({**row, "machine": _common.machine()}) + "\n")


def pre_flight(args) -> None:
    """Cold load_data (scan) then check_before_training, in process; wall and CPU per image."""
    os.environ["CNNLAB_CACHE_DIR"] = tempfile.mkdtemp(prefix="ttfs-cache-")
    from cnnlab.data import load_data
    from cnnlab.data.inspect import check_before_training

    def now() -> tuple[float, float]:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return time.monotonic(), r.ru_utime + r.ru_stime

    start = now()
    bundle = load_data(args.data, image_size=64)
    loaded = now()
    report = check_before_training(bundle, quiet=True)
    done = now()
    n = len(bundle.source)
    row = {"bench": "pre_flight", "data": args.data, "images": n, "label": args.label}
    for stage, (a, b) in {"scan": (start, loaded), "check": (loaded, done)}.items():
        row[stage] = {"wall_s": round(b[0] - a[0], 1), "cpu_s": round(b[1] - a[1], 1)}
    row["per_image_ms"] = {
        "wall": round(1000 * (done[0] - start[0]) / n, 2),
        "cpu": round(1000 * (done[1] - start[1]) / n, 2),
    }
    row["findings"] = len(report.problems()) if report is not None else None
    row["load_avg"] = round(os.getloadavg()[0], 2)
    print(json.dumps(row), flush=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps({**row, "machine": _common.machine()}) + "\n")


def fit(args) -> None:
    """Fit t = c * n**k per stage through the latest run of each (mode, size); project."""
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    rows = [
        r
        for r in rows
        if r.get("bench") == "time_to_first_step" and r["data"].startswith(args.kind)
    ]
    latest: dict = {}
    for r in rows:
        latest[(r["mode"], r["images"])] = r
    out = {
        "bench": "time_to_first_step_fit",
        "kind": args.kind,
        "project_to": PROJECT_TO,
        "modes": {},
    }
    for mode in ("cold", "warm"):
        sizes = sorted(n for (m, n) in latest if m == mode)
        if len(sizes) < 2:
            continue
        a, b = latest[(mode, sizes[0])], latest[(mode, sizes[-1])]
        proj, expo = {}, {}
        for s in (*STAGES, PART):
            ta, tb = max(a["stages_s"][s], 0.01), max(b["stages_s"][s], 0.01)
            k = math.log(tb / ta) / math.log(b["images"] / a["images"])
            # Per-image stages cannot grow slower than linear in the work they do; keep the fit.
            expo[s] = round(k, 2)
            proj[s] = round(tb * (PROJECT_TO / b["images"]) ** k, 1)
        pre = round(sum(proj[s] for s in PRE_FLIGHT), 1)
        total = round(sum(proj[s] for s in STAGES), 1)
        rss_k = math.log(b["peak_rss_mb"] / a["peak_rss_mb"]) / math.log(b["images"] / a["images"])
        rss = round(b["peak_rss_mb"] * (PROJECT_TO / b["images"]) ** rss_k)
        out["modes"][mode] = {
            "from_sizes": [a["images"], b["images"]],
            "exponent": expo,
            "projected_s": proj,
            "projected_pre_flight_s": pre,
            "projected_to_first_step_s": total,
            "projected_peak_rss_mb": rss,
        }
        print(
            f"{mode}: fitted on {a['images']:,} and {b['images']:,} images; at {PROJECT_TO:,}: "
            f"pre-flight {pre} s ({pre / 60:.1f} min), first step after {total} s, "
            f"peak RSS ~{rss} MB"
        )
        for s in (*STAGES, PART):
            print(f"   {s:15s} n^{expo[s]:<5}  {proj[s]:>8} s")
    with open(RESULTS, "a") as f:
        f.write(json.dumps({**out, "machine": _common.machine()}) + "\n")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sep = sys.argv.index("--")
        child(sys.argv[2], sys.argv[sep + 1 :])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="Data spec, e.g. folder:/tmp/data/cifar10")
    ap.add_argument("--modes", default="cold,warm", help="cold, warm or cold,warm")
    ap.add_argument("--cache-dir", help="Scan cache to use [a new temporary folder]")
    ap.add_argument("--train-args", default="", help="More `cnnlab train` options")
    ap.add_argument("--label", help="Name in the results [the spec]")
    ap.add_argument("--fit", action="store_true", help="Fit and project from earlier results")
    ap.add_argument(
        "--fill-cache",
        action="store_true",
        help="Only scan and check-read the uncached files of --data into --cache-dir",
    )
    ap.add_argument(
        "--pre-flight",
        action="store_true",
        help="Only time the cold scan and dataset check of --data, in process",
    )
    ap.add_argument("--kind", default="folder:", help="With --fit: which specs to fit [folder:]")
    args = ap.parse_args()
    if args.fit:
        fit(args)
    elif args.fill_cache and args.data and args.cache_dir:
        fill_cache(args)
    elif args.pre_flight and args.data:
        pre_flight(args)
    elif args.data:
        measure(args)
    else:
        ap.error("give --data SPEC or --fit")


if __name__ == "__main__":
    main()
