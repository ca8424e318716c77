"""The report, compare and data inspect commands, as a user runs them."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from PIL import Image

from cnnlab.cli.main import main


def distinct_pictures(root, per_class: int = 6, size: int = 24):
    """train/ and test/ folders of unrelated pictures (random plane waves)."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for split in ("train", "test"):
        for c in ("x", "y"):
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                img = np.full((size, size, 3), 128.0)
                for _ in range(4):
                    f, ph = rng.uniform(1, 5, 2), rng.uniform(0, 6.3)
                    img += np.sin(2 * np.pi * (f[0] * yy + f[1] * xx) + ph)[
                        ..., None
                    ] * rng.uniform(20, 60, 3)
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
                    root / split / c / f"{i}.png"
                )
    return root


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = distinct_pictures(root / "data")
    runs = []
    for name, lr in (("r1", "3e-3"), ("r2", "1e-2")):
        code = main(
            [
                "train",
                "--data",
                f"folder:{data / 'train'}",
                "--epochs",
                "2",
                "--runs-dir",
                str(root / "runs"),
                "--name",
                name,
                "--model",
                "simple_cnn",
                "--model-kwargs",
                "filters=[8]",
                "--model-kwargs",
                "dense=[8]",
                "--learning-rate",
                lr,
                "--test-split",
                "0.2",
                "-q",
            ]
        )
        assert code == 0
        runs.append(root / "runs" / name)
    return runs


def test_train_then_report(two_runs, tmp_path, capsys):
    r1, _ = two_runs
    assert (r1 / "report.html").is_file() and (r1 / "report.json").is_file()
    capsys.readouterr()
    assert main(["report", str(r1), "--output", str(tmp_path / "rep"), "--tta-examples", "5"]) == 0
    out, err = capsys.readouterr()
    assert "test: accuracy" in out and f"report: {tmp_path / 'rep' / 'report.html'}" in out
    assert re.search(r"cnnlab: Memory: ~\d\.\d GB estimated peak \(report, batch 128; budget", err)
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a cnnlab run folder (no config.yaml)" in capsys.readouterr().err


def test_compare(two_runs, tmp_path, capsys):
    r1, r2 = two_runs
    assert main(["compare", str(r1), str(r2), "--output", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["run", "r1", "r2"]
    assert "learning_rate" in out  # the one setting that differs is shown
    assert (tmp_path / "cmp" / "compare.html").is_file() and (
        tmp_path / "cmp" / "compare.png"
    ).is_file()


def test_data_inspect_names_leakage(tmp_path, capsys, monkeypatch):
    data = distinct_pictures(tmp_path / "pics")
    Image.open(data / "train/x/0.png").resize((48, 48)).save(data / "test/x/bigger_copy.png")
    shutil.copy(data / "train/y/1.png", data / "test/y/same.png")
    out = tmp_path / "check"
    assert main(["data", "inspect", f"folder:{data}", "--output", str(out), "--strict"]) == 1
    text = capsys.readouterr().out
    assert "leakage across splits: 2 pair(s)" in text
    assert (
        f"train {data / 'train/x/0.png'}  ==  test {data / 'test/x/bigger_copy.png'}  (near, 0 bits)"
        in text
    )
    assert f"results: {out / 'inspect.html'}" in text and (out / "leakage.csv").is_file()
    # never overwritten silently
    assert main(["data", "inspect", f"folder:{data}", "--output", str(out)]) == 2
    assert "already holds the results of a data check" in capsys.readouterr().err
    assert main(["data", "inspect", f"folder:{data}", "--output", str(out), "--overwrite"]) == 0
    # default folder: ./inspect-<name>, then -2
    monkeypatch.chdir(tmp_path)
    assert main(["data", "inspect", f"folder:{data}", "--no-near"]) == 0
    assert main(["data", "inspect", f"folder:{data}", "--no-near"]) == 0
    assert (tmp_path / "inspect-pics" / "inspect.json").is_file()
    assert (tmp_path / "inspect-pics-2" / "inspect.json").is_file()


def test_help_has_examples(capsys):
    for cmd in (["report", "--help"], ["compare", "--help"], ["data", "inspect", "--help"]):
        assert main(cmd) == 0
        assert "Examples:" in capsys.readouterr().out
