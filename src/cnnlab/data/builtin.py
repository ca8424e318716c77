"""Built-in datasets: digits (embedded), MNIST, Fashion-MNIST, CIFAR-10/100.

Lookup order for the downloadable ones, so that offline machines work:
1. ``data_dir`` (``--data-dir``), holding the standard archives;
2. Debian's copy (Fashion-MNIST: ``/usr/share/datasets/fashion-mnist``);
3. Keras' cache, ``$KERAS_HOME/datasets`` (default ``~/.keras/datasets``);
4. ``keras.datasets.<name>.load_data()``, which downloads.
If the download fails, the error names the file, the folder to put it in and
the URL to fetch it from.
"""

from __future__ import annotations

import gzip
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np

from cnnlab.errors import DataError, close_matches

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DIGIT_CLASSES = [str(i) for i in range(10)]
MNIST_CLASSES = DIGIT_CLASSES

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}

# What a user must fetch by hand when offline: (file, URL it comes from).
DOWNLOADS = {
    "mnist": ("mnist.npz", "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"),
    "fashion_mnist": (
        ", ".join(IDX_FILES.values()),
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/ (the four IDX .gz files)",
    ),
    "cifar10": (
        "cifar-10-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    "cifar100": (
        "cifar-100-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    ),
}

BUILTIN_NAMES = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100")


def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"


def load_builtin(name: str, data_dir: str | None = None):
    """Return (images uint8 NHWC, labels, parts, class_names) for a built-in dataset."""
    key = name.lower().replace("-", "_")
    key = {
        "fashion": "fashion_mnist",
        "fmnist": "fashion_mnist",
        "cifar_10": "cifar10",
        "cifar_100": "cifar100",
    }.get(key, key)
    if key not in BUILTIN_NAMES:
        raise DataError(
            f"Unknown built-in dataset '{name}'.{close_matches(key, BUILTIN_NAMES)}",
            expected=f"one of {', '.join('builtin:' + n for n in BUILTIN_NAMES)}",
            fix="Or use folder:PATH (one subfolder per class) or csv:FILE (path,label columns)",
        )
    if key == "digits":
        return _digits()
    folders = [Path(data_dir)] if data_dir else []
    if data_dir and not Path(data_dir).is_dir():
        raise DataError(
            f"--data-dir {data_dir} is not a folder",
            fix=f"Point --data-dir at the folder that holds {DOWNLOADS[key][0]}",
        )
    if key == "fashion_mnist":
        folders.append(DEBIAN_FASHION_MNIST)
    cache = keras_cache_dir()
    folders += [cache, cache / key.replace("_", "-"), cache / key]
    for folder in folders:
        found = _read_local(key, folder)
        if found is not None:
            (x_train, y_train), (x_test, y_test), names = found
            return _assemble(x_train, y_train, x_test, y_test, names)
    (x_train, y_train), (x_test, y_test), names = _download(key, folders[0] if data_dir else cache)
    return _assemble(x_train, y_train, x_test, y_test, names)


def _assemble(x_train, y_train, x_test, y_test, names):
    images = np.concatenate([x_train, x_test]).astype(np.uint8)
    if images.ndim == 3:
        images = images[..., None]
    labels = np.concatenate([np.ravel(y_train), np.ravel(y_test)]).astype(np.int64)
    parts = np.array(["train"] * len(x_train) + ["test"] * len(x_test))
    return images, labels, parts, names


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    # 8x8 images with values 0..16: spread them over 0..255 like any other image.
    images = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[..., None]
    parts = np.array([""] * len(images))
    return images, d.target.astype(np.int64), parts, DIGIT_CLASSES


# ----------------------------------------------------------------- local files
def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype_code, ndim = data[0] * 256 + data[1], data[2], data[3]
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("bad magic number")
        dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
        arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        return arr.reshape(dims)
    except (OSError, ValueError, EOFError, IndexError) as e:
        raise DataError(
            f"{path} is not a valid IDX file ({e})",
            expected="the original MNIST/Fashion-MNIST .gz files",
            fix="Download the file again",
        ) from None


def _find(folder: Path, names: list[str]) -> list[Path] | None:
    paths = []
    for n in names:
        for cand in (folder / n, folder / n.removesuffix(".gz")):
            if cand.is_file():
                paths.append(cand)
                break
        else:
            return None
    return paths


def _read_local(key: str, folder: Path):
    if not folder.is_dir():
        return None
    if key in ("mnist", "fashion_mnist"):
        names = MNIST_CLASSES if key == "mnist" else FASHION_CLASSES
        if key == "mnist" and (folder / "mnist.npz").is_file():
            with np.load(folder / "mnist.npz") as f:
                return (f["x_train"], f["y_train"]), (f["x_test"], f["y_test"]), names
        paths = _find(folder, list(IDX_FILES.values()))
        if paths is None:
            return None
        xtr, ytr, xte, yte = (read_idx(p) for p in paths)
        return (xtr, ytr), (xte, yte), names
    if key == "cifar10":
        return _read_cifar(
            folder,
            "cifar-10-python.tar.gz",
            "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            ["test_batch"],
            b"labels",
            "batches.meta",
            b"label_names",
        )
    return _read_cifar(
        folder,
        "cifar-100-python.tar.gz",
        "cifar-100-python",
        ["train"],
        ["test"],
        b"fine_labels",
        "meta",
        b"fine_label_names",
    )


def _read_cifar(folder, archive, inner, train_files, test_files, label_key, meta, names_key):
    """Read CIFAR from its python-pickle archive, or from the unpacked folder."""
    members: dict[str, bytes] = {}
    wanted = train_files + test_files + [meta]
    tar_path, dir_path = folder / archive, folder / inner
    if dir_path.is_dir() and all((dir_path / w).is_file() for w in wanted):
        members = {w: (dir_path / w).read_bytes() for w in wanted}
    elif tar_path.is_file():
        try:
            with tarfile.open(tar_path, "r:gz") as tar:
                for m in tar.getmembers():
                    base = m.name.split("/")[-1]
                    if base in wanted and m.isfile():
                        members[base] = tar.extractfile(m).read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(
                f"{tar_path} cannot be read as a .tar.gz archive ({e})",
                fix="Download it again; the file may be truncated",
            ) from None
        missing = [w for w in wanted if w not in members]
        if missing:
            raise DataError(
                f"{tar_path} lacks {', '.join(missing)}",
                expected=f"the original {archive}, python version",
            )
    else:
        return None

    def batch(name):
        d = pickle.loads(members[name], encoding="bytes")
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return x, np.asarray(d[label_key])

    xtr, ytr = zip(*(batch(f) for f in train_files))
    xte, yte = zip(*(batch(f) for f in test_files))
    names = [n.decode() for n in pickle.loads(members[meta], encoding="bytes")[names_key]]
    return (
        (np.concatenate(xtr), np.concatenate(ytr)),
        (np.concatenate(xte), np.concatenate(yte)),
        names,
    )


def _download(key: str, folder: Path):
    import keras

    loader = getattr(keras.datasets, key)
    try:
        (xtr, ytr), (xte, yte) = loader.load_data()
    except Exception as e:  # noqa: BLE001 - any failure here is "could not download"
        file, url = DOWNLOADS[key]
        raise DataError(
            f"builtin:{key} is not on this machine and could not be downloaded "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else 'no detail'})",
            expected=f"{file} in {folder}",
            fix=f"Fetch {url} on a machine with internet, put it in {folder} "
            f"(or any folder given with --data-dir)",
        ) from None
    names = {
        "cifar10": CIFAR10_CLASSES,
        "fashion_mnist": FASHION_CLASSES,
        "mnist": MNIST_CLASSES,
    }.get(key)
    if names is None:  # cifar100: Keras unpacks the archive; read the names from it
        local = _read_local(key, keras_cache_dir())
        names = local[2] if local else [f"class_{i}" for i in range(100)]
    return (xtr, ytr), (xte, yte), names
