import json

import pytest
from PIL import Image

import cnnlab
from cnnlab.errors import DataError, ModelError
from cnnlab.evaluation import format_predictions

TINY = dict(
    model="simple_cnn",
    model_kwargs={"filters": [8, 16], "dense": [16]},
    batch_size=8,
    verbose=0,
    lr=3e-3,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tests.conftest import make_image_folder

    root = tmp_path_factory.mktemp("ev")
    folder = make_image_folder(root / "train", classes=("a", "b", "c"), per_class=20)
    result = cnnlab.train(data=f"folder:{folder}", epochs=8, runs_dir=str(root / "runs"), **TINY)
    return result, root


def test_evaluate_run_reuses_saved_test_split(trained):
    result, _ = trained
    ev = cnnlab.evaluate(result.run_dir)
    assert ev.metrics["num_examples"] == result.metrics["test"]["num_examples"]
    assert ev.accuracy == pytest.approx(result.test_accuracy)
    # train wrote evaluation-test; later evaluations never overwrite it
    assert (result.run_dir / "evaluation-test" / "metrics.json").is_file()
    assert ev.output_dir == result.run_dir / "evaluation-test-2"
    again = cnnlab.evaluate(result.run_dir)
    assert again.output_dir.name == "evaluation-test-3"
    cm = json.loads((again.output_dir / "confusion_matrix.json").read_text())
    assert cm["class_names"] == ["a", "b", "c"]
    assert (again.output_dir / "confusion_matrix.png").stat().st_size > 1000


def test_evaluate_other_folder_with_class_subset(trained):
    from tests.conftest import make_image_folder

    result, root = trained
    other = make_image_folder(root / "other", classes=("a", "c"), per_class=5, seed=9)
    ev = cnnlab.evaluate(result.run_dir, data=f"folder:{other}")
    assert ev.metrics["num_examples"] == 10
    assert ev.metrics["per_class"]["b"]["support"] == 0
    assert ev.output_dir.name == "evaluation-folder-other"
    unknown = make_image_folder(root / "unknown", classes=("a", "zebra"), per_class=2)
    with pytest.raises(DataError, match="has class\\(es\\) the model does not know: zebra"):
        cnnlab.evaluate(result.run_dir, data=f"folder:{unknown}")


def test_predict_files_and_folders_top_k(trained, tmp_path):
    result, root = trained
    (tmp_path / "broken.jpg").write_bytes(b"nope")
    rows = cnnlab.predict(
        result.run_dir, [str(root / "train" / "a"), str(tmp_path / "broken.jpg")], top_k=3
    )
    assert len(rows) == 21
    good = [r for r in rows if "top" in r]
    assert len(good) == 20 and len(good[0]["top"]) == 3
    assert sum(r["top"][0]["label"] == "a" for r in good) >= 18
    assert rows[-1]["error"] == "not an image (unrecognised content)"
    assert format_predictions(rows, "csv").splitlines()[0].startswith("path,label1,prob1,label2")
    assert json.loads(format_predictions(rows, "json"))[0]["top"][0]["probability"] > 0.3
    assert "ERROR: not an image" in format_predictions(rows, "table")


def test_predict_loads_a_bare_keras_file_with_sidecar_classes(trained, tmp_path):
    result, root = trained
    img = root / "train" / "b" / "b_000.png"
    rows = cnnlab.predict(str(result.run_dir / "model.keras"), [str(img)], top_k=1)
    assert rows[0]["top"][0]["label"] == "b"


def test_missing_model_is_explained(tmp_path):
    with pytest.raises(ModelError, match="Model file .*nope.keras does not exist"):
        cnnlab.predict(str(tmp_path / "nope.keras"), [str(tmp_path)])
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    with pytest.raises(ModelError, match="bad.keras cannot be loaded as a Keras model"):
        cnnlab.predict(str(bad), [str(tmp_path / "x.png")])
