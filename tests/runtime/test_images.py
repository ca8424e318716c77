"""Images decoded and resized without TensorFlow are the training pipeline's pixels:
``cnnlab.runtime.images`` against ``decode_file`` + ``make_resizer`` + ``to_uint8``."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cnnlab.runtime.images import ImageRejected, decode_image, load_image


def pipeline_pixels(path, size, channels, resize):
    import tensorflow as tf

    from cnnlab.data.pipeline import decode_file, make_resizer, to_uint8

    image = decode_file(tf.constant(str(path)), channels)
    return to_uint8(make_resizer(size, resize)(image)).numpy()


def photo_like(h=61, w=83, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 3.1) % 256, (y * 2.3) % 256, ((x + y) * 1.7) % 256], -1)
    return np.clip(img + rng.normal(0, 18, img.shape), 0, 255).astype(np.uint8)


FILES = {
    "jpeg-420": ("JPEG", "RGB", {"quality": 80, "subsampling": 2}),
    "jpeg-444": ("JPEG", "RGB", {"quality": 95, "subsampling": 0}),
    "jpeg-gray": ("JPEG", "L", {}),
    "png-rgb": ("PNG", "RGB", {}),
    "png-rgba": ("PNG", "RGBA", {}),
    "png-palette": ("PNG", "P", {}),
    "bmp": ("BMP", "RGB", {}),
    "webp-lossless": ("WEBP", "RGB", {"lossless": True}),
}


@pytest.mark.parametrize("name", list(FILES))
@pytest.mark.parametrize(
    "size,resize",
    [((16, 16), "stretch"), ((24, 40), "stretch"), ((20, 20), "crop"), ((20, 12), "pad")],
)
def test_pixels_match_the_training_pipeline(name, size, resize, tmp_path):
    fmt, mode, kwargs = FILES[name]
    path = tmp_path / f"image.{fmt.lower()}"
    Image.fromarray(photo_like()).convert(mode).save(path, fmt, **kwargs)
    expected = pipeline_pixels(path, size, 3, resize)
    got = load_image(path.read_bytes(), size, 3, resize)
    assert got.shape == expected.shape and got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


def test_gray_models_get_the_pipelines_gray_pixels(tmp_path):
    """A 1-channel model: gray files exactly; colour PNGs within one level (libpng's
    conversion is approximated)."""
    path = tmp_path / "gray.png"
    Image.fromarray(photo_like()).convert("L").save(path)
    np.testing.assert_array_equal(
        load_image(path.read_bytes(), (8, 8), 1), pipeline_pixels(path, (8, 8), 1, "stretch")
    )
    path = tmp_path / "colour.png"
    Image.fromarray(photo_like()).save(path)
    diff = np.abs(
        decode_image(path.read_bytes(), 1).astype(int)
        - pipeline_pixels(path, (61, 83), 1, "stretch").astype(int)
    )
    assert diff.max() <= 1 and (diff > 0).mean() < 0.02


def test_exif_orientation_is_ignored_as_in_training(tmp_path):
    """TensorFlow's decoder does not rotate by EXIF, so neither may the server."""
    img = Image.fromarray(photo_like(20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    img.save(path, "JPEG", exif=exif.tobytes())
    got = decode_image(path.read_bytes(), 3)
    assert got.shape == (20, 30, 3)
    np.testing.assert_array_equal(got, pipeline_pixels(path, (20, 30), 3, "stretch"))


@pytest.mark.parametrize(
    "data,status,error",
    [
        (b"", 400, "empty body"),
        (b"%PDF-1.4 not an image", 415, "unsupported image format"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 30, 415, "unsupported image format"),  # no IHDR
        (b"BM" + b"\0" * 60, 400, "corrupt image"),  # a BMP header with nothing in it
    ],
)
def test_rejections_carry_their_http_status(data, status, error):
    with pytest.raises(ImageRejected) as info:
        decode_image(data, 3)
    assert (info.value.status, info.value.error) == (status, error)


def test_the_pixel_limit_is_read_from_the_header():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(buf, "PNG")
    with pytest.raises(ImageRejected, match=r"100x100 = 10,000 pixels; the limit is 9,999"):
        decode_image(buf.getvalue(), 3, max_pixels=9_999)
    assert decode_image(buf.getvalue(), 3, max_pixels=10_000).shape == (100, 100, 3)
