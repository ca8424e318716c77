"""The dataset check's reading step for ``tfrecord:`` data: each record's image bytes are
examined as a file's would be (format, size, content hash, thumbnail), in ``split.csv``'s
order, so ``cnnlab data inspect tfrecord:DIR`` reports what it reports for a folder."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from cnnlab._progress import Progress
from cnnlab.data.splits import SPLITS


def record_checks(
    source,
    names: np.ndarray,
    labels: list[str],
    full_decode: bool,
    workers: int,
    *,
    quiet: bool = False,
):
    """One FileCheck and one thumbnail per packed image (``names``: each image's split name
    for the report, ``labels``: its class name), like ``inspect.files.file_checks``."""
    from cnnlab.data.imagefile import THUMB, _decode
    from cnnlab.data.inspect.files import FileCheck

    index = source.records
    thumbs = np.zeros((len(source), THUMB, THUMB), np.uint8)
    infos: list = [None] * len(source)

    def examine(data: bytes):
        info, thumb = _decode(data, full_decode)
        info.update(bytes=len(data), digest=hashlib.blake2b(data, digest_size=16).hexdigest())
        return info, thumb

    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        Progress(len(source), "Checking", unit="image", quiet=quiet) as progress,
    ):
        for split in SPLITS:
            positions = np.flatnonzero(index.parts == split)
            if not len(positions):
                continue
            for data, _, idx in index.split(split).dataset(batch=256).as_numpy_iterator():
                for j, (info, thumb) in zip(idx, pool.map(examine, data)):
                    infos[positions[j]] = info
                    if thumb is not None:
                        thumbs[positions[j]] = thumb
                progress.update(len(data))
    checks = [
        FileCheck(i, str(index.names[i]), names[i], labels[i], **infos[i])
        for i in range(len(source))
    ]
    return checks, thumbs
