"""The dataset check: counts, bad files, EXIF rotation, duplicates and train/test leakage."""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.data.inspect import (
    _thumbnail,
    check_before_training,
    default_output_dir,
    inspect_data,
    phash,
)


def photo(rng: np.random.Generator, size: int = 48) -> Image.Image:
    """A distinct picture: random plane waves and blobs (unrelated ones are ~30 hash bits apart)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.full((size, size, 3), 128.0)
    for _ in range(4):
        f, phase = rng.uniform(1, 5, 2), rng.uniform(0, 2 * np.pi)
        img += np.sin(2 * np.pi * (f[0] * yy + f[1] * xx) + phase)[..., None] * rng.uniform(
            20, 60, 3
        )
    for _ in range(3):
        (cy, cx), r = rng.random(2), rng.uniform(0.05, 0.2)
        img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None] * rng.uniform(
            -120, 120, 3
        )
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


@pytest.fixture
def leaky(tmp_path) -> tuple[Path, set[tuple[str, str]]]:
    """train/ and test/ of distinct pictures; some test images are copies of training ones."""
    rng = np.random.default_rng(0)
    root = tmp_path / "leaky"
    for split, n in (("train", 12), ("test", 4)):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                photo(rng).save(root / split / c / f"{c}{i:02d}.png")
    tr, te = root / "train", root / "test"
    shutil.copy(tr / "cat/cat00.png", te / "cat/copy.png")  # byte-identical
    Image.open(tr / "cat/cat01.png").resize((96, 96), Image.Resampling.BICUBIC).save(
        te / "cat/bigger.png"
    )
    Image.open(tr / "dog/dog02.png").resize((24, 24), Image.Resampling.LANCZOS).save(
        te / "dog/smaller.png"
    )
    Image.open(tr / "dog/dog03.png").save(te / "dog/reencoded.jpg", quality=50)
    buf = io.BytesIO()  # shrunk and re-encoded, then stored as PNG
    Image.open(tr / "cat/cat04.png").resize((30, 30)).save(buf, "JPEG", quality=40)
    Image.open(buf).save(te / "cat/small_jpeg.png")
    shutil.copy(tr / "dog/dog05.png", te / "cat/mislabelled.png")  # a dog filed as a cat
    expected = {
        ("cat/cat00.png", "cat/copy.png"),
        ("cat/cat01.png", "cat/bigger.png"),
        ("dog/dog02.png", "dog/smaller.png"),
        ("dog/dog03.png", "dog/reencoded.jpg"),
        ("cat/cat04.png", "cat/small_jpeg.png"),
        ("dog/dog05.png", "cat/mislabelled.png"),
    }
    return root, expected


def _rel(path: str, root: Path) -> str:
    return Path(path).relative_to(root).as_posix()


def test_leakage_named_file_by_file(leaky):
    root, expected = leaky
    report = inspect_data(f"folder:{root}")
    found = {(_rel(p["a"], root / "train"), _rel(p["b"], root / "test")) for p in report.leakage}
    assert found == expected  # every copy, and no unrelated pair
    assert all(p["split_a"] == "train" and p["split_b"] == "test" for p in report.leakage)
    kinds = {_rel(p["b"], root / "test"): p["exact"] for p in report.leakage}
    assert kinds["cat/copy.png"] and kinds["cat/mislabelled.png"] and not kinds["cat/bigger.png"]
    assert [(_rel(p["a"], root), p["label_b"]) for p in report.label_conflicts] == [
        ("train/dog/dog05.png", "cat")
    ]
    assert report.counts == {"train": {"cat": 12, "dog": 12}, "test": {"cat": 8, "dog": 6}}
    text = report.format_text()
    assert "leakage across splits: 6 pair(s)" in text
    assert f"train {root / 'train/cat/cat01.png'}  ==  test {root / 'test/cat/bigger.png'}" in text
    assert "copies with different labels: 1" in text


def test_results_written_and_never_overwritten(leaky, tmp_path, monkeypatch):
    root, _ = leaky
    report = inspect_data(f"folder:{root}")
    monkeypatch.chdir(tmp_path)
    out = default_output_dir(f"folder:{root}")
    assert out == Path("inspect-leaky")
    written = report.write(out)
    assert {p.name for p in written.values()} == {
        "inspect.json",
        "inspect.html",
        "duplicates.csv",
        "leakage.csv",
    }
    assert default_output_dir(f"folder:{root}") == Path("inspect-leaky-2")
    data = json.loads(written["json"].read_text())
    assert len(data["leakage"]) == 6 and data["problems"]
    assert len(written["leakage"].read_text().strip().splitlines()) == 1 + 6
    html = written["html"].read_text()
    assert 'id="leakage"' in html and "bigger.png" in html and "<script" not in html


def test_file_problems(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "odd"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    for i in range(6):
        photo(rng).save(root / "a" / f"{i}.png")
    photo(rng).save(root / "b" / "0.png")
    photo(rng).save(root / "b" / "png_named.jpg", format="PNG")  # extension lies
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° to view"
    photo(rng).convert("RGB").save(root / "b" / "sideways.jpg", exif=exif)
    buf = io.BytesIO()
    photo(rng).convert("RGB").save(buf, "JPEG")
    (root / "b" / "truncated.jpg").write_bytes(buf.getvalue()[:300])
    photo(rng).convert("L").save(root / "b" / "gray.png")
    shutil.copy(root / "a" / "0.png", root / "a" / "again.png")  # duplicate within the split
    report = inspect_data(f"folder:{root}")
    assert report.splits == ["all"]
    assert report.counts["all"] == {"a": 7, "b": 5}
    assert report.imbalance == pytest.approx(7 / 5)
    assert [Path(u["path"]).name for u in report.undecodable] == ["truncated.jpg"]
    assert report.undecodable[0]["problem"] == "cannot be decoded: truncated image data"
    assert [(Path(u["path"]).name, u["format"]) for u in report.extension_mismatch] == [
        ("png_named.jpg", "PNG")
    ]
    assert [(Path(u["path"]).name, u["orientation"]) for u in report.exif_rotated] == [
        ("sideways.jpg", 6)
    ]
    assert report.modes == {"RGB": 10, "L": 1}  # the truncated file is not counted
    assert [sorted(Path(f).name for f in g["files"]) for g in report.exact_groups] == [
        ["0.png", "again.png"]
    ]
    assert report.leakage == [] and report.within_split_duplicates() == 1
    text = report.format_text()
    assert "!!  undecodable files: 1" in text and "png_named.jpg: really PNG" in text
    assert "no split yet" in text


def test_phash_is_robust_to_resizing_and_reencoding():
    rng = np.random.default_rng(2)
    a, b = photo(rng), photo(rng)
    buf = io.BytesIO()
    a.resize((20, 20)).convert("RGB").save(buf, "JPEG", quality=40)
    h = phash(np.stack([_thumbnail(x) for x in (a, a.resize((100, 100)), Image.open(buf), b)]))
    dist = np.bitwise_count(h[0] ^ h)
    assert dist[1] <= 2 and dist[2] <= 4 and dist[3] >= 16


def test_in_memory_source():
    report = inspect_data("builtin:digits", near_duplicates=False)
    assert report.num_images == 1797 and report.splits == ["all"]
    assert sum(report.counts["all"].values()) == 1797
    assert report.sizes["most_common"][0] == ("8×8", 1797)


def test_check_before_training(leaky, tmp_path, caplog):
    from cnnlab.data import load_data

    root, expected = leaky
    bundle = load_data(f"folder:{root}", val_split=0.2, seed=0)
    with caplog.at_level(logging.WARNING, logger="cnnlab"):
        report = check_before_training(bundle, tmp_path)
    assert report is not None and not report.settings["full_decode"]
    assert set(report.splits) == {"train", "val", "test"}
    # Exactly the six planted copies, each against the split its original fell in.
    drawn = dict(zip((str(p) for p in bundle.source.paths), bundle.split.assignment))
    found = {(_rel(p["a"], root / "train"), _rel(p["b"], root / "test")) for p in report.leakage}
    assert found == expected and len(report.leakage) == 6
    assert {(p["split_a"], p["split_b"]) for p in report.leakage} <= {
        ("train", "test"),
        ("val", "test"),
    }
    assert all(p["split_a"] == drawn[p["a"]] for p in report.leakage)
    assert "duplicate pair(s) across splits (leakage)" in caplog.text
    assert (tmp_path / "inspect.json").is_file() and (tmp_path / "leakage.csv").is_file()
    assert check_before_training(load_data("builtin:digits")) is None  # in memory: nothing to check


def test_check_after_the_scan_finds_what_a_fast_check_alone_finds(leaky, tmp_path):
    """Before training the check takes the thumbnails of the scan's full decode; a fast check
    alone makes them from a reduced-scale JPEG decode. They differ by about a grey level:
    the same duplicates, near pairs and leakage either way."""
    from cnnlab.data import load_data
    from cnnlab.data.inspect.files import examine_file

    root, expected = leaky
    jpegs = tmp_path / "jpegs"  # 192 px JPEGs: the fast decode reads them at half scale
    for png in sorted(root.rglob("*.*")):
        out = jpegs / png.relative_to(root).with_suffix(".jpg")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(png).convert("RGB").resize((192, 192), Image.Resampling.BICUBIC).save(out)
    full, fast = (examine_file(str(jpegs / "train/cat/cat07.jpg"), f)[1] for f in (True, False))
    difference = np.abs(full.astype(int) - fast.astype(int))
    assert 0 < difference.mean() < 3 and difference.max() <= 8  # grey levels of 255

    bundle = load_data(f"folder:{jpegs}", val_split=0.2, seed=0)
    after_scan = check_before_training(bundle)
    alone = inspect_data(
        bundle.source, split=bundle.split, full_decode=False, cache=False, quiet=True
    )

    def found(report) -> tuple:
        return (
            sorted((p["a"], p["b"], p["exact"]) for p in report.leakage),
            sorted((p["a"], p["b"]) for p in report.near_pairs),
            sorted(sorted(g["files"]) for g in report.exact_groups),
            report.label_conflicts,
        )

    assert found(after_scan) == found(alone)
    leaked = {(_rel(p["a"], jpegs / "train"), _rel(p["b"], jpegs / "test")) for p in alone.leakage}
    assert leaked == {(a[:-4] + ".jpg", b[:-4] + ".jpg") for a, b in expected}


# --------------------------------------------------------------------------- near-duplicate search
def planted_hashes(n: int, max_distance: int, seed: int) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """Random 63-bit hashes with planted near copies (0 to d + 2 bits away, some sharing one
    value many times) and the pairs within ``max_distance`` that the planting guarantees."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 1 << 63, n, dtype=np.uint64)
    planted = set()
    for _ in range(n // 10):
        src, dst = rng.choice(n, 2, replace=False)
        flips = rng.choice(63, rng.integers(0, max_distance + 3), replace=False)
        h[dst] = h[src] ^ np.uint64(sum(1 << int(b) for b in flips))
        planted.add((int(min(src, dst)), int(max(src, dst)), len(flips)))
    h[rng.choice(n, 12, replace=False)] = h[0]  # a blank image and its eleven twins
    return h, planted


@pytest.mark.parametrize("max_distance", [0, 3, 10, 14])
def test_indexed_search_finds_exactly_the_exhaustive_pairs(max_distance):
    from cnnlab.data.inspect.hamming import MultiIndex, _probes, chunk_plan, hamming_pairs

    hashes, planted = planted_hashes(3000, max_distance, seed=max_distance)
    ref_i, ref_j, ref_d = hamming_pairs(hashes, max_distance, method="exhaustive")
    reference = set(zip(ref_i.tolist(), ref_j.tolist(), ref_d.tolist()))
    # The reference itself finds every planted copy that stayed within reach.
    surviving = {
        (i, j, d)
        for i, j, d in planted
        if int(np.bitwise_count(hashes[i] ^ hashes[j])) == d <= max_distance
    }
    assert surviving and surviving <= reference
    assert len(reference) >= 66  # the twelve identical hashes alone give 66 pairs
    assert all(i < j for i, j, _ in reference)
    for chunks in sorted({2, 3, 4, 6, max(2, max_distance + 1)}):
        if sum(_probes(b, r) for _, b, r in chunk_plan(max_distance, chunks)) > 5000:
            continue  # feasible but needlessly slow (thousands of probes per query)
        index = MultiIndex(hashes, max_distance, chunks=chunks)
        i, j, d = index.search(0, len(hashes))
        assert (i.tolist(), j.tolist(), d.tolist()) == (
            ref_i.tolist(),
            ref_j.tolist(),
            ref_d.tolist(),
        ), f"{chunks} chunks"
    i, j, d = hamming_pairs(hashes, max_distance, method="index")
    assert np.array_equal(i, ref_i) and np.array_equal(j, ref_j) and np.array_equal(d, ref_d)


def test_indexed_search_in_small_pieces_and_blocks(monkeypatch):
    """Bounded memory: candidates expanded a few at a time, queries block by block."""
    from cnnlab.data.inspect import hamming

    hashes, _ = planted_hashes(2000, 10, seed=7)
    ref = hamming.hamming_pairs(hashes, 10, method="exhaustive")
    monkeypatch.setattr(hamming, "_MAX_CANDIDATES", 7)
    index = hamming.MultiIndex(hashes, 10, chunks=4)
    blocks = [index.search(s, min(2000, s + 333)) for s in range(0, 2000, 333)]
    got = [np.concatenate(parts) for parts in zip(*blocks)]
    assert all(np.array_equal(a, b) for a, b in zip(ref, got))


def test_near_duplicate_pairs_same_with_either_search(leaky):
    """The dataset check's near pairs on the leaky folder are the same with both searches."""
    from cnnlab.data.inspect import near_duplicate_pairs
    from cnnlab.data.inspect.files import examine_file

    root, _ = leaky
    paths = sorted(str(p) for p in root.rglob("*.*"))
    thumbs = np.stack([examine_file(p, True)[1] for p in paths])
    hashes = phash(thumbs)
    exhaustive = near_duplicate_pairs(hashes, thumbs, method="exhaustive")
    indexed = near_duplicate_pairs(hashes, thumbs, method="index")
    assert indexed == exhaustive and len(exhaustive[0]) >= 4 and not exhaustive[1]
    capped = near_duplicate_pairs(hashes, thumbs, method="index", max_pairs=2)
    assert capped == (exhaustive[0][:2], True)


def test_search_method_is_checked():
    from cnnlab.data.inspect.hamming import hamming_pairs

    with pytest.raises(ValueError, match="method must be 'auto', 'exhaustive' or 'index', not 'x'"):
        hamming_pairs(np.zeros(3, np.uint64), 2, method="x")


def test_packed_tfrecords_are_checked_like_their_folder(leaky, tmp_path):
    """``inspect_data("tfrecord:DIR")`` reads the packed bytes and finds what the folder has."""
    from cnnlab.data import open_source
    from cnnlab.data.tfrecord import pack

    root, expected = leaky
    pack(f"folder:{root}", tmp_path / "packed", quiet=True, check=False)
    packed = inspect_data(f"tfrecord:{tmp_path / 'packed'}", quiet=True)
    stored = open_source(f"tfrecord:{tmp_path / 'packed'}")
    split_of = dict(zip(stored.records.names, stored.parts))
    assert packed.num_images == 38 and sum(packed.counts["test"].values()) == 14
    found = {(p["a"], p["b"]) for p in packed.leakage}
    # The folder's six planted pairs, named by their path in the pack, wherever the split put them.
    planted = {("train/" + a, "test/" + b) for a, b in expected}
    crossing = {(a, b) for a, b in planted if split_of[a] != split_of[b]}
    assert crossing and {tuple(sorted(pair)) for pair in found} == {
        tuple(sorted(pair)) for pair in crossing
    }
    folder = inspect_data(f"folder:{root}", quiet=True)
    assert packed.undecodable == [] and packed.modes == folder.modes
    assert packed.sizes == folder.sizes and packed.formats == folder.formats
    assert len(packed.exact_groups) == len(folder.exact_groups) == 2  # copy.png, mislabelled.png
