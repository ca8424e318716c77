"""Exported files are first-class inputs: ``cnnlab evaluate`` and ``cnnlab predict`` take a
``.tflite``, ``.onnx`` or SavedModel folder as they take a run."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import cnnlab


def test_evaluate_int8_file_is_within_a_point_of_keras(export_run):
    keras_result = cnnlab.evaluate(export_run)
    for name in ("model_int8.tflite", "model.onnx", "saved_model"):
        result = cnnlab.evaluate(export_run / "export" / name)
        assert abs(result.accuracy - keras_result.accuracy) <= 0.01, name
        assert len(result.y_true) == len(keras_result.y_true) == 6
        if name != "model_int8.tflite":
            np.testing.assert_allclose(result.probs, keras_result.probs, atol=1e-5)


def test_predict_with_an_exported_file_matches_the_run(export_run, tmp_path):
    from PIL import Image

    from tests.export._models import learnable_arrays

    x, _ = learnable_arrays(1)
    path = tmp_path / "one.png"
    Image.fromarray(x[0]).resize((40, 30)).save(path)
    expected = cnnlab.predict(export_run, [str(path)], top_k=3)[0]["top"]
    for name in ("model.onnx", "model.tflite", "saved_model"):
        got = cnnlab.predict(export_run / "export" / name, [str(path)], top_k=3)[0]["top"]
        assert [t["label"] for t in got] == [t["label"] for t in expected], name
        np.testing.assert_allclose(
            [t["probability"] for t in got], [t["probability"] for t in expected], atol=1e-5
        )


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_cli_takes_an_exported_file(export_run, command, tmp_path):
    from cnnlab.cli.main import cli

    args = [command, str(export_run / "export" / "model_int8.tflite")]
    if command == "predict":
        from PIL import Image

        Image.new("RGB", (16, 16), (200, 40, 40)).save(tmp_path / "red.png")
        args.append(str(tmp_path / "red.png"))
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert ("accuracy" in res.output) if command == "evaluate" else ("red.png" in res.output)
