"""The near-duplicate search at ImageNet scale: multi-index hashing against the exhaustive search.

Generates ``--n`` random 63-bit hashes (what pHash gives unrelated pictures)
with ``--planted`` of them replaced by near copies of others (0 to d bits
flipped), then times, on one thread:

* the multi-index search on all of them (and on n/4 and n/2, to fit how it grows
  and project it to 1.28 million, ImageNet-1k's training set);
* the exhaustive search (every pair: what the dataset check did before) on
  ``--subset`` hashes, extrapolated to n by n² (it does exactly n(n-1)/2
  comparisons), after checking that both searches find the same pairs there.

Prints a table and appends a JSON line to ``bench/results/near_duplicates.jsonl``.

    python bench/near_duplicates.py                   # 200,000 hashes, 1 % planted
    python bench/near_duplicates.py --n 50000 --subset 10000
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_result, quiet_tensorflow, table  # noqa: E402

quiet_tensorflow()

from cnnlab.data.inspect.hamming import MultiIndex, hamming_pairs  # noqa: E402

IMAGENET = 1_281_167


def planted_hashes(n: int, fraction: float, max_distance: int, seed: int) -> np.ndarray:
    """Random 63-bit hashes; ``fraction`` of them near copies (0..d bits) of others."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 1 << 63, n, dtype=np.uint64)
    k = int(n * fraction)
    copies = rng.choice(n, k, replace=False)
    originals = rng.integers(0, n, k)
    for dst, src in zip(copies, originals):
        flips = rng.choice(63, rng.integers(0, max_distance + 1), replace=False)
        hashes[dst] = hashes[src] ^ np.uint64(sum(1 << int(b) for b in flips))
    return hashes


def timed(fn, *args, **kwargs):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=200_000, help="hashes [200,000]")
    p.add_argument("--subset", type=int, default=40_000, help="hashes for the exhaustive search")
    p.add_argument("--planted", type=float, default=0.01, help="fraction of near copies [0.01]")
    p.add_argument("--max-distance", type=int, default=10, help="Hamming radius [10]")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    d = args.max_distance
    hashes = planted_hashes(args.n, args.planted, d, args.seed)

    sizes = sorted({args.n // 4, args.n // 2, args.n})
    growth = []
    for n in sizes:
        index, build_s, _ = timed(MultiIndex, hashes[:n], d)
        (i, j, _), wall, cpu = timed(index.search, 0, n)
        growth.append(
            {
                "n": n,
                "chunks": len(index.plan),
                "wall s": wall + build_s,
                "cpu s": cpu,
                "pairs": len(i),
            }
        )
    index_s = growth[-1]["wall s"]
    # log-log slope between n/4 and n, then projected to ImageNet-1k's training set
    slope = math.log(growth[-1]["wall s"] / growth[0]["wall s"]) / math.log(sizes[-1] / sizes[0])
    projected = index_s * (IMAGENET / args.n) ** slope

    sub = hashes[: args.subset]
    (ref, ex_wall, ex_cpu) = timed(hamming_pairs, sub, d, "exhaustive")
    fast = hamming_pairs(sub, d, "index")
    same = all(np.array_equal(a, b) for a, b in zip(ref, fast))
    exhaustive_s = ex_wall * (args.n / args.subset) ** 2
    rows = [
        {
            "search": f"multi-index, n={g['n']:,} ({g['chunks']} chunks)",
            "seconds": g["wall s"],
            "pairs": g["pairs"],
        }
        for g in growth
    ] + [
        {
            "search": f"exhaustive, n={args.subset:,} (measured)",
            "seconds": ex_wall,
            "pairs": len(ref[0]),
        },
        {
            "search": f"exhaustive, n={args.n:,} (× (n/subset)²)",
            "seconds": exhaustive_s,
            "pairs": "",
        },
        {
            "search": f"multi-index, n={IMAGENET:,} (projected, n^{slope:.2f})",
            "seconds": projected,
            "pairs": "",
        },
        {
            "search": f"exhaustive, n={IMAGENET:,} (projected, n²)",
            "seconds": ex_wall * (IMAGENET / args.subset) ** 2,
            "pairs": "",
        },
    ]
    print(table(rows, ["search", "seconds", "pairs"]))
    ratio = exhaustive_s / index_s
    print(
        f"\n{args.n:,} hashes, {args.planted:.0%} planted near copies, d = {d}: "
        f"multi-index {index_s:.1f} s, exhaustive {exhaustive_s:.0f} s (extrapolated): "
        f"{ratio:.1f}x faster; same pairs on {args.subset:,}: {same}"
    )
    if not same:
        raise SystemExit("the two searches disagree")
    path = append_result(
        "near_duplicates",
        {
            "command": "python " + " ".join(sys.argv),
            "args": vars(args),
            "index": growth,
            "growth_exponent": round(slope, 3),
            "exhaustive_subset": {
                "n": args.subset,
                "wall s": ex_wall,
                "cpu s": ex_cpu,
                "pairs": len(ref[0]),
            },
            "exhaustive_extrapolated_s": exhaustive_s,
            "ratio": ratio,
            "same_pairs_on_subset": same,
            "projected_imagenet_s": {
                "index": projected,
                "exhaustive": ex_wall * (IMAGENET / args.subset) ** 2,
            },
        },
    )
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
