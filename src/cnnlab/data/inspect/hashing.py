"""Perceptual hashes and the near-duplicate search over them.

The perceptual hash is pHash (Zauner 2010): the 63 lowest non-constant
frequencies of the 2-D DCT of a 32×32 grayscale thumbnail, each bit "above the
median or not". Resizing and re-encoding barely move these frequencies, so a
copy stays within a few bits; two unrelated images differ in about half. Pairs
found by the hash are then confirmed on the thumbnails themselves (contrast-
normalised mean absolute difference), which rejects the rare unrelated pairs
whose coarse structure happens to agree (e.g. two different planes in an empty sky).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

import numpy as np

from cnnlab._progress import Progress
from cnnlab.data.inspect.files import THUMB
from cnnlab.data.inspect.hamming import block_search

# Hamming distance (of 63 bits; always even) up to which two hashes are candidates.
# Copies, resized (x0.5 to x2) or re-encoded (JPEG quality 60) stay within 0-2 bits;
# unrelated photos average about 31.
DEFAULT_HASH_DISTANCE = 10
# Largest mean absolute difference between the contrast-normalised 32x32
# thumbnails of a confirmed near duplicate (in standard deviations of their
# pixels). Resized or re-encoded copies measure about 0.01-0.05. Checked by eye
# on CIFAR-10's candidate pairs: up to about 0.3 they are the same photo
# (re-cropped, recoloured, re-encoded); from about 0.32 unrelated pictures with
# the same layout (a ship on the horizon) appear. 0.25 keeps a safety margin.
DEFAULT_PIXEL_DIFFERENCE = 0.25
MAX_PAIRS = 200_000  # stop collecting beyond this (a folder of thousands of blank images)
CONFIRM_CHUNK = 8192  # candidate pairs whose thumbnails are compared at once (3 x 32 MB)


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix: ``D @ x @ D.T`` is the 2-D DCT of an n×n block."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


def phash(thumbs: np.ndarray) -> np.ndarray:
    """63-bit perceptual hashes (uint64) of (N, 32, 32) grayscale thumbnails.

    Example:
        >>> h = phash(np.stack([thumb_a, thumb_b]))
        >>> int(np.bitwise_count(h[0] ^ h[1]))   # Hamming distance
        3
    """
    d = _dct_matrix(THUMB)[:8]  # only the 8×8 lowest frequencies are used
    x = np.asarray(thumbs, np.float64)
    coef = (d @ x @ d.T).reshape(len(x), 64)[:, 1:]  # 20x faster than the full DCT via einsum
    bits = coef > np.median(coef, axis=1, keepdims=True)
    weights = (1 << np.arange(63, dtype=np.uint64)).astype(np.uint64)
    return (bits.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)


def _normalised(thumbs: np.ndarray) -> np.ndarray:
    """Thumbnails with zero mean and unit standard deviation, so brightness and contrast
    changes (re-encoding, a gamma tweak) do not count as differences."""
    x = thumbs.reshape(len(thumbs), -1).astype(np.float32)
    x -= x.mean(axis=1, keepdims=True)
    return x / np.maximum(x.std(axis=1, keepdims=True), 4.0)  # flat images stay flat


def near_duplicate_pairs(
    hashes: np.ndarray,
    thumbs: np.ndarray,
    max_distance: int = DEFAULT_HASH_DISTANCE,
    max_difference: float = DEFAULT_PIXEL_DIFFERENCE,
    max_pairs: int = MAX_PAIRS,
    workers: int = 2,
    method: str = "auto",
    quiet: bool = True,
) -> tuple[list[tuple[int, int, int, float]], bool]:
    """All pairs ``(i, j, hash distance, pixel difference)`` with ``i < j`` that are near duplicates.

    The hash pairs come from :mod:`~cnnlab.data.inspect.hamming` (``method``:
    ``"exhaustive"``, ``"index"`` for multi-index hashing, or ``"auto"``: the
    cheaper by estimate; both find the same pairs), block by block of queries
    in parallel threads; each block's pairs are confirmed on the thumbnails.
    Returns the pairs, sorted by ``(i, j)``, and whether the search stopped at
    ``max_pairs``. Unless ``quiet``, shows its progress (see :mod:`cnnlab._progress`).
    """
    n = len(hashes)
    norm = _normalised(thumbs)
    means = thumbs.reshape(n, -1).mean(axis=1)
    search, block, _ = block_search(hashes, max_distance, method)

    def confirm(start: int) -> list[tuple[int, int, int, float]]:
        ii, jj, d = search(start, min(n, start + block))
        out: list[tuple[int, int, int, float]] = []
        # The candidates' thumbnails are compared CONFIRM_CHUNK pairs at a time: a folder
        # of look-alike images (one layout, noise) gives hundreds of candidates per image,
        # and all of a block's at once took 17 GB for 7,000 of them.
        for k in range(0, len(ii), CONFIRM_CHUNK):
            i, j, dk = (
                ii[k : k + CONFIRM_CHUNK],
                jj[k : k + CONFIRM_CHUNK],
                d[k : k + CONFIRM_CHUNK],
            )
            diff = np.abs(norm[i] - norm[j]).mean(axis=1)
            # Same structure but a different overall brightness is a different picture
            # (a night and a day shot); a re-encoded copy keeps its mean within a few levels.
            ok = (diff <= max_difference) & (np.abs(means[i] - means[j]) <= 40)
            out += zip(i[ok].tolist(), j[ok].tolist(), dk[ok].tolist(), diff[ok].round(4).tolist())
            if len(out) > max_pairs:
                break
        return out

    pairs: list[tuple[int, int, int, float]] = []
    truncated = False
    starts = iter(range(0, n, block))
    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        Progress(n, "Near duplicates", unit="image", quiet=quiet) as progress,
    ):
        # A few blocks in flight, in order (not every block at once: their pairs would
        # all be held before the first is looked at).
        pending = deque((s, pool.submit(confirm, s)) for s in islice(starts, max(1, workers)))
        while pending:
            start, future = pending.popleft()
            progress.update(min(n, start + block) - start)
            pairs += future.result()
            if len(pairs) > max_pairs:
                truncated = True
                break
            nxt = next(starts, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(confirm, nxt)))
    return pairs[:max_pairs], truncated
