"""Every model family exports to every format with parity: the scratch families on tiny
trained models (each converted once to all six formats), the pretrained ones (no
weights, 32 px) under ``-m slow``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnnlab.export import FILES, FORMATS, export_keras
from cnnlab.runtime import load_artifact
from tests.export._models import (
    CLASSES,
    PRETRAINED,
    SCRATCH,
    SLOW_SCRATCH,
    learnable_arrays,
    train_tiny,
)


def export_and_check(model, out, size: int):
    x, y = learnable_arrays(12, size, seed=7)
    rep, _ = learnable_arrays(20, size, seed=3)
    result = export_keras(
        model, out, "all", class_names=list(CLASSES), images=x, labels=y, representative=rep
    )
    manifest = json.loads((out / "export.json").read_text())
    assert set(manifest["artifacts"]) == set(FORMATS)
    for fmt, entry in manifest["artifacts"].items():
        assert entry["parity"]["passed"] and (out / FILES[fmt]).exists(), (fmt, entry)
    keras_acc = manifest["artifacts"]["onnx"]["parity"]["keras_accuracy"]
    assert keras_acc >= 0.9, "the tiny model should have learned the easy classes"
    # dynamic batch: 1 and 7 images through the runtimes a deployment uses
    for fmt in ("tflite", "tflite-int8", "onnx"):
        art = load_artifact(out / FILES[fmt])
        assert art.predict(x[:1]).shape == (1, 3) and art.predict(x[:7]).shape == (7, 3)
    return result


@pytest.mark.parametrize("name", sorted(SCRATCH))
def test_scratch_family_exports_every_format(name, tmp_path):
    model = train_tiny(name, **SCRATCH[name])
    export_and_check(model, tmp_path, 16)


def test_airbench_export_keeps_its_whitening_and_test_time_augmentation(tmp_path):
    """The ONNX graph holds the TTA views (batch x 6 inside) and gives Keras' TTA-averaged
    probabilities, not those of the plain view."""
    import keras

    from cnnlab.models import create_model

    model = create_model("airbench", 3, 16, 3, **SCRATCH["airbench"])  # untrained is enough
    export_keras(
        model, tmp_path, "onnx", class_names=list(CLASSES), images=learnable_arrays(4, seed=7)[0]
    )
    x = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3)).astype(np.uint8)
    onnx = load_artifact(tmp_path / "model.onnx").predict(x)
    with_tta = np.asarray(model(x.astype(np.float32), training=False))
    np.testing.assert_allclose(onnx, with_tta, atol=1e-5)
    plain = keras.models.clone_model(model)  # same weights, no TTA views
    plain.set_weights(model.get_weights())
    plain.get_layer("tta_views").level = 0
    plain.get_layer("pooler").level = 0
    assert np.abs(np.asarray(plain(x.astype(np.float32), training=False)) - onnx).max() > 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW_SCRATCH))
def test_deeper_scratch_family_exports_every_format(name, tmp_path):
    export_and_check(train_tiny(name, epochs=6, **SLOW_SCRATCH[name]), tmp_path, 16)


@pytest.mark.slow
@pytest.mark.parametrize("name", PRETRAINED)
def test_pretrained_family_exports_every_format(name, tmp_path):
    """Without downloadable weights the backbone is untrained (and these nets do not learn
    the toy classes in seconds), so fp16/int8 agreement would measure noise: the fp32
    formats must match Keras as always; fp16 and int8 must convert, run and be measured."""
    from cnnlab.models import create_model

    model = create_model(name, len(CLASSES), 32, 3, weights=None)
    x, _ = learnable_arrays(12, 32, seed=7)
    rep, _ = learnable_arrays(20, 32, seed=3)
    result = export_keras(
        model,
        tmp_path,
        "all",
        class_names=list(CLASSES),
        images=x,
        representative=rep,
        thresholds={"fp16_agreement": 0.0},
    )
    for fmt, entry in result.manifest["artifacts"].items():
        assert entry["parity"]["passed"] and (tmp_path / FILES[fmt]).exists(), (fmt, entry)
        if fmt in ("keras", "savedmodel", "tflite", "onnx"):
            assert entry["parity"]["top1_agreement"] == 1.0
    for fmt in ("tflite-fp16", "tflite-int8", "onnx"):
        assert load_artifact(tmp_path / FILES[fmt]).predict(x[:5]).shape == (5, 3)
