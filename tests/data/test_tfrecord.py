"""cnnlab data pack and tfrecord:DIR: every image's bytes and label survive, the stored split is
the one used, workers get disjoint shards, a bad --to is refused, a packed set trains and scores."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tests.conftest import make_image_folder

import cnnlab
from cnnlab.cli.main import main
from cnnlab.data import load_data, open_source
from cnnlab.data.records import read_index
from cnnlab.data.tfrecord import pack
from cnnlab.errors import DataError


def _records(folder):
    """Every record of a packed folder as a dict, with the shard it came from."""
    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
        "path": tf.io.FixedLenFeature([], tf.string),
        "split": tf.io.FixedLenFeature([], tf.string),
        "index": tf.io.FixedLenFeature([], tf.int64),
    }
    out = []
    for shard in sorted(folder.glob("*.tfrecord")):
        for raw in tf.data.TFRecordDataset(str(shard)):
            ex = tf.io.parse_single_example(raw, spec)
            out.append({k: v.numpy() for k, v in ex.items()} | {"shard": shard.name})
    return out


@pytest.fixture
def mixed_folder(tmp_path):
    """3 classes x 10 PNGs (16x16) plus two JPEGs of another size, one grayscale."""
    root = make_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=10, size=16)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / "a" / "x.jpg")
    Image.fromarray(rng.integers(0, 255, (18, 18), dtype=np.uint8)).save(root / "b" / "g.jpeg")
    return root


def test_round_trip_keeps_every_images_bytes_and_label(mixed_folder, tmp_path):
    out = tmp_path / "packed"
    index = pack(f"folder:{mixed_folder}", out, shards=3, quiet=True)
    records = _records(out)
    source = open_source(f"folder:{mixed_folder}")
    assert len(records) == len(source) == 32
    by_path = {r["path"].decode(): r for r in records}
    assert len(by_path) == 32  # each image exactly once
    for path, label in zip(source.paths, source.labels):
        rel = str(path)[len(str(mixed_folder)) + 1 :]
        r = by_path[rel]
        assert index["class_names"][r["label"]] == source.class_names[label]
        data = open(path, "rb").read()
        if path.endswith((".jpg", ".jpeg")):
            assert r["image"] == data  # JPEGs copied byte for byte
        else:  # PNGs stored losslessly: same pixels
            stored = tf.io.decode_image(r["image"]).numpy()
            assert np.array_equal(stored, np.asarray(Image.open(path)))
    assert index["counts"] == {"train": 26, "val": 3, "test": 3}
    assert index["source_checksum"].startswith("sha256:")
    # Packing the same data again gives the same checksum; a changed image changes it.
    again = pack(f"folder:{mixed_folder}", tmp_path / "again", quiet=True)
    assert again["source_checksum"] == index["source_checksum"]
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(mixed_folder / "c" / "c_000.png")
    changed = pack(f"folder:{mixed_folder}", tmp_path / "changed", quiet=True)
    assert changed["source_checksum"] != index["source_checksum"]


def test_resized_pack_re_encodes_at_the_new_size(mixed_folder, tmp_path):
    index = pack(f"folder:{mixed_folder}", tmp_path / "p", image_size=8, quiet=True)
    assert index["image_size"] == [8, 8] and index["resized"]
    shapes = {tf.io.decode_image(r["image"]).shape[:2] for r in _records(tmp_path / "p")}
    assert shapes == {(8, 8)}


def test_the_stored_split_is_the_one_every_run_uses(mixed_folder, tmp_path, caplog, capsys):
    from cnnlab.data.splits import make_split

    out = tmp_path / "packed"
    pack(f"folder:{mixed_folder}", out, shards=2, val_split=0.2, test_split=0.2, seed=3, quiet=True)
    caplog.set_level(logging.INFO, logger="cnnlab")
    records = _records(out)
    for r in records:  # each split in its own shards
        assert r["shard"].startswith(r["split"].decode() + "-")
    # The run's split ignores other fractions: it is the packed one.
    data = load_data(f"tfrecord:{out}", val_split=0.5, test_split=0.0, batch_size=4)
    idx = read_index(out)
    assert data.split.counts() == {"train": 20, "val": 6, "test": 6, "skipped": 0}
    assert list(data.split.assignment) == list(idx.parts)
    stored = {r["path"].decode(): r["split"].decode() for r in records}
    assert {n: s for n, s in zip(idx.names, idx.parts)} == stored
    # Pipelines give each split's images: labels in split.csv's order when not training.
    test_labels = np.concatenate([np.argmax(y, 1) for _, y in data.test])
    assert list(test_labels) == list(data.examples("test")["labels"])
    train_labels = np.concatenate([np.argmax(y, 1) for _, y in data.train])
    assert sorted(train_labels) == sorted(data.examples("train")["labels"])
    assert data.train.options().autotune.enabled is False  # as every cnnlab pipeline
    # A subset in any row order is read back in that order.
    rows = np.array([4, 0, 2])
    got = np.concatenate([np.argmax(y, 1) for _, y in data.subset("train", rows)])
    assert list(got) == list(data.examples("train")["labels"][rows])
    assert make_split(data.source, val_split=0.1, test_split=0.1, seed=0).counts()["val"] == 6
    # Said once per run: the fast recipe drops the validation share the split was drawn
    # with, which redraws a folder's split but leaves the packed one as it is.
    capsys.readouterr()
    run = cnnlab.train(
        data=f"tfrecord:{out}",
        recipe="fast",
        epochs=1,
        model_kwargs={"width": 0.125},
        runs_dir=str(tmp_path / "runs"),
        verbose=1,
    )
    sizes = json.loads((run.run_dir / "data.json").read_text())["split_sizes"]
    assert run.config.val_split == 0.0 and sizes == {"train": 20, "val": 6, "test": 6, "skipped": 0}
    said = capsys.readouterr().err
    assert said.count("Using the split stored when the data were packed: 20 train") == 1


def test_each_worker_reads_its_own_disjoint_part(mixed_folder, tmp_path):
    out = tmp_path / "packed"
    pack(f"folder:{mixed_folder}", out, shards=4, quiet=True)
    index = read_index(out)
    train = index.split("train")

    def indices(reader):
        return [int(i) for _, _, i in reader.dataset(training=True, seed=0)]

    parts = [train.shard(2, w) for w in range(2)]
    assert all(p.by_file and len(p.files) == 2 for p in parts)  # whole shards
    assert set(parts[0].files).isdisjoint(parts[1].files)
    got = [indices(p) for p in parts]
    assert set(got[0]).isdisjoint(got[1])
    assert sorted(got[0] + got[1]) == list(range(train.count))
    assert [p.count for p in parts] == [len(g) for g in got]
    # Fewer shards than workers: every third record, still disjoint and complete.
    val = index.split("val")
    thirds = [val.shard(3, w) for w in range(3)]
    got = [indices(p) for p in thirds]
    assert sorted(sum(got, [])) == list(range(val.count))
    assert all(not set(a) & set(b) for i, a in enumerate(got) for b in got[i + 1 :])
    with pytest.raises(DataError, match="Worker 2 of 2 is not a valid shard"):
        train.shard(2, 2)


def test_a_bad_destination_is_refused_with_a_clear_error(mixed_folder, tmp_path):
    spec = f"folder:{mixed_folder}"
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(DataError, match=r"--to .*file\.txt is a file"):
        pack(spec, a_file, quiet=True)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="is not empty") as e:
        pack(spec, busy, quiet=True)
    assert "--overwrite" in str(e.value)
    with pytest.raises(DataError, match="not a packed dataset"):
        pack(spec, busy, overwrite=True, quiet=True)
    assert (busy / "notes.txt").read_text() == "mine"
    with pytest.raises(DataError, match="inside the data being packed"):
        pack(spec, mixed_folder / "packed", quiet=True)
    with pytest.raises(DataError, match="is not a folder written by `cnnlab data pack`"):
        load_data(f"tfrecord:{busy}")


def test_a_failed_pack_leaves_nothing_that_looks_finished(mixed_folder, tmp_path, monkeypatch):
    import cnnlab.data.tfrecord as tfr

    out = tmp_path / "packed"
    pack(f"folder:{mixed_folder}", out, quiet=True)
    before = json.loads((out / "index.json").read_text())
    calls = []

    def failing(*args):
        calls.append(1)
        if len(calls) > 5:
            raise OSError("disk full")
        return real(*args)

    real = tfr._example
    monkeypatch.setattr(tfr, "_example", failing)
    with pytest.raises(OSError, match="disk full"):
        pack(f"folder:{mixed_folder}", out, overwrite=True, quiet=True)
    with pytest.raises(OSError, match="disk full"):
        pack(f"folder:{mixed_folder}", tmp_path / "new", quiet=True)
    assert not (tmp_path / "new").exists()
    assert json.loads((out / "index.json").read_text()) == before  # the old one kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "packed"]  # no temp folders


def test_pack_train_and_evaluate_through_the_cli(image_folder, tmp_path, capsys):
    out = tmp_path / "packed"
    assert main(["data", "pack", f"folder:{image_folder}", "--to", str(out), "--quiet"]) == 0
    said = capsys.readouterr().out
    assert f"train on it: cnnlab train --data tfrecord:{out}" in said
    assert main(["data", "pack", f"folder:{image_folder}", "--to", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err
    runs = tmp_path / "runs"
    code = main(
        [
            "train",
            "--data",
            f"tfrecord:{out}",
            "--epochs",
            "1",
            "--runs-dir",
            str(runs),
            "--model-kwargs",
            "filters=[8, 8] dense=[8]",
            "-b",
            "8",
            "--name",
            "tfr",
            "-q",
        ]
    )
    said = capsys.readouterr().out
    assert code == 0, said
    assert "test accuracy" in said
    saved = json.loads((runs / "tfr" / "data.json").read_text())
    assert saved["data"] == f"tfrecord:{out}"
    assert saved["split_sizes"] == {"train": 20, "val": 2, "test": 2, "skipped": 0}
    assert main(["evaluate", str(runs / "tfr")]) == 0
    said = capsys.readouterr().out
    assert "macro avg" in said and "confusion_matrix.png" in said
    assert (runs / "tfr" / "report.html").is_file()


def test_report_thumbnails_of_packed_images_are_read_from_the_shards(mixed_folder, tmp_path):
    import io

    from cnnlab.evaluation.report.figures import thumbnails

    out = tmp_path / "packed"
    pack(f"folder:{mixed_folder}", out, shards=2, val_split=0.2, test_split=0.2, seed=3, quiet=True)
    data = load_data(f"tfrecord:{out}", batch_size=4)
    pngs = thumbnails(data, "test", np.array([4, 1]))
    (x, _), *_ = list(data.subset("test", np.array([4, 1]), batch_size=2))
    for png, pixels in zip(pngs, np.asarray(x).astype(np.uint8)):
        image = np.asarray(Image.open(io.BytesIO(png)))
        assert image.shape[:2] == pixels.shape[:2]
        assert np.array_equal(image.reshape(pixels.shape), pixels)
    assert len(pngs) == 2


@pytest.mark.parametrize("kind", ["folder", "tfrecord"])
def test_streaming_reshuffles_each_epoch_and_keeps_each_images_index(kind, tmp_path):
    """Without the cache (data larger than memory) the order changes every epoch, every image
    comes once per epoch, and the index an alternating flip keys on stays the image's own."""
    from cnnlab.data.pipeline import make_dataset

    root = tmp_path / "imgs"
    for k in range(40):
        (root / f"c{k % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((4, 4, 3), 5 * k, np.uint8)).save(
            root / f"c{k % 2}" / f"{k:02d}.png"
        )
    source = open_source(f"folder:{root}")
    records = None
    if kind == "tfrecord":
        pack(f"folder:{root}", tmp_path / "p", shards=4, val_split=0, test_split=0, quiet=True)
        records = read_index(tmp_path / "p").split("train")

    class Tag:  # an "augmenter" that writes each image's index into its pixels
        needs_index = True

        def __call__(self, x, idx, epoch):
            return x + 1000.0 * tf.cast(idx, tf.float32)[:, None, None, None]

    ds = make_dataset(
        source.labels,
        num_classes=2,
        image_size=(4, 4),
        channels=3,
        paths=None if records else source.paths,
        records=records,
        batch_size=8,
        training=True,
        augmenter=Tag(),
        cache="none",
        seed=1,
    )
    epochs = []
    for _ in range(2):
        values = np.concatenate([x.numpy()[:, 0, 0, 0] for x, _ in ds])
        epochs.append([(int(v % 1000), int(v // 1000)) for v in values])
    for order in epochs:
        assert sorted(p for p, _ in order) == [5 * k for k in range(40)]  # each image once
    assert [p for p, _ in epochs[0]] != [p for p, _ in epochs[1]]  # reshuffled
    assert dict(epochs[0]) == dict(epochs[1])  # same index for the same image


def test_pack_runs_the_dataset_check_once_and_keeps_its_report(tmp_path):
    import shutil

    root = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=6, size=16)
    shutil.copy(root / "a" / "a_000.png", root / "b" / "copy_of_a.png")  # same image, two labels
    index = pack(f"folder:{root}", tmp_path / "p", quiet=True)
    assert "1 duplicate pair(s) with different labels" in index["check"]
    report = json.loads((tmp_path / "p" / "inspect.json").read_text())
    assert report["num_images"] == 13 and (tmp_path / "p" / "inspect.html").is_file()
    assert pack(f"folder:{root}", tmp_path / "q", check=False, quiet=True)["check"] is None
    assert not (tmp_path / "q" / "inspect.json").exists()


def test_fine_tune_runs_on_packed_data(tmp_path):
    """finetune takes tfrecord: data too: both stages train on the packed training split and
    the packed test split is scored."""
    from cnnlab.models.pretrained.applications import BACKBONES, make_backbone
    from cnnlab.workflows import fine_tune

    root = make_image_folder(tmp_path / "imgs", classes=("r", "g", "b"), per_class=10, size=32)
    index = pack(f"folder:{root}", tmp_path / "p", test_split=0.2, check=False, quiet=True)
    weights = tmp_path / "mobilenet_backbone.weights.h5"
    make_backbone(BACKBONES["mobilenet"], (32, 32, 3)).save_weights(weights)
    result = fine_tune(
        data=f"tfrecord:{tmp_path / 'p'}",
        weights=str(weights),
        image_size=32,
        batch_size=8,
        epochs=1,
        freeze_epochs=1,
        unfreeze="1",
        verbose=0,
        runs_dir=str(tmp_path / "runs"),
    )
    assert result.metrics["test"]["num_examples"] == index["counts"]["test"] == 6


def test_data_inspect_on_packed_data_writes_its_page(tmp_path, capsys):
    import shutil

    root = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=6, size=16)
    shutil.copy(root / "a" / "a_000.png", root / "b" / "copy.png")  # same image, two labels
    pack(f"folder:{root}", tmp_path / "p", check=False, quiet=True)
    out = tmp_path / "out"
    assert (
        main(["data", "inspect", f"tfrecord:{tmp_path / 'p'}", "--output", str(out), "--quiet"])
        == 0
    )
    said = capsys.readouterr().out
    assert "a/a_000.png (a)  ==  b/copy.png (b)" in said
    assert "b/copy.png" in (out / "inspect.html").read_text()
