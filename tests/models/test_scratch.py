"""Every from-scratch model honours the registry contract."""

import numpy as np
import pytest

from cnnlab.errors import ModelError
from cnnlab.models import create_model, get_spec, list_models

SCRATCH = [n for n in list_models() if not get_spec(n).pretrained]


@pytest.mark.parametrize("name", SCRATCH)
def test_contract_builds_trains_a_step_and_names_layers(name):
    import keras

    spec = get_spec(name)
    size = max(spec.min_image_size, 16)
    model = create_model(name, num_classes=3, image_size=size, channels=3)
    assert model.input_shape == (None, size, size, 3)
    assert model.output_shape == (None, 3)
    assert model.layers[-1].name == "predictions"
    # every model names its global pooling 'pooler': fine-tuning and Grad-CAM find it by name
    assert len(model.get_layer("pooler").output.shape) == 2
    model.compile("sgd", "categorical_crossentropy")
    x = np.random.default_rng(0).uniform(0, 255, (4, size, size, 3)).astype("float32")
    y = keras.utils.to_categorical([0, 1, 2, 0], 3)
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    assert np.allclose(model.predict(x, verbose=0).sum(axis=1), 1, atol=1e-4)


def test_registry_suggests_close_names():
    with pytest.raises(ModelError, match="Unknown model 'resnt20'. Did you mean: resnet20"):
        create_model("resnt20", 10)
    assert "resnet20" in list_models("resnet*") and "simple_cnn" not in list_models("resnet*")


def test_unknown_option_lists_accepted_ones():
    with pytest.raises(
        ModelError, match="simple_cnn has no option 'fliters'. Did you mean: filters"
    ):
        create_model("simple_cnn", 10, 32, fliters=[8])


def test_simple_cnn_is_configurable_by_blocks():
    model = create_model(
        "simple_cnn",
        4,
        16,
        1,
        blocks=[
            {"filters": 8, "kernel_size": 5, "convs": 1, "pool": "avg", "batch_norm": False},
            {"filters": 16, "activation": "elu", "dropout": 0.5, "pool": "none"},
        ],
        dense=[32, 16],
        dense_dropout=0.0,
    )
    names = [layer.name for layer in model.layers]
    assert "block1_conv1" in names and "block1_conv2" not in names and "block1_bn1" not in names
    assert "block2_conv2" in names and "block2_pool" not in names and "block2_dropout" in names
    assert model.get_layer("block1_conv1").kernel_size == (5, 5)
    assert [n for n in names if n.startswith("dense") and "drop" not in n] == ["dense1", "dense2"]
    with pytest.raises(ModelError, match="block 1 has unknown key"):
        create_model("simple_cnn", 4, 16, blocks=[{"filters": 8, "size": 3}])


def test_preprocessing_is_inside_the_model():
    model = create_model("resnet20", 2, 16, 3, mean=[100, 110, 120], std=[50, 50, 50])
    assert model.layers[1].name == "normalize"
    model = create_model("simple_cnn", 2, 16, 3)
    assert model.layers[1].name == "rescale"


def test_too_small_images_are_refused():
    with pytest.raises(ModelError, match="needs images of at least 8x8"):
        create_model("resnet20", 10, 4)


def test_width_is_a_multiplier_and_filters_a_count():
    from cnnlab.config import CnnlabDeprecationWarning

    vgg = create_model("vgg8_bn", 3, 16, width=0.5)
    assert vgg.get_layer("stage1_conv1_conv").filters == 32  # 64 x 0.5
    resnet = create_model("resnet20", 3, 16, filters=8)
    assert resnet.get_layer("stem_conv").filters == 8
    assert resnet.get_layer("stage3_block1_1_conv").filters == 32  # 4x in stage 3
    assert create_model("resnet9", 3, 16, filters=8).get_layer("layer3_conv").filters == 64
    with pytest.warns(
        CnnlabDeprecationWarning,
        match="'width' in the model options "
        r"\(resnet20\) is a deprecated model option name; use 'filters'",
    ):
        old = create_model("resnet20", 3, 16, width=8)
    assert old.get_layer("stem_conv").filters == 8
    with pytest.warns(CnnlabDeprecationWarning, match="use 'width' instead"):
        old = create_model("vgg8_bn", 3, 16, width_mult=0.5)
    assert old.get_layer("stage1_conv1_conv").filters == 32
