"""Each cnnlab command's estimated peak memory (its ``Memory: ~X GB`` line) against its
measured peak resident memory (``/usr/bin/time -v``), one command at a time.

    python bench/command_memory.py --run runs/<a CIFAR-10 airbench run> \\
        --images <a folder of images to predict> \\
        --finetune-data /tmp/data/flowers5/flowers --keras-home /tmp/keras_home

Rows: ``evaluate`` at batch 64 and at 1024 (which the budget shrinks), ``predict``,
``export --format all`` (its files go to the work folder), ``serve`` of that ONNX file
(VmHWM after 50 requests: the estimate is at the server's limits, so it is an upper
bound), ``finetune --epochs 1`` (default MobileNet at 224 px) and the export of that run.
Without ``--finetune-data`` the fine-tuning rows are skipped. The budget is the
default one unless ``CNNLAB_MEMORY_BUDGET`` is set. Results are appended to
``bench/results/command_memory.jsonl``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

CNNLAB = [sys.executable, "-m", "cnnlab.cli.main"]
LINE = re.compile(r"Memory: ~(\d+(?:\.\d+)?) (GB|MB) estimated peak \(([^)]*)\)")


def _estimate(text: str) -> tuple[float | None, str]:
    found = LINE.findall(text)
    if not found:
        return None, ""
    value, unit, detail = found[-1]
    return float(value) * (1.0 if unit == "GB" else 1e-3), detail


def timed(name: str, args: list[str], env: dict) -> dict:
    """Run one command under ``/usr/bin/time -v``: its estimate, peak and exit status."""
    start = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-v", *CNNLAB, name, *args], capture_output=True, text=True, env=env
    )
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    estimate, detail = _estimate(done.stderr)
    errors = [
        line
        for line in done.stderr.splitlines()
        if line.startswith(("cnnlab: error", "Error:", "Usage:"))
    ]
    row = {
        "command": name,
        "args": " ".join(args),
        "exit": done.returncode,
        "estimate_gb": estimate,
        "plan": detail,
        "peak_gb": round(int(peak.group(1)) * 1024 / 1e9, 3) if peak else None,
        "seconds": round(time.perf_counter() - start, 1),
        "error": errors[-1][:300] if errors else None,
    }
    print(row, flush=True)
    return row


def served(model: Path, image: Path, env: dict) -> dict:
    """``cnnlab serve``: VmHWM after 50 requests of ``image``, and its estimate."""
    import httpx

    proc = subprocess.Popen(
        [*CNNLAB, "serve", str(model), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    url = None
    deadline = time.time() + 180
    while url is None and time.time() < deadline:
        m = re.search(r"on (http://\S+)", proc.stdout.readline())
        url = m.group(1) if m else None
    body = image.read_bytes()
    for _ in range(50):
        httpx.post(url + "predict", content=body, timeout=60).raise_for_status()
    hwm = re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{proc.pid}/status").read_text())
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    estimate, detail = _estimate(err)
    return {
        "command": "serve",
        "args": f"{model} (50 requests)",
        "exit": 0,
        "estimate_gb": estimate,
        "plan": detail,
        "peak_gb": round(int(hwm.group(1)) * 1024 / 1e9, 3),
        "seconds": None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", required=True, help="a finished training run folder")
    p.add_argument("--images", required=True, help="a folder of images to predict")
    p.add_argument("--finetune-data", help="folder:… data for the fine-tuning rows")
    p.add_argument("--keras-home", help="KERAS_HOME holding the ImageNet weights")
    p.add_argument("--workdir", help="where exports and the fine-tuning run go [a temp folder]")
    args = p.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="cnnlab-cmdmem-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **({"KERAS_HOME": args.keras_home} if args.keras_home else {})}
    image = next(p for p in sorted(Path(args.images).rglob("*")) if p.is_file())
    rows = [
        timed("evaluate", [args.run, "-b", "64", "--output", str(work / "ev64")], env),
        timed("evaluate", [args.run, "-b", "1024", "--output", str(work / "ev1024")], env),
        timed("predict", [args.run, args.images], env),
        timed("export", [args.run, "--format", "all", "--output", str(work / "export")], env),
    ]
    rows.append(served(work / "export" / "model.onnx", image, env))
    if args.finetune_data:
        runs = work / "ft"
        ft = ["--data", args.finetune_data, "--epochs", "1", "--runs-dir", str(runs)]
        rows.append(timed("finetune", ft, env))
        run = sorted(runs.iterdir())[-1]
        out = str(work / "ft-export")
        rows.append(timed("export", [str(run), "--format", "all", "--output", out], env))
    print(
        _common.table(
            rows, ["command", "args", "exit", "plan", "estimate_gb", "peak_gb", "seconds"]
        )
    )
    budget = os.environ.get("CNNLAB_MEMORY_BUDGET", "default")
    path = _common.append_result("command_memory", {"rows": rows, "budget": budget})
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
