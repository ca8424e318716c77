"""Bad files are found before training and named; odd-but-valid files load."""

import numpy as np
import pytest
from PIL import Image

from cnnlab.data import load_data
from cnnlab.data.scan import scan_image
from cnnlab.errors import BadImagesError


@pytest.fixture
def messy_folder(make_folder):
    """The issue's eight files in one class (three bad) beside a clean class."""
    root = make_folder("messy", classes=("clean", "messy"), per_class=6)
    d = root / "messy"
    for f in d.iterdir():
        f.unlink()
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    rgb.save(d / "ok_base.jpg")
    data = (d / "ok_base.jpg").read_bytes()
    (d / "ok_base.jpg").unlink()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "empty.jpg").write_bytes(b"")
    (d / "notes.jpg").write_text("this is not an image")
    rgb.save(d / "png_named.jpg", format="PNG")
    rgb.convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 65535, (16, 16), dtype=np.uint16)).save(d / "deep16.png")
    rgb.convert("RGBA").save(d / "rgba.png")
    rgb.convert("L").save(d / "gray.jpg")
    return root


def test_scan_names_exactly_the_three_bad_files(messy_folder):
    with pytest.raises(BadImagesError) as e:
        load_data(f"folder:{messy_folder}")
    bad = sorted(b.path.rsplit("/", 1)[-1] for b in e.value.bad)
    assert bad == ["empty.jpg", "notes.jpg", "truncated.jpg"]
    msg = str(e.value)
    assert "3 file(s)" in msg and "empty file (0 bytes)" in msg
    assert "not an image" in msg and "truncated image data" in msg
    assert "--skip-bad-images" in msg


def test_skip_bad_images_keeps_the_five_odd_but_valid_files(messy_folder):
    data = load_data(f"folder:{messy_folder}", skip_bad_images=True, val_split=0, test_split=0)
    assert len(data.bad_files) == 3
    kept = data.examples("train")["paths"]
    names = sorted(p.rsplit("/", 1)[-1] for p in kept if "/messy/messy/" in p)
    assert names == ["cmyk.jpg", "deep16.png", "gray.jpg", "png_named.jpg", "rgba.png"]
    x, y = next(iter(data.dataset("train", training=False).unbatch().batch(64)))
    assert x.shape == (11, 16, 16, 3)


def test_extension_mismatch_is_detected_but_loads(messy_folder):
    info = scan_image(str(messy_folder / "messy" / "png_named.jpg"))
    assert info.ok and info.format == "PNG" and info.extension_mismatch


def test_unsupported_format_is_bad(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.tiff")
    info = scan_image(str(tmp_path / "x.tiff"))
    assert not info.ok and "unsupported format TIFF" in info.problem
