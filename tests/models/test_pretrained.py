"""Pretrained backbones: preprocessing per family, offline weights, and the registry contract.

The default suite builds one small backbone per family at its minimum size;
``pytest -m slow tests/models/test_pretrained.py`` builds and trains a step of
every registered backbone (several minutes on 2 CPU cores).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from cnnlab.errors import WeightsError
from cnnlab.models import create_model, get_spec, list_models
from cnnlab.models.pretrained import weights as weights_mod
from cnnlab.models.pretrained.applications import (
    BACKBONES,
    ImagePreprocessing,
    backbone_blocks,
    batchnorm_layers,
    get_backbone,
)

PRETRAINED = list_models(pretrained=True)
# One (small) member per family: the preprocessing is a property of the family.
FAMILY_REPRESENTATIVES = {
    "vgg": "vgg16",
    "resnet": "resnet50",
    "resnet_v2": "resnet50_v2",
    "inception_v3": "inception_v3",
    "inception_resnet_v2": "inception_resnet_v2",
    "xception": "xception",
    "mobilenet": "mobilenet",
    "mobilenet_v2": "mobilenet_v2",
    "mobilenet_v3": "mobilenet_v3_small",
    "densenet": "densenet121",
    "efficientnet": "efficientnet_b0",
    "efficientnet_v2": "efficientnet_v2_b0",
    "convnext": "convnext_tiny",
    "nasnet": "nasnet_mobile",
}
SMALL = ["mobilenet", "mobilenet_v3_small", "efficientnet_lite0"]
SHARED = Path(__file__).resolve().parents[2].parent / "shared"


def _images(n: int, size: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, channels)).astype("float32")


@pytest.fixture
def keras_home(tmp_path, monkeypatch) -> Path:
    """An empty Keras cache, and downloads that fail as they do offline."""
    home = tmp_path / "keras_home"
    (home / "models").mkdir(parents=True)
    monkeypatch.setenv("KERAS_HOME", str(home))

    def offline(file_name, url, file_hash, folder):
        raise Exception(  # noqa: TRY002 - what keras.utils.get_file raises
            f"URL fetch failure on {url}: None -- [Errno -3] Temporary failure in name resolution"
        )

    monkeypatch.setattr(weights_mod, "_download", offline)
    return home


def test_every_keras_applications_family_and_lite_is_registered():
    families = {get_spec(n).family for n in PRETRAINED}
    assert set(FAMILY_REPRESENTATIVES) | {"efficientnet_lite"} <= families
    expected = [
        "vgg16",
        "vgg19",
        "resnet50",
        "resnet101",
        "resnet152",
        "resnet50_v2",
        "resnet101_v2",
        "resnet152_v2",
        "inception_v3",
        "inception_resnet_v2",
        "xception",
        "mobilenet",
        "mobilenet_v2",
        "mobilenet_v3_small",
        "mobilenet_v3_large",
        "densenet121",
        "densenet169",
        "densenet201",
        "convnext_tiny",
        "convnext_small",
        "convnext_base",
        "convnext_large",
        "convnext_xlarge",
        "nasnet_mobile",
        "nasnet_large",
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
    ]
    expected += [f"efficientnet_b{i}" for i in range(8)]
    expected += [f"efficientnet_v2_{v}" for v in ("b0", "b1", "b2", "b3", "s", "m", "l")]
    assert sorted(expected) == PRETRAINED
    for name in PRETRAINED:
        extra = get_spec(name).extra
        assert extra["feature_width"] > 0 and extra["preprocessing"] in (
            "caffe",
            "tf",
            "torch",
            "none",
        )
    # The from-scratch VGG moved aside for keras.applications' VGG16.
    assert not get_spec("vgg16_bn").pretrained and get_spec("vgg16").pretrained


@pytest.mark.parametrize("family", sorted(FAMILY_REPRESENTATIVES))
def test_in_model_preprocessing_equals_keras_preprocess_input(family):
    name = FAMILY_REPRESENTATIVES[family]
    spec = get_spec(name)
    size = spec.min_image_size
    model = create_model(name, 3, size)
    assert model.layers[1].name == "preprocess"
    x = _images(4, size, seed=1)
    ours = keras.Model(model.input, model.get_layer("preprocess").output).predict(x, verbose=0)
    module = getattr(keras.applications, spec.extra["keras_module"])
    reference = module.preprocess_input(x.copy())
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-3)


def test_efficientnet_lite_preprocessing_is_its_own_first_layer():
    model = create_model("efficientnet_lite0", 3, 32)
    assert model.get_layer("preprocess").mode == "none"
    base = get_backbone(model)
    x = _images(2, 32)
    out = keras.Model(base.input, base.get_layer("preprocess_normalize").output)(x).numpy()
    np.testing.assert_allclose(out, (x - 127.0) / 128.0, atol=1e-5)


def test_grayscale_input_is_repeated_to_rgb_inside_the_model():
    model = create_model("mobilenet", 2, 32, channels=1)
    assert model.input_shape == (None, 32, 32, 1)
    gray = _images(2, 32, channels=1)
    prep = keras.Model(model.input, model.get_layer("preprocess").output)
    np.testing.assert_allclose(
        prep(gray).numpy(), np.repeat(gray, 3, axis=-1) / 127.5 - 1, atol=1e-5
    )
    assert ImagePreprocessing.from_config(ImagePreprocessing("caffe").get_config()).mode == "caffe"


@pytest.mark.parametrize("name", SMALL)
def test_small_backbones_build_train_a_step_and_split_into_blocks(name):
    _contract(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", PRETRAINED)
def test_every_backbone_builds_and_trains_a_step_at_its_minimum_size(name):
    _contract(name)


def _contract(name: str) -> None:
    spec = get_spec(name)
    size = spec.min_image_size
    model = create_model(name, num_classes=3, image_size=size, weights=None, hidden_units=[16])
    assert model.input_shape == (None, size, size, 3) and model.output_shape == (None, 3)
    assert [layer.name for layer in model.layers][-3:] == [
        "head_dense1",
        "head_dropout",
        "predictions",
    ]
    assert model.get_layer("pooler").output.shape[-1] == spec.extra["feature_width"]
    blocks = backbone_blocks(get_backbone(model), spec.extra["block_rule"])
    weighted = [b for b, members in blocks if any(m.weights for m in members)]
    assert len(weighted) >= 5, weighted  # enough blocks for staged unfreezing
    assert sum(len(members) for _, members in blocks) == len(get_backbone(model).layers) - 1
    x = _images(2, size)
    # fine_tune's feature path: the head alone, on pooled features, is the same classifier.
    from cnnlab.training.finetune import head_model

    features = keras.Model(model.input, model.get_layer("pooler").output)(x)
    np.testing.assert_allclose(head_model(model)(features), model(x), atol=1e-5)
    model.compile("sgd", "categorical_crossentropy")
    y = keras.utils.to_categorical([0, 2], 3)
    assert np.isfinite(model.train_on_batch(x, y))
    assert np.allclose(model.predict(x, verbose=0).sum(axis=1), 1, atol=1e-4)
    keras.backend.clear_session()


def test_block_names_follow_the_architecture():
    def names(model_name, size=32):
        spec = get_spec(model_name)
        model = create_model(model_name, 2, max(size, spec.min_image_size))
        return [b for b, _ in backbone_blocks(get_backbone(model), spec.extra["block_rule"])]

    assert names("vgg16") == ["block1", "block2", "block3", "block4", "block5"]
    assert names("mobilenet") == ["stem"] + [f"block_{i}" for i in range(1, 14)]
    assert names("efficientnet_lite0")[-3:] == ["block6d", "block7a", "top"]


def _fake_keras_efficientnet_file(path: Path) -> None:
    """A legacy .h5 laid out like Keras' efficientnetb0_notop.h5: random convolutions,
    BatchNorm statistics of real activations, and the ImageNet *std* where the
    Normalization layer's variance belongs (as in the real file)."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    base = keras.applications.EfficientNetB0(
        include_top=False, weights=None, input_shape=(32, 32, 3)
    )
    norm = next(layer for layer in base.layers if isinstance(layer, keras.layers.Normalization))
    norm.adapt_mean.assign([0.485, 0.456, 0.406])
    norm.adapt_variance.assign([0.229, 0.224, 0.225])
    norm.finalize_state()
    for bn in batchnorm_layers(base):
        bn.momentum = 0.0
    base(_images(8, 32), training=True)
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, base)


def test_efficientnet_imagenet_weights_normalise_as_keras_does(keras_home, monkeypatch):
    from keras.src.utils import file_utils

    cached = keras_home / "models" / "efficientnetb0_notop.h5"
    _fake_keras_efficientnet_file(cached)
    ours = get_backbone(create_model("efficientnet_b0", 3, 32, weights="imagenet"))
    # Keras' own weights="imagenet" model, reading the same file.
    monkeypatch.setattr(file_utils, "get_file", lambda *a, **k: str(cached))
    reference = keras.applications.EfficientNetB0(
        include_top=False, weights="imagenet", input_shape=(32, 32, 3)
    )
    x = _images(3, 32, seed=5)
    # The first convolution sees the same normalised pixels; every later layer
    # and weight is identical (random weights amplify float noise, so no deeper).
    a = keras.Model(ours.input, ours.get_layer("stem_conv").output)(x).numpy()
    b = keras.Model(reference.input, reference.get_layer("stem_conv").output)(x).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    pixels = keras.Model(ours.input, ours.get_layer("stem_conv_pad").input)(x).numpy()
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(pixels, (x / 255 - mean) / std, rtol=1e-4, atol=1e-4)


def test_missing_imagenet_weights_offline_name_file_folder_and_url(keras_home):
    with pytest.raises(WeightsError) as info:
        create_model("resnet50", 3, 32, weights="imagenet")
    msg = str(info.value)
    folder = keras_home / "models"
    assert f"resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 is not in {folder}" in msg
    assert "Temporary failure in name resolution" in msg
    assert (
        "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    ) in msg
    assert "--weights PATH" in msg and "KERAS_HOME" in msg


def test_offline_switch_skips_the_download(keras_home, monkeypatch):
    monkeypatch.setenv("CNNLAB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="downloads are disabled"):
        create_model("densenet121", 3, 32, weights="imagenet")


def test_cli_train_resnet50_imagenet_offline_fails_with_the_message(
    keras_home, image_folder, runs_dir, capsys
):
    from cnnlab.cli.main import main

    code = main(
        [
            "train",
            "--data",
            f"folder:{image_folder}",
            "--model",
            "resnet50",
            "--weights",
            "imagenet",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--runs-dir",
            str(runs_dir),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "cnnlab: error: ImageNet weights for resnet50 are not available" in err
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in err and "Traceback" not in err


def test_weights_from_a_local_file_and_clear_errors_for_bad_files(tmp_path, keras_home):
    from cnnlab.models.pretrained.applications import make_backbone

    base = make_backbone(BACKBONES["mobilenet"], (32, 32, 3))
    base.get_layer("conv1").kernel.assign(np.full((3, 3, 3, 32), 0.5, "float32"))
    path = tmp_path / "mobilenet_backbone.weights.h5"
    base.save_weights(path)
    model = create_model("mobilenet", 3, 32, weights=str(path))
    assert np.all(get_backbone(model).get_layer("conv1").kernel.numpy() == 0.5)
    assert all(
        not bn.trainable for bn in batchnorm_layers(get_backbone(model))
    )  # frozen when loaded
    with pytest.raises(WeightsError, match="Weights file .*nope.h5 does not exist"):
        create_model("mobilenet", 3, 32, weights=str(tmp_path / "nope.h5"))
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(WeightsError, match="cannot be loaded into the mobilenet backbone"):
        create_model("mobilenet", 3, 32, weights=str(junk))


def test_models_list_pretrained_shows_which_weights_are_here(keras_home, capsys):
    from cnnlab.cli.main import main

    (keras_home / "models" / "mobilenet_1_0_224_tf_no_top.h5").write_bytes(b"")
    assert main(["models", "list", "--pretrained", "mobilenet*"]) == 0
    out = capsys.readouterr().out
    assert f"weights cache: {keras_home / 'models'}" in out
    line = {ln.split()[0]: ln for ln in out.splitlines()[1:]}
    assert "weights yes" in line["mobilenet"]
    assert "weights no" in line["mobilenet_v2"]
    assert (
        "put mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5 in"
        in line["mobilenet_v2"]
    )


@pytest.mark.slow
@pytest.mark.skipif(
    not (SHARED / "keras" / "models" / "mobilenet_1_0_224_tf_no_top.h5").is_file(),
    reason="needs ../shared/keras",
)
def test_real_mobilenet_weights_give_keras_features(monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(SHARED / "keras"))
    model = create_model("mobilenet", 5, 224, weights="imagenet")
    x = _images(2, 224, seed=3)
    ours = keras.Model(model.input, model.get_layer("pooler").output)(x).numpy()
    ref = keras.applications.MobileNet(include_top=False, weights=None, pooling="avg")
    ref.load_weights(str(SHARED / "keras" / "models" / "mobilenet_1_0_224_tf_no_top.h5"))
    expected = ref(keras.applications.mobilenet.preprocess_input(x.copy())).numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)
