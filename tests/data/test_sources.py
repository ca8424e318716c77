import csv
import gzip
import io
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from cnnlab.data import load_data, open_source
from cnnlab.data.builtin import read_idx
from cnnlab.errors import DataError


def test_folder_source_classes_and_labels(image_folder):
    src = open_source(f"folder:{image_folder}")
    assert src.class_names == ["circle", "square"]
    assert len(src) == 24 and src.is_files
    assert np.bincount(src.labels).tolist() == [12, 12]


def test_folder_with_split_subfolders(tmp_path, make_folder):
    make_folder("ds/train", per_class=6)
    make_folder("ds/test", per_class=3, seed=1)
    src = open_source(f"folder:{tmp_path / 'ds'}")
    assert sorted(set(src.parts)) == ["test", "train"]
    data = load_data(f"folder:{tmp_path / 'ds'}", val_split=0.2)
    counts = data.split.counts()
    assert counts["test"] == 6 and counts["val"] == 2 and counts["train"] == 10


def test_test_folder_with_unknown_class_is_named(tmp_path, make_folder):
    make_folder("ds/train", classes=("a", "b"), per_class=3)
    make_folder("ds/test", classes=("a", "c"), per_class=2)
    with pytest.raises(DataError, match=r"ds/test/c has no counterpart"):
        open_source(f"folder:{tmp_path / 'ds'}")


def test_csv_source_relative_paths_and_split(tmp_path, image_folder):
    rows = [
        ("images/circle/circle_000.png", "circle", "train"),
        ("images/square/square_000.png", "square", "test"),
        ("images/square/square_001.png", "square", ""),
    ]
    path = tmp_path / "labels.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows(rows)
    src = open_source(f"csv:{path}")
    assert src.class_names == ["circle", "square"]
    assert list(src.parts) == ["train", "test", ""]
    assert src.paths[0] == str(tmp_path / rows[0][0])


def test_csv_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\na.png,x\n")
    with pytest.raises(DataError, match=r"bad.csv has columns \['file', 'class'\].*path,label"):
        open_source(f"csv:{bad}")
    missing = tmp_path / "missing.csv"
    missing.write_text("path,label\nnope.png,x\n")
    with pytest.raises(
        DataError, match=r"lists 1 file\(s\) that do not exist: .*nope.png \(line 2\)"
    ):
        open_source(f"csv:{missing}")


def test_unknown_spec_and_builtin_are_explained():
    with pytest.raises(DataError, match="Cannot tell what kind of data source 'nowhere'"):
        open_source("nowhere")
    with pytest.raises(
        DataError, match="Unknown built-in dataset 'cifar11'.*Did you mean: cifar10"
    ):
        open_source("builtin:cifar11")


def test_digits_is_embedded():
    src = open_source("builtin:digits")
    assert src.images.shape == (1797, 8, 8, 1) and src.images.dtype == np.uint8
    assert src.images.max() == 255


def test_offline_builtin_names_file_folder_and_url(tmp_path, monkeypatch):
    import keras

    def no_network():
        raise Exception("URL fetch failure: [Errno -2] Name or service not known")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", no_network)
    with pytest.raises(DataError) as e:
        open_source("builtin:cifar10")
    msg = str(e.value)
    assert "builtin:cifar10 is not on this machine and could not be downloaded" in msg
    assert f"cifar-10-python.tar.gz in {tmp_path / 'keras' / 'datasets'}" in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg
    assert "--data-dir" in msg


def _pickled(obj) -> bytes:
    return pickle.dumps(obj)


def test_cifar10_archive_from_data_dir(tmp_path):
    rng = np.random.default_rng(0)
    tar_path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:

        def add(name, obj):
            data = _pickled(obj)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            add(
                name,
                {b"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]},
            )
        add("batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    src = open_source("builtin:cifar10", data_dir=str(tmp_path))
    assert src.images.shape == (24, 32, 32, 3)
    assert (src.parts == "test").sum() == 4
    assert src.class_names[3] == "c3"


def _write_idx(path, arr):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_files_from_data_dir(tmp_path):
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (6, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(6) % 3)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (3, 28, 28)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(3))
    src = open_source("builtin:fashion_mnist", data_dir=str(tmp_path))
    assert src.images.shape == (9, 28, 28, 1)
    assert src.class_names[0] == "T-shirt/top"
    assert read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz").tolist() == [0, 1, 2]


def test_corrupt_idx_is_named(tmp_path):
    p = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(p, "wb") as f:
        f.write(b"garbage!")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz is not a valid IDX file"):
        read_idx(p)


def test_rgba_grayscale_sources_pick_channels(make_folder):
    gray = make_folder("gray", mode="L")
    data = load_data(f"folder:{gray}")
    assert data.channels == 1 and data.image_size == (16, 16)
    Image.new("RGB", (16, 16)).save(gray / "circle" / "extra.png")
    assert load_data(f"folder:{gray}").channels == 3


def test_find_test_folder_only_beside_a_train_folder_with_class_subfolders(tmp_path):
    from cnnlab.data.sources import find_test_folder

    (tmp_path / "a" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "a" / "test" / "cat").mkdir(parents=True)
    (tmp_path / "b" / "training" / "cat").mkdir(parents=True)
    (tmp_path / "b" / "Testing" / "cat").mkdir(parents=True)
    (tmp_path / "c" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "c" / "test").mkdir(parents=True)  # no class folders: not a test set
    (tmp_path / "d" / "images" / "cat").mkdir(parents=True)
    (tmp_path / "d" / "test" / "cat").mkdir(parents=True)  # data is not a train/ folder
    assert find_test_folder(f"folder:{tmp_path}/a/train") == f"folder:{tmp_path}/a/test"
    assert find_test_folder(f"folder:{tmp_path}/a/train/") == f"folder:{tmp_path}/a/test"
    assert find_test_folder(f"folder:{tmp_path}/b/training") == f"folder:{tmp_path}/b/Testing"
    assert find_test_folder(f"folder:{tmp_path}/c/train") is None
    assert find_test_folder(f"folder:{tmp_path}/d/images") is None
    assert find_test_folder("builtin:digits") is None
