"""The dataset check: what is wrong with the images, before a model learns it.

``inspect_data("folder:photos")`` reads every image once (in threads) and reports:

* images per class and split, the imbalance ratio (largest / smallest class),
  classes with no image in a split;
* image sizes (most common, smallest, largest, tiny and huge ones, odd aspect
  ratios) and colour modes;
* files that cannot be decoded, and files whose extension disagrees with their
  real format (a PNG named ``.jpg``);
* images with an EXIF rotation: viewers turn them upright, TensorFlow's
  decoder does not, so the model sees them lying on their side;
* exact duplicates (same bytes: a content hash) and near duplicates (a
  perceptual hash, so resized or re-encoded copies are caught), within each
  split and across splits: a test image that is a copy of a training image is
  *leakage* and inflates the test accuracy; each such pair is named file by file.
  Copies that carry different labels are flagged too.

One module per job:

* ``files``: reading each image once (content hash, format, size, EXIF, thumbnail),
  cached per file between runs (:mod:`cnnlab.data.scan_cache`);
* ``hashing``: the perceptual hash and the near-duplicate confirmation;
* ``hamming``: all pairs of hashes within a Hamming distance (exhaustive, or
  multi-index hashing: sub-quadratic, the same pairs);
* ``duplicates``: exact groups, near pairs, leakage and label conflicts;
* ``aggregate``: the summary numbers (counts, imbalance, sizes, modes, odd files);
* ``report``: :class:`InspectReport`, the findings (inspect.json);
* ``render``: the terminal table, inspect.html and the CSVs;
* ``check``: :func:`inspect_data` and :func:`check_before_training`, the steps in order.
"""

from cnnlab.data.inspect.check import check_before_training, default_output_dir, inspect_data
from cnnlab.data.inspect.files import THUMB, FileCheck, _thumbnail
from cnnlab.data.inspect.hashing import (
    DEFAULT_HASH_DISTANCE,
    DEFAULT_PIXEL_DIFFERENCE,
    MAX_PAIRS,
    near_duplicate_pairs,
    phash,
)
from cnnlab.data.inspect.report import InspectReport

__all__ = [
    "DEFAULT_HASH_DISTANCE",
    "DEFAULT_PIXEL_DIFFERENCE",
    "MAX_PAIRS",
    "THUMB",
    "FileCheck",
    "InspectReport",
    "_thumbnail",
    "check_before_training",
    "default_output_dir",
    "inspect_data",
    "near_duplicate_pairs",
    "phash",
]
