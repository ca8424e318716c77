import numpy as np

from cnnlab.data import load_data, open_source
from cnnlab.data.splits import Split, make_split


def test_split_is_stratified_and_seeded():
    src = open_source("builtin:digits")
    a = make_split(src, 0.1, 0.2, seed=1)
    b = make_split(src, 0.1, 0.2, seed=1)
    c = make_split(src, 0.1, 0.2, seed=2)
    assert (a.assignment == b.assignment).all()
    assert not (a.assignment == c.assignment).all()
    test_counts = np.bincount(src.labels[a.indices("test")], minlength=10)
    # 20% of ~180 per class: every class within one of 36
    assert test_counts.min() >= 35 and test_counts.max() <= 37
    assert a.counts()["test"] == round(0.2 * 1797)


def test_split_saved_and_reloaded(tmp_path, image_folder):
    data = load_data(f"folder:{image_folder}", val_split=0.25, test_split=0.25)
    data.split.save(tmp_path / "split.csv", data.source)
    text = (tmp_path / "split.csv").read_text().splitlines()
    assert text[0] == "index,path,label,split"
    again = Split.load(tmp_path / "split.csv", data.source)
    assert (again.assignment == data.split.assignment).all()


def test_builtin_official_test_set_is_kept(tmp_path):
    src = open_source("builtin:digits")
    src.parts[:100] = "test"
    split = make_split(src, 0.1, 0.5, seed=0)
    assert (split.indices("test") == np.arange(100)).all()
