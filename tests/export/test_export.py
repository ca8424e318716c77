"""``cnnlab export``: every format from a run, each file run in its own runtime with the
Keras model's probabilities, a manifest that says what was measured, and failures
that leave no finished-looking file."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from cnnlab.errors import ConfigError, ModelError
from cnnlab.export import FILES, FORMATS, export_keras, parse_formats
from cnnlab.runtime import load_artifact
from tests.export._models import CLASSES, train_tiny


def test_export_all_writes_every_format_with_manifest_and_labels(export_run):
    out = export_run / "export"
    manifest = json.loads((out / "export.json").read_text())
    assert set(manifest["artifacts"]) == set(FORMATS)
    assert (out / "labels.txt").read_text().splitlines() == list(CLASSES)
    assert manifest["class_names"] == list(CLASSES)
    assert manifest["input_shape"] == [None, 16, 16, 3] and manifest["resize"] == "stretch"
    assert manifest["source_run"] == str(export_run.resolve())
    assert manifest["test_metrics"]["accuracy"] >= 0.5
    assert manifest["versions"]["tf2onnx"].startswith("1.17")
    for fmt, entry in manifest["artifacts"].items():
        path = out / FILES[fmt]
        assert entry["file"] == FILES[fmt] and path.exists(), fmt
        assert entry["bytes"] > 1000
        p = entry["parity"]
        assert p["passed"] and p["images"] == 6, (fmt, p)  # the run's 6 held-out images
        assert p["top1_agreement"] == 1.0 or fmt != "tflite-fp16"
        if fmt in ("keras", "savedmodel", "tflite", "onnx"):
            assert p["max_abs_diff"] <= 1e-4, (fmt, p)
    int8 = manifest["artifacts"]["tflite-int8"]
    assert int8["input"]["dtype"] == "uint8"
    assert int8["input"]["quantization"] == {"scale": 1.0, "zero_point": 0}
    assert int8["representative_images"] == 3 * 16  # the whole training split, all 3 classes
    assert manifest["artifacts"]["onnx"]["opset"] == 17
    assert not list(out.glob(".*tmp*")), "temporary files left behind"


def test_artifacts_take_raw_pixels_with_a_dynamic_batch(export_run):
    """Each file takes uint8 0-255 images in batches of any size and gives the same
    probabilities as the .keras model (int8: the same top-1 on these images)."""
    from cnnlab.models.saving import load_for_inference

    loaded = load_for_inference(export_run)
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (5, 16, 16, 3)).astype(np.uint8)
    reference = np.asarray(loaded.model(x.astype(np.float32), training=False))
    for fmt in ("savedmodel", "tflite", "tflite-fp16", "tflite-int8", "onnx"):
        art = load_artifact(export_run / "export" / FILES[fmt])
        assert art.class_names == list(CLASSES) and art.image_size == (16, 16)
        assert art.run_dir == export_run.resolve()
        one = art.predict(x[:1])
        five = art.predict(x)
        assert one.shape == (1, 3) and five.shape == (5, 3)
        np.testing.assert_allclose(five[:1], one, atol=1e-5)
        tol = {"tflite-fp16": 5e-3, "tflite-int8": 0.1}.get(fmt, 1e-5)
        np.testing.assert_allclose(five, reference, atol=tol, err_msg=fmt)


def test_export_cli_prints_the_parity_table(export_run, tmp_path):
    from cnnlab.cli.main import cli

    out = tmp_path / "onnx-only"
    res = CliRunner().invoke(
        cli, ["export", str(export_run), "--format", "onnx,tflite", "--output", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "onnxruntime" in res.output and "ai_edge_litert Interpreter" in res.output
    assert "max|Δp|" in res.output and "top-1 agree" in res.output
    lines = [line for line in res.output.splitlines() if line.startswith(("onnx ", "tflite "))]
    assert len(lines) == 2 and all(line.rstrip().endswith("ok") for line in lines)
    assert sorted(p.name for p in out.iterdir()) == [
        "export.json",
        "labels.txt",
        "model.onnx",
        "model.tflite",
    ]


def test_a_failed_export_prints_the_table_then_the_error_and_its_fix(
    export_run, tmp_path, capsys, monkeypatch
):
    from cnnlab.cli.main import main
    from cnnlab.export import parity

    monkeypatch.setitem(parity.THRESHOLDS, "fp32_max_abs_diff", -1.0)
    out = tmp_path / "failing"
    code = main(["export", str(export_run), "--format", "onnx", "--output", str(out)])
    captured = capsys.readouterr()
    assert code != 0
    assert re.search(r"\nonnx +\(deleted\) .* FAILED: max \|Δp\|", captured.out)
    error = captured.err.strip().splitlines()[-1]
    assert "Export parity check failed for onnx (max |Δp|" in error
    assert error.endswith("Check the model, or pass a looser thresholds= in Python.")


def test_a_failed_int8_export_names_the_command_for_the_other_formats(
    export_run, tmp_path, capsys, monkeypatch
):
    from cnnlab.cli.main import main
    from cnnlab.export import parity

    monkeypatch.setitem(parity.THRESHOLDS, "int8_accuracy_drop", -1.0)
    out = tmp_path / "int8"
    code = main(["export", str(export_run), "--format", "tflite-int8", "--output", str(out)])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code != 0 and not (out / "model_int8.tflite").exists()
    assert "Export parity check failed for tflite-int8 (accuracy" in error
    assert (
        "Export the other formats with --format keras,savedmodel,tflite,tflite-fp16,onnx "
        "(tflite-fp16 is half the size at float accuracy)" in error
    )


def test_fp16_agreement_leaves_out_near_ties_but_not_real_flips():
    from cnnlab.export.parity import format_table, measure

    reference = np.tile([[0.9, 0.05, 0.05]], (100, 1))
    reference[0] = [0.499, 0.497, 0.004]  # a near-tie: top-2 margin 0.002
    flipped = reference.copy()
    flipped[0] = [0.497, 0.499, 0.004]  # fp16 rounding flips it
    tie = measure("tflite-fp16", flipped, reference, None)
    assert tie.passed and tie.agreement == 0.99
    assert tie.near_ties == 1 and tie.decisive_agreement == 1.0
    row = {"format": "tflite-fp16", "file": "model_fp16.tflite", "bytes": 10}
    assert format_table([{**row, "parity": tie.to_dict()}]).endswith("ok (1 near-ties not counted)")
    flipped[1] = [0.05, 0.9, 0.05]  # a confident image changes class: broken
    broken = measure("tflite-fp16", flipped, reference, None)
    assert not broken.passed
    assert broken.problems == [
        "top-1 agreement 98.99% < 99.50% on the 99 images that are not near-ties "
        "(Keras' top-1 leads by 0.05 or more)"
    ]
    labels = reference.argmax(1)
    labels[:3] = 2  # Keras is wrong on 3 images, fp16 on 3 more: 6 points below
    worse = reference.copy()
    worse[3:6] = [0.05, 0.05, 0.9]
    dropped = measure("tflite-fp16", worse, reference, labels, {"fp16_agreement": 0.0})
    assert dropped.problems == ["accuracy 94.00% is more than 1 point(s) below Keras' 97.00%"]


def test_unknown_format_names_the_choices():
    with pytest.raises(
        ConfigError,
        match=r"Unknown export format\(s\): coreml.*all or any of "
        r"keras, savedmodel, tflite, tflite-fp16, tflite-int8, onnx",
    ):
        parse_formats("onnx,coreml")
    assert parse_formats("all") == list(FORMATS)
    assert parse_formats("onnx, tflite-int8") == ["tflite-int8", "onnx"]


def test_a_failed_parity_check_deletes_the_file_and_says_why(tmp_path, held_out):
    model = train_tiny("simple_cnn", epochs=2, filters=[8], dense=[8])
    x, y = held_out
    with pytest.raises(
        ModelError,
        match=r"Export parity check failed for tflite \(max \|Δp\| "
        r"\S+ > -1e\+00\), onnx \(max \|Δp\| \S+ > -1e\+00\); the failing "
        r"file\(s\) were deleted, the rest are in \S+\. Check the model, or pass a looser "
        r"thresholds= in Python\.$",
    ) as failure:
        export_keras(
            model,
            tmp_path,
            "onnx,tflite",
            class_names=list(CLASSES),
            images=x,
            labels=y,
            thresholds={"fp32_max_abs_diff": -1.0},
        )
    assert not (tmp_path / "model.onnx").exists() and not (tmp_path / "model.tflite").exists()
    assert re.search(r"\nonnx +\(deleted\) .* FAILED: max", failure.value.result.table())
    manifest = json.loads((tmp_path / "export.json").read_text())
    assert manifest["artifacts"]["onnx"]["file"] is None
    assert manifest["artifacts"]["onnx"]["parity"]["passed"] is False


def test_a_converter_that_fails_midway_leaves_no_file(tmp_path, held_out, monkeypatch):
    import cnnlab.export.formats as formats

    def broken(model, mode, representative=None):
        raise RuntimeError("converter crashed")

    model = train_tiny("simple_cnn", epochs=1, filters=[8], dense=[8])
    (tmp_path / "model.tflite").write_bytes(b"an older, finished file")
    monkeypatch.setattr(formats, "_tflite_bytes", broken)
    x, y = held_out
    with pytest.raises(
        ModelError,
        match=r"Exporting simple_cnn to tflite failed \(RuntimeError: "
        r"converter crashed\)",
    ):
        export_keras(model, tmp_path, "tflite", class_names=list(CLASSES), images=x, labels=y)
    assert (tmp_path / "model.tflite").read_bytes() == b"an older, finished file"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
