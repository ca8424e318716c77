import numpy as np
import tensorflow as tf
from PIL import Image

from cnnlab.data import load_data
from cnnlab.data.augment import Augmenter, resolve_options
from cnnlab.data.pipeline import make_dataset


def test_pipeline_emits_raw_pixels_and_one_hot(image_folder):
    data = load_data(f"folder:{image_folder}", batch_size=4)
    x, y = next(iter(data.test))
    assert x.dtype == tf.float32 and x.shape[1:] == (16, 16, 3)
    assert 100 < float(tf.reduce_max(x)) <= 255.0
    assert y.shape[1] == 2 and np.allclose(y.numpy().sum(axis=1), 1)


def test_resize_modes_keep_or_ignore_aspect(tmp_path):
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :10] = 255  # a white stripe on the left quarter
    Image.fromarray(img).save(tmp_path / "wide.png")
    paths = np.array([str(tmp_path / "wide.png")])
    out = {}
    for mode in ("stretch", "crop", "pad"):
        ds = make_dataset(
            [0], num_classes=2, image_size=(10, 10), channels=3, paths=paths, resize=mode
        )
        out[mode] = next(iter(ds))[0][0].numpy()
    assert out["stretch"][:, :2].mean() > 200  # stripe still at the left edge
    assert out["crop"][:, :2].mean() < 50  # centre crop cut the stripe away
    assert out["pad"][:2].mean() == 0 and out["pad"][4:6, :2].mean() > 200  # letterboxed


def test_grayscale_arrays_to_rgb_and_resize():
    images = np.full((3, 8, 8, 1), 200, np.uint8)
    ds = make_dataset(
        np.array([0, 1, 0]), num_classes=2, image_size=(16, 16), channels=3, images=images
    )
    x, _ = next(iter(ds))
    assert x.shape == (3, 16, 16, 3) and np.allclose(x.numpy(), 200, atol=1)


def test_augmentation_only_on_training_split(image_folder):
    data = load_data(
        f"folder:{image_folder}", augment="standard", batch_size=64, val_split=0, test_split=0
    )
    plain = np.concatenate([x.numpy() for x, _ in data.dataset("train", training=False)])
    again = np.concatenate([x.numpy() for x, _ in data.dataset("train", training=False)])
    assert np.array_equal(plain, again)
    aug = np.concatenate([x.numpy() for x, _ in data.train])
    assert aug.shape == plain.shape
    assert not np.allclose(np.sort(aug.ravel()), np.sort(plain.ravel()))


def test_policies_and_explicit_overrides():
    assert resolve_options("auto", "builtin:digits").flip == "none"
    assert resolve_options("auto", "folder:x").flip == "horizontal"
    opts = resolve_options("light", "", rotation=0.2, flip="none")
    assert opts.rotation == 0.2 and opts.flip == "none"
    aug = Augmenter(resolve_options("strong"), (16, 16), 3, seed=0)
    x = tf.random.uniform((2, 16, 16, 3), 0, 255)
    y = aug(x)
    assert y.shape == x.shape and float(tf.reduce_max(y)) <= 255.0
    assert "rand_augment" in aug.describe()


def test_class_weights_balanced(make_folder):
    root = make_folder("imb", per_class=4)
    for f in list((root / "square").iterdir())[:2]:
        f.unlink()
    data = load_data(f"folder:{root}", class_weight="balanced", val_split=0, test_split=0)
    w = data.class_weights()
    assert np.allclose(w, [6 / (2 * 4), 6 / (2 * 2)])
    batch = next(iter(data.train))
    assert len(batch) == 3  # images, labels, per-example weights


def test_files_decode_in_batches_in_order_and_a_file_broken_after_the_scan_costs_its_batch(
    tmp_path, monkeypatch
):
    from cnnlab.data import pipeline

    monkeypatch.setattr(pipeline, "DECODE_BATCH", 2)
    paths = []
    for i in range(6):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((4, 4, 3), 10 * i, np.uint8)).save(p)
        paths.append(str(p))

    def first_batch():
        ds = make_dataset(
            np.arange(6) % 2,
            num_classes=2,
            image_size=(4, 4),
            channels=3,
            paths=np.array(paths),
            batch_size=6,
        )
        return next(iter(ds))[0].numpy()

    assert [int(v) for v in first_batch()[:, 0, 0, 0]] == [0, 10, 20, 30, 40, 50]
    (tmp_path / "3.png").write_bytes(b"not an image any more")
    x = first_batch()  # the epoch goes on without files 2 and 3
    assert [int(v) for v in x[:, 0, 0, 0]] == [0, 10, 40, 50]


def test_every_pipeline_runs_without_tf_data_autotuning(image_folder):
    # Autotuning's model thread made deleting an iterator wait up to 60 s
    # (a wake-up race in TensorFlow 2.21); Keras deletes one at every epoch
    # start and after every evaluation, so all of cnnlab's pipelines turn it off.
    from cnnlab.data.pipeline import apply_options
    from cnnlab.training.finetune import feature_dataset

    b = load_data(f"folder:{image_folder}", val_split=0.25, test_split=0.0, seed=0)
    arrays = make_dataset(
        np.zeros(4, np.int64),
        num_classes=2,
        images=np.zeros((4, 8, 8, 3), np.uint8),
        image_size=(8, 8),
        channels=3,
        batch_size=2,
        training=True,
        seed=0,
    )
    feats = feature_dataset(np.zeros((4, 5), np.float32), np.zeros((4, 2)), batch_size=2, seed=0)
    plain = tf.data.Dataset.range(4).prefetch(tf.data.AUTOTUNE)
    assert plain.options().autotune.enabled is not False  # TensorFlow's default: on
    for ds in (b.train, b.val, arrays, feats, apply_options(plain)):
        assert ds.options().autotune.enabled is False
    assert len(list(apply_options(plain))) == 4


def test_training_drops_a_tiny_last_batch_and_evaluation_keeps_every_image():
    from types import SimpleNamespace

    from cnnlab.config import TrainConfig
    from cnnlab.workflows.skeleton import steps_per_epoch

    labels = np.arange(18) % 2
    images = np.arange(18, dtype=np.uint8).reshape(18, 1, 1, 1) * np.ones((1, 4, 4, 3), np.uint8)
    common = dict(num_classes=2, image_size=(4, 4), channels=3, images=images, batch_size=4)
    train = make_dataset(labels, training=True, seed=1, **common)
    seen = []
    for _ in range(2):  # two epochs: 2 of 18 images left out, different ones each time
        batches = [x.numpy()[:, 0, 0, 0] for x, _ in train]
        assert [len(b) for b in batches] == [4, 4, 4, 4]
        seen.append(set(np.concatenate(batches).astype(int)))
    assert seen[0] != seen[1]
    test = make_dataset(labels, training=False, **common)
    assert [len(x) for x, _ in test] == [4, 4, 4, 4, 2]
    # The schedule's steps per epoch agree with the pipeline's batches.
    bundle = SimpleNamespace(examples=lambda split: {"labels": labels})
    assert steps_per_epoch(TrainConfig(batch_size=4), bundle) == 4
    assert steps_per_epoch(TrainConfig(batch_size=8), bundle) == 2  # a last batch of 2: dropped
    assert steps_per_epoch(TrainConfig(batch_size=10), bundle) == 2  # of 8: kept
    assert steps_per_epoch(TrainConfig(batch_size=64), bundle) == 1  # the only batch: kept
