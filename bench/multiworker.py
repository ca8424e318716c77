"""One process vs a 2-worker cluster (--strategy multiworker) on this machine, fairly pinned.

    python bench/multiworker.py                          # builtin:digits at 32 px, 8 epochs
    python bench/multiworker.py --data folder:/tmp/cifar10-small/train --epochs 5

The one-process run may use cores 0 and 1; each worker of the cluster is pinned
to one core (worker 0 to core 0, worker 1 to core 1, ``cnnlab launch --pin``),
so both sides have the same two cores. Same global batch, seed and config.
Reports per side: training images/s (median over epochs after the first, whole
cluster), seconds to reach the target validation accuracy (the lower of the two
runs' best, so both reach it), the final test accuracy, and for the cluster the
median step time, the median all-reduce of a gradient-sized tensor and their
ratio (the communication share of a step). Prints a table and appends a JSON
line to ``bench/results/multiworker.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, append_result, machine, table  # noqa: E402


def _run(argv: list[str], cores: set[int] | None, log: Path, timeout: float) -> float:
    """Run ``python -m cnnlab.cli.main ARGV``; returns its wall seconds."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env.pop("TF_CONFIG", None)

    def pin():
        if cores:
            os.sched_setaffinity(0, cores)

    t0 = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cnnlab.cli.main", *argv],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=pin,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
                proc.wait()
    if code != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({code}); see {log}")
    return time.perf_counter() - t0


def _history(run: Path) -> dict[str, list[float]]:
    sys.path.insert(0, str(ROOT / "src"))
    from cnnlab.run_folder import read_history

    return read_history(run / "history.csv")


def _side(run: Path, wall: float) -> dict:
    h = _history(run)
    metrics = json.loads((run / "metrics.json").read_text())
    ips = sorted(h["images_per_second"][1:] or h["images_per_second"])
    return {
        "wall_seconds": round(wall, 1),
        "images_per_second": ips[len(ips) // 2],
        "epoch_seconds": h["epoch_seconds"],
        "val_accuracy": h.get("val_accuracy"),
        "test_accuracy": metrics.get("test", {}).get("accuracy"),
        "multiworker": metrics.get("multiworker"),
    }


def _time_to(side: dict, target: float) -> float | None:
    elapsed = 0.0
    for seconds, acc in zip(side["epoch_seconds"], side["val_accuracy"] or []):
        elapsed += seconds
        if acc >= target - 1e-9:
            return round(elapsed, 2)
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="builtin:digits")
    p.add_argument("--image-size", default="32")
    p.add_argument("--model", default="simple_cnn")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-rate", default="0.003")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--keep", action="store_true", help="Keep the run folders and logs.")
    args = p.parse_args()
    cores = sorted(os.sched_getaffinity(0))[: args.workers]
    if len(cores) < args.workers:
        raise SystemExit(f"{args.workers} workers need {args.workers} cores; have {len(cores)}")
    work = Path(tempfile.mkdtemp(prefix="cnnlab-bench-mw-"))
    common = [
        "--data",
        args.data,
        "--model",
        args.model,
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--learning-rate",
        args.learning_rate,
        "--seed",
        "1",
        "--runs-dir",
        str(work / "runs"),
        "--no-tensorboard",
        "-q",
    ]
    if args.image_size:
        common += ["--image-size", args.image_size]
    load_before = os.getloadavg()
    one_wall = _run(["train", *common, "--name", "one"], set(cores), work / "one.log", args.timeout)
    cluster = [
        "launch",
        "--workers",
        str(args.workers),
        "--pin",
        "--logs",
        str(work / "logs"),
        "--",
        "train",
        *common,
        "--name",
        "cluster",
    ]
    two_wall = _run(cluster, None, work / "cluster.log", args.timeout)
    one, two = _side(work / "runs" / "one", one_wall), _side(work / "runs" / "cluster", two_wall)
    target = min(max(one["val_accuracy"] or [0]), max(two["val_accuracy"] or [0]))
    for side in (one, two):
        side["seconds_to_target"] = _time_to(side, target)
    mw = two["multiworker"] or {}
    rows = [
        {
            "run": "1 process, 2 cores",
            "images/s": one["images_per_second"],
            "s to target": one["seconds_to_target"],
            "test acc": one["test_accuracy"],
            "wall s": one["wall_seconds"],
            "step ms": "",
            "all-reduce ms": "",
            "comm share": "",
        },
        {
            "run": f"{args.workers} workers, 1 core each",
            "images/s": two["images_per_second"],
            "s to target": two["seconds_to_target"],
            "test acc": two["test_accuracy"],
            "wall s": two["wall_seconds"],
            "step ms": round(1000 * mw.get("median_step_seconds", 0), 1),
            "all-reduce ms": round(1000 * mw.get("allreduce_seconds", 0), 1),
            "comm share": mw.get("communication_share"),
        },
    ]
    print(
        f"target validation accuracy {target:.4f}; data {args.data}, model {args.model}, "
        f"global batch {args.batch_size}, {args.epochs} epochs"
    )
    print(table(rows))
    record = {
        "args": vars(args),
        "target_val_accuracy": target,
        "one_process": one,
        "cluster": two,
        "load_before": list(load_before),
        "machine": machine(),
    }
    print(f"appended to {append_result('multiworker', record)}")
    if args.keep:
        print(f"run folders and logs: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
