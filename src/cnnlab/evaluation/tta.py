"""Test-time augmentation: average the predictions over a few altered copies of each image.

The views are the image itself, its mirror image (only when mirroring keeps
the label: the run trained with horizontal flips), and small shifts, by about
1/16 of the image size up, down, left and right, with edge pixels repeated
into the gap (so no black border the model never saw).
"""

from __future__ import annotations

import numpy as np

from cnnlab.models.inference import predict_batch


def tta_views(image_size: tuple[int, int], flip: bool = True) -> list[str]:
    """Names of the views :func:`tta_predict` uses, e.g. ``["identity", "flip", "shift(2,0)", ...]``.

    Example:
        >>> tta_views((32, 32))
        ['identity', 'flip', 'shift(2,0)', 'shift(-2,0)', 'shift(0,2)', 'shift(0,-2)']
    """
    d = max(1, round(min(image_size) / 16))
    views = ["identity"] + (["flip"] if flip else [])
    return views + [f"shift({dy},{dx})" for dy, dx in ((d, 0), (-d, 0), (0, d), (0, -d))]


def _shift(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Move the content of (N, H, W, C) images by (dy, dx) pixels, repeating the edge."""
    h, w = x.shape[1:3]
    pad = ((0, 0), (max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0)), (0, 0))
    padded = np.pad(x, pad, mode="edge")
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[:, top : top + h, left : left + w]


def apply_view(x: np.ndarray, view: str) -> np.ndarray:
    """One view of a batch of (N, H, W, C) images."""
    if view == "identity":
        return x
    if view == "flip":
        return x[:, :, ::-1]
    dy, dx = (int(v) for v in view[len("shift(") : -1].split(","))
    return _shift(x, dy, dx)


def tta_predict(
    model,
    images: np.ndarray,
    views: list[str] | None = None,
    batch_size: int = 128,
    return_views: bool = False,
    identity_probs: np.ndarray | None = None,
):
    """Mean softmax probabilities over ``views`` (default :func:`tta_views`) of each image.

    With ``return_views``, also a dict of each view's own probabilities.
    ``identity_probs`` (the plain predictions, when already known) saves one pass.

    Example:
        >>> probs = tta_predict(model, test_images)      # (N, num_classes)
        >>> (probs.argmax(1) == labels).mean()
    """
    images = np.asarray(images, np.float32)
    views = views or tta_views(images.shape[1:3])
    total = None
    each = {}
    for view in views:
        if view == "identity" and identity_probs is not None:
            probs = np.asarray(identity_probs, np.float64)
            total = probs if total is None else total + probs
            if return_views:
                each[view] = probs
            continue
        parts = [
            np.asarray(
                predict_batch(model, apply_view(images[i : i + batch_size], view)), np.float64
            )
            for i in range(0, len(images), batch_size)
        ]
        probs = np.concatenate(parts) if parts else np.zeros((0, int(model.output_shape[-1])))
        total = probs if total is None else total + probs
        if return_views:
            each[view] = probs
    mean = total / len(views)
    return (mean, each) if return_views else mean
