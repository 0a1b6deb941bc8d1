"""Per-image quality statistics and pixel hashes (mlfix.data.quality), and the extraction pass that records them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw, ImageFilter

from mlfix.data.images import DataRoot
from mlfix.data.quality import QUALITY_STATS, STATS_SIDE, image_statistics, measure_images, pixel_hash
from mlfix.data.scan import scan


def natural_image(seed: int, size: int = 64) -> Image.Image:
    """A smooth random colour field with a few discs and mild noise: an ordinary colour photo."""
    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(40, 220, (4, 4, 3), dtype=np.uint8)).resize(
        (size, size), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(field)
    for _ in range(3):
        x, y = rng.integers(0, size - 16, 2)
        r = int(rng.integers(6, 16))
        draw.ellipse((int(x), int(y), int(x) + r, int(y) + r), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    pixels = np.asarray(field, dtype=np.int16) + rng.integers(-12, 12, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def planted_images(normal: int = 20) -> dict[str, Image.Image]:
    """``normal`` ordinary images n00.. and one planted defect per quality check."""
    images = {f"n{i:02d}": natural_image(i) for i in range(normal)}
    images["black"] = Image.new("RGB", (64, 64))
    images["overexposed"] = Image.fromarray(
        np.clip(np.asarray(natural_image(50), dtype=np.int16) + 200, 0, 255).astype(np.uint8))
    images["blurred"] = natural_image(3).filter(ImageFilter.GaussianBlur(2))
    images["stretched"] = natural_image(51).resize((200, 20))
    images["tiny"] = natural_image(52).resize((16, 16))
    images["gray"] = natural_image(53).convert("L").convert("RGB")
    images["flat"] = Image.new("RGB", (64, 64), (90, 140, 200))
    return images


def stats_of(image: Image.Image) -> dict[str, float]:
    return dict(zip(QUALITY_STATS, image_statistics(image).tolist()))


def test_statistics_of_black_white_and_gray_images():
    black, white = stats_of(Image.new("RGB", (32, 32))), stats_of(Image.new("RGB", (32, 32), (255, 255, 255)))
    assert (black["brightness"], black["dark_fraction"], black["bright_fraction"]) == (0.0, 1.0, 0.0)
    assert (white["brightness"], white["dark_fraction"], white["bright_fraction"]) == pytest.approx((1.0, 0.0, 1.0))
    assert black["contrast"] == black["sharpness"] == black["entropy"] == 0.0
    gray = stats_of(natural_image(1).convert("L"))  # any mode is read as RGB
    colour = stats_of(natural_image(1))
    assert gray["channel_spread"] == gray["colourfulness"] == 0.0
    assert colour["channel_spread"] > 0.1 and colour["colourfulness"] > 0.1


def test_entropy_of_a_two_tone_image_is_one_bit_and_blur_lowers_sharpness():
    half = np.zeros((32, 32, 3), dtype=np.uint8)
    half[:, 16:] = 255
    assert stats_of(Image.fromarray(half))["entropy"] == pytest.approx(1.0)
    sharp = natural_image(7)
    assert stats_of(sharp.filter(ImageFilter.GaussianBlur(2)))["sharpness"] < stats_of(sharp)["sharpness"] / 20


def test_large_images_are_measured_on_a_small_copy():
    big = natural_image(3, size=STATS_SIDE * 8)
    small = big.reduce(8)  # a box filter to STATS_SIDE px
    np.testing.assert_allclose(image_statistics(big), image_statistics(small), rtol=1e-5)
    assert image_statistics(big).dtype == np.float32 and image_statistics(big).shape == (len(QUALITY_STATS),)


def test_pixel_hash_finds_exact_copies_whatever_the_file():
    image = natural_image(5)
    assert pixel_hash(image) == pixel_hash(image.copy())
    changed = np.asarray(image).copy()
    changed[0, 0, 0] ^= 1
    assert pixel_hash(Image.fromarray(changed)) != pixel_hash(image)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_pixel_hash_is_a_nonzero_int64(width, height, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    value = pixel_hash(Image.fromarray(pixels))
    assert isinstance(value, int) and value != 0 and -2**63 <= value < 2**63


def write_set(folder, images: dict[str, Image.Image]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        image.save(folder / f"{name}.png")


def test_measure_images_gives_nan_and_hash_zero_for_an_unreadable_image(tmp_path):
    images = {"a": natural_image(1), "b": natural_image(2)}
    write_set(tmp_path / "images", images)
    images["b"].save(tmp_path / "images" / "b_copy.bmp")  # the same pixels in another format
    (tmp_path / "images" / "broken.png").write_bytes((tmp_path / "images" / "a.png").read_bytes()[:80])
    samples = scan(tmp_path / "images").samples
    calls = []
    table = measure_images(DataRoot(tmp_path / "images"), samples, 64, progress=lambda d, t: calls.append((d, t)))
    table.index = samples["path"].to_numpy()
    assert list(table.columns) == ["content_hash", *QUALITY_STATS] and len(table) == len(samples) == 4
    assert table["content_hash"].dtype == np.int64 and (table[list(QUALITY_STATS)].dtypes == np.float32).all()
    assert table.loc["broken.png", "content_hash"] == 0 and table.loc["broken.png", list(QUALITY_STATS)].isna().all()
    assert table.loc["b.png", "content_hash"] == table.loc["b_copy.bmp", "content_hash"] != 0
    assert table.loc["a.png", "content_hash"] not in (0, table.loc["b.png", "content_hash"])
    np.testing.assert_allclose(table.loc["a.png", list(QUALITY_STATS)].to_numpy(dtype=np.float32),
                               image_statistics(images["a"]))
    assert calls[-1] == (4, 4)


def test_sample_images_keeps_its_three_item_contract_and_adds_statistics_on_request(tmp_path, monkeypatch):
    from mlfix.pipeline import features
    from mlfix.pipeline.features import SampleImages

    write_set(tmp_path / "images", {"a": natural_image(1)})
    (tmp_path / "images" / "broken.png").write_bytes((tmp_path / "images" / "a.png").read_bytes()[:80])
    samples = scan(tmp_path / "images").samples
    root = DataRoot(tmp_path / "images")
    plain = SampleImages(root, samples, 64)
    with monkeypatch.context() as patch:  # without statistics, none are computed (the cost benchmark's baseline)
        patch.setattr(features, "image_statistics", None)
        patch.setattr(features, "pixel_hash", None)
        assert [len(plain[i]) for i in range(2)] == [3, 3]
    measured = SampleImages(root, samples, 64, statistics=True)
    by_path = {samples["path"].iloc[i]: measured[i] for i in range(2)}
    _, tensor, error, stats, digest = by_path["a.png"]
    assert error == "" and tuple(tensor.shape) == (3, 64, 64) and digest == pixel_hash(natural_image(1))
    np.testing.assert_array_equal(stats, image_statistics(natural_image(1)))
    _, _, error, stats, digest = by_path["broken.png"]
    assert error and np.isnan(stats).all() and digest == 0


def test_extract_records_the_statistics_of_the_images_it_decodes(tmp_path):
    import torch

    from mlfix.pipeline.backbone import create_backbone
    from mlfix.pipeline.features import extract

    images = {f"i{k}": natural_image(k, size=48) for k in range(5)}
    write_set(tmp_path / "images", images)
    (tmp_path / "images" / "broken.png").write_bytes((tmp_path / "images" / "i0.png").read_bytes()[:80])
    samples = scan(tmp_path / "images").samples
    root = DataRoot(tmp_path / "images")
    torch.manual_seed(0)
    backbone = create_backbone("resnet18", "random").eval()
    result = extract(root, samples, backbone, 64, batch_size=4, workers=0, device="cpu")
    expected = measure_images(root, samples, 64)
    np.testing.assert_array_equal(result.content_hash, expected["content_hash"].to_numpy())
    np.testing.assert_array_equal(result.stats, expected[list(QUALITY_STATS)].to_numpy())
    assert (result.content_hash == 0).sum() == 1 and np.isnan(result.stats[~result.ok]).all()
    bare = extract(root, samples, backbone, 64, batch_size=4, workers=0, device="cpu", statistics=False)
    assert bare.stats is None and bare.content_hash is None
    np.testing.assert_array_equal(bare.pooled, result.pooled)


def test_measure_images_of_an_empty_table(tmp_path):
    (tmp_path / "images").mkdir()
    empty = pd.DataFrame(columns=["path", "box_x", "box_y", "box_w", "box_h"])
    table = measure_images(DataRoot(tmp_path / "images"), empty, 64)
    assert len(table) == 0 and list(table.columns) == ["content_hash", *QUALITY_STATS]
