"""The sample table from folders, CSVs, zips and COCO files, including the catalogue of bad input."""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from mlfix.data.images import DataRoot, load_image
from mlfix.data.scan import scan
from tests.conftest import shape_image, write_image_folder


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header declares a huge size (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    ihdr = struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    data = zlib.compress(b"\x00" * 16)
    idat = struct.pack(">I", len(data)) + b"IDAT" + data + struct.pack(">I", zlib.crc32(b"IDAT" + data))
    iend = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + ihdr + idat + iend


@pytest.fixture
def bad_folder(tmp_path: Path) -> Path:
    """An ImageFolder with one good image per class and the whole catalogue of bad files."""
    root = write_image_folder(tmp_path / "data", per_class=3, classes=("red", "blue"))
    good = jpeg_bytes(shape_image((200, 30, 30), seed=1, size=64))
    (root / "red" / "corrupt.png").write_bytes(b"this is not an image at all" * 10)
    (root / "red" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "red" / "empty.png").write_bytes(b"")
    Image.new("RGB", (1, 1)).save(root / "red" / "tiny.png")
    (root / "blue" / "bomb.png").write_bytes(bomb_png())
    shape_image((30, 30, 200), seed=5).save(root / "blue" / "ünïcødé 图像.png")
    return root


def test_image_folder_labels_come_from_parent_folders(tiny_image_folder):
    result = scan(tiny_image_folder)
    assert len(result.samples) == 40
    assert result.labels == ["blue", "green", "red", "yellow"]
    assert (result.samples["sample_id"] == result.samples["path"]).all()
    assert result.problems.empty


def test_flat_folder_gives_unlabeled_samples(tmp_path):
    for i in range(3):
        shape_image((10, 200, 10), seed=i).save(tmp_path / f"{i}.png")
    result = scan(tmp_path)
    assert len(result.samples) == 3 and result.samples["label"].isna().all()


def test_bad_files_are_skipped_with_reasons_and_the_scan_completes(bad_folder):
    result = scan(bad_folder)
    reasons = dict(zip(result.problems["path"], result.problems["reason"]))
    assert "not an image" in reasons["red/corrupt.png"]
    assert "0 bytes" in reasons["red/empty.png"]
    assert "too small" in reasons["red/tiny.png"]
    assert "too large" in reasons["blue/bomb.png"]
    # the header of a truncated JPEG is fine: it is caught when decoded (see the indexing test)
    assert "red/truncated.jpg" in set(result.samples["path"])
    assert "blue/ünïcødé 图像.png" in set(result.samples["path"])  # unicode names are fine
    assert len(result.samples) == 3 + 3 + 2



def test_csv_catalogue_missing_empty_unknown_and_escaping_rows(tiny_image_folder, tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\n"
                   "red/000.png,red\n"
                   "red/001.png,\n"                      # empty label: unlabeled sample
                   ",blue\n"                             # empty path
                   "red/404.png,red\n"                   # missing file
                   "../outside.png,red\n"                # leaves the data root
                   "/etc/passwd,red\n"                   # absolute path
                   "blue/000.png,blue,extra,fields\n"    # unknown columns
                   "blue/001.png,blue\n")
    (tmp_path / "outside.png").write_bytes(png_bytes(shape_image((1, 2, 3), seed=0)))
    result = scan(tiny_image_folder, labels=csv)
    assert list(result.samples["path"]) == ["blue/001.png", "red/000.png", "red/001.png"] or \
        sorted(result.samples["path"]) == ["blue/001.png", "red/000.png", "red/001.png"]
    labels = dict(zip(result.samples["path"], result.samples["label"]))
    assert pd.isna(labels["red/001.png"])
    reasons = " | ".join(result.problems["reason"])
    assert "empty path" in reasons
    assert "file not found: red/404.png" in reasons
    assert "leaves the data root" in reasons
    assert "absolute path" in reasons
    assert "fields" in reasons
    assert len(result.problems) == 5



def test_malformed_csv_gives_a_clear_error(tiny_image_folder, tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("file,class\nred/000.png,red\n")
    with pytest.raises(ValueError, match="needs a 'path' column"):
        scan(tiny_image_folder, labels=csv)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00\x00garbage")
    with pytest.raises(ValueError, match="cannot parse labels CSV"):
        scan(tiny_image_folder, labels=binary)


def test_zip_source_reads_members_and_refuses_escapes(tmp_path):
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("cats/a.png", png_bytes(shape_image((200, 0, 0), seed=1)))
        z.writestr("dogs/b.png", png_bytes(shape_image((0, 0, 200), seed=2)))
        z.writestr("../evil.png", png_bytes(shape_image((0, 0, 0), seed=3)))
        z.writestr("__MACOSX/._a.png", b"junk")
    result = scan(archive)
    assert sorted(result.samples["path"]) == ["cats/a.png", "dogs/b.png"]
    assert result.labels == ["cats", "dogs"]
    assert load_image(DataRoot(archive), result.samples.iloc[0]).size == (48, 48)


def test_coco_boxes_become_labelled_crops_with_padding(tmp_path):
    folder = tmp_path / "coco"
    folder.mkdir()
    Image.new("RGB", (100, 80), (255, 255, 255)).save(folder / "scene.png")
    coco = {"images": [{"id": 1, "file_name": "scene.png", "width": 100, "height": 80}],
            "categories": [{"id": 7, "name": "cat"}, {"id": 8, "name": "dog"}],
            "annotations": [{"id": 11, "image_id": 1, "category_id": 7, "bbox": [10, 10, 20, 20]},
                            {"id": 12, "image_id": 1, "category_id": 8, "bbox": [90, 70, 20, 20]},
                            {"id": 13, "image_id": 99, "category_id": 8, "bbox": [0, 0, 5, 5]}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    result = scan(folder, coco=tmp_path / "coco.json", padding=0.5)
    samples = result.samples.set_index("sample_id")
    assert list(samples.index) == ["scene.png#11", "scene.png#12"]
    assert samples.loc["scene.png#11", "label"] == "cat"
    assert tuple(samples.loc["scene.png#11", ["box_x", "box_y", "box_w", "box_h"]]) == (0, 0, 40, 40)
    # 90..110 padded to 80..120, clipped at the image border (100 x 80)
    assert tuple(samples.loc["scene.png#12", ["box_x", "box_y", "box_w", "box_h"]]) == (80, 60, 20, 20)
    crop = load_image(DataRoot(folder), samples.reset_index().iloc[0])
    assert crop.size == (40, 40)
    assert "without a known image" in result.problems["reason"].iloc[0]


def test_invalid_coco_file_is_a_clear_error(tmp_path):
    (tmp_path / "coco.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid COCO file"):
        scan(tmp_path, coco=tmp_path / "coco.json")
