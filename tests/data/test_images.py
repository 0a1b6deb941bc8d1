"""Image IO: reading stays inside the data root, decoding failures name their reason, every image
mode becomes 8-bit RGB."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mlfix.data.images import DataRoot, decode_image, load_image, safe_relative_path, to_rgb
from mlfix.errors import ImageError, UnsafePathError
from tests.conftest import shape_image
from tests.data.test_scan import bad_folder  # noqa: F401  (fixture: an ImageFolder with the catalogue of bad files)


def test_truncated_jpeg_fails_to_decode_with_a_reason(bad_folder):
    root = DataRoot(bad_folder)
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(root, {"path": "red/truncated.jpg"})


def test_nothing_is_read_outside_the_root_even_through_a_link(tiny_image_folder, tmp_path):
    secret = tmp_path / "secret.png"
    shape_image((0, 0, 0), seed=3).save(secret)
    (tiny_image_folder / "red" / "link.png").symlink_to(secret)
    root = DataRoot(tiny_image_folder)
    with pytest.raises(UnsafePathError):
        root.read_bytes("red/link.png")
    with pytest.raises(UnsafePathError):
        root.read_bytes("../secret.png")


@pytest.mark.parametrize("path", ["a/../../b.png", "..", "/abs.png", "C:/x.png", "", "./."])
def test_safe_relative_path_refuses_escapes(path):
    with pytest.raises(UnsafePathError):
        safe_relative_path(path)


@pytest.mark.parametrize("mode", ["P", "L", "LA", "RGBA", "CMYK", "I;16", "I", "F", "1"])
def test_every_mode_becomes_8_bit_rgb(mode):
    base = shape_image((120, 60, 200), seed=4)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 200)
        assert image.mode == "I;16"
    else:
        image = base.convert(mode)
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == base.size
    assert np.asarray(rgb).std() > 0  # content survives the conversion


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    assert to_rgb(image).getpixel((0, 0)) == (255, 255, 255)


def test_16_bit_png_round_trip_decodes(tmp_path):
    pixels = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)
    path = tmp_path / "deep.png"
    Image.fromarray(pixels).save(path)
    image = decode_image(path.read_bytes())
    assert image.mode == "RGB" and np.asarray(image).max() == 255
