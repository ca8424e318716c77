"""Tiny trained models of every family (shared by the export, runtime and serve tests)."""

from __future__ import annotations

import numpy as np

CLASSES = ("circle", "square", "star")
SIZE = 16
# The smallest member of each scratch family that still has the family's parts.
SCRATCH = {
    "simple_cnn": {"filters": [8, 16], "dense": [16]},
    "resnet9": {"filters": 8},
    "vgg8_bn": {"width": 0.125},
    "airbench": {
        "widths": [8, 8, 8],
        "tta": 2,
        "train_resize": True,
    },  # as the fast recipe makes it
}
EPOCHS = {"resnet9": 3, "airbench": 12}  # others: 6 (each epoch is 6 steps)
SLOW_SCRATCH = {"resnet20": {"filters": 4}}  # 20 layers: 36 s to fit on 2 cores
PRETRAINED = ("mobilenet_v2", "efficientnet_b0", "efficientnet_lite0", "resnet50")


def learnable_arrays(n_per_class: int, size: int = SIZE, seed: int = 0):
    """Images (uint8 NHWC) and labels a tiny CNN separates: colour and a bright corner."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c in range(len(CLASSES)):
        img = rng.integers(0, 60, size=(n_per_class, size, size, 3))
        img[..., c % 3] += 120
        q = size // 2
        r0, c0 = [(0, 0), (0, q), (q, 0), (q, q)][c % 4]
        img[:, r0 : r0 + q, c0 : c0 + q] = 230
        xs.append(img.astype(np.uint8))
        ys.append(np.full(n_per_class, c))
    return np.concatenate(xs), np.concatenate(ys)


def train_tiny(name: str, size: int = SIZE, epochs: int | None = None, **options):
    """A model of ``name`` fitted on the learnable arrays until it is confident."""
    import keras

    from cnnlab.models import create_model

    epochs = epochs or EPOCHS.get(name, 6)
    keras.utils.set_random_seed(0)
    x, y = learnable_arrays(30, size)
    model = create_model(name, len(CLASSES), size, 3, **options)
    if name == "airbench":
        from cnnlab.models.scratch.airbench import init_whitening

        init_whitening(model, x.astype(np.float32))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    # Fit until it separates held-out images (up to 5 rounds): a toy fit on 2 shared cores
    # is not deterministic, and the export tests need a confident model, not a lucky one.
    held_x, held_y = learnable_arrays(8, size, seed=11)
    for _ in range(5):
        model.fit(x.astype(np.float32), y, epochs=epochs, batch_size=16, verbose=0, shuffle=True)
        pred = np.asarray(model(held_x.astype(np.float32), training=False)).argmax(1)
        if np.mean(pred == held_y) >= 0.95:
            break
    return model


_RUNS: dict = {}


def exported_run(root):
    """A finished run (file source, 3 classes x 20 PNGs of 16 px) exported to every format;
    made once per test process, whichever directory asks first."""
    if "run" not in _RUNS:
        import cnnlab
        from tests.conftest import make_image_folder

        data = make_image_folder(root / "images", classes=CLASSES, per_class=20, size=SIZE)
        result = cnnlab.train(
            data=f"folder:{data}",
            runs_dir=str(root / "runs"),
            name="tiny",
            model="simple_cnn",
            model_kwargs={"filters": [8, 16], "dense": [16]},
            epochs=4,
            batch_size=16,
            verbose=0,
            seed=1,
        )
        cnnlab.export_model(result.run_dir, "all")
        _RUNS["run"] = result.run_dir
    return _RUNS["run"]
