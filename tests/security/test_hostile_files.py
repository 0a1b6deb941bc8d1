"""Hostile input against the scan and the thumbnails: crafted zips, images, CSVs, COCO files and
project folders. Each case asserts the exact outcome: refused with this message, or skipped with
this reason in the problems table (the scan always goes on)."""

from __future__ import annotations

import io
import json
import os
import stat
import struct
import threading
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from mlfix.data.images import DataRoot, decode_image, load_image, read_bounded
from mlfix.data.scan import scan
from mlfix.data.thumbnails import ThumbnailCache, for_project
from mlfix.errors import ImageError
from tests.data.test_scan import bomb_png, png_bytes

LIMIT_BYTES = "MLFIX_MAX_ZIP_MEMBER_BYTES"


def reasons(result) -> dict:
    """``{path or sample_id: reason}`` of a scan's problems table."""
    return {(p if isinstance(p, str) else s): r for p, s, r in
            zip(result.problems["path"], result.problems["sample_id"], result.problems["reason"])}


def a_png(size=(16, 16), colour="teal") -> bytes:
    return png_bytes(Image.new("RGB", size, colour))


def write_zip(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def declare_size(path: Path, name: str, declared: int) -> None:
    """Make the zip's headers declare ``declared`` uncompressed bytes for member ``name`` (a lie)."""
    data = bytearray(path.read_bytes())
    for signature, offset, name_at in ((b"PK\x01\x02", 24, 46), (b"PK\x03\x04", 22, 30)):
        at = data.find(signature)
        while data[at + name_at:at + name_at + len(name)] != name.encode():
            at = data.find(signature, at + 1)
        struct.pack_into("<I", data, at + offset, declared)
    path.write_bytes(bytes(data))


# ----------------------------------------------------------------------------------------- zips


def test_a_zip_bomb_is_refused_unread_and_the_scan_goes_on(tmp_path):
    """The issue's case, smaller: members of zeros that expand ~1000x are problems, never read."""
    archive = write_zip(tmp_path / "bomb.zip", {"a/bomb1.png": bytes(8 * 2**20), "a/bomb2.png": bytes(8 * 2**20),
                                                "a/ok.png": a_png()})
    tracemalloc.start()
    try:
        result = scan(archive)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.samples["path"].tolist() == ["a/ok.png"]
    info = zipfile.ZipFile(archive).getinfo("a/bomb1.png")
    ratio = info.file_size / info.compress_size
    assert reasons(result)["a/bomb1.png"] == (
        f"zip member a/bomb1.png expands {ratio:,.0f} times ({info.compress_size:,} bytes to 8.0 MB), over the "
        "limit of 200 (MLFIX_MAX_ZIP_MEMBER_RATIO): a zip bomb? not read")
    assert peak < 4 * 2**20, f"the scan took {peak / 2**20:.1f} MB: a refused member was read"
    with pytest.raises(ImageError, match="a zip bomb"):
        load_image(DataRoot(archive), {"path": "a/bomb2.png"})


def test_a_member_declaring_more_than_the_limit_is_refused_before_reading(tmp_path):
    archive = write_zip(tmp_path / "big.zip", {"a/big.png": a_png(), "a/ok.png": a_png()})
    declare_size(archive, "a/big.png", 400 * 2**20)
    result = scan(archive)
    assert result.samples["path"].tolist() == ["a/ok.png"]
    assert reasons(result)["a/big.png"] == ("zip member a/big.png declares 400.0 MB, over the limit of 256.0 MB "
                                            "per image (MLFIX_MAX_ZIP_MEMBER_BYTES); not read")


def test_the_member_limit_is_a_setting(tmp_path, monkeypatch):
    archive = write_zip(tmp_path / "a.zip", {"a/x.png": a_png((64, 64))}, zipfile.ZIP_STORED)
    size = zipfile.ZipFile(archive).getinfo("a/x.png").file_size
    monkeypatch.setenv(LIMIT_BYTES, str(size - 1))
    assert reasons(scan(archive))["a/x.png"] == (f"zip member a/x.png declares {size:,} bytes, over the limit of "
                                                 f"{size - 1:,} bytes per image ({LIMIT_BYTES}); not read")
    monkeypatch.setenv(LIMIT_BYTES, str(size))
    assert scan(archive).samples["path"].tolist() == ["a/x.png"]


def test_a_member_that_lies_about_its_size_is_a_problem_not_a_crash(tmp_path):
    bmp = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(bmp, "BMP")
    archive = write_zip(tmp_path / "lie.zip", {"a/x.bmp": bmp.getvalue(), "a/ok.png": a_png()})
    declare_size(archive, "a/x.bmp", 100)  # holds 12 KB: reading stops at 100 bytes, the CRC fails
    result = scan(archive)
    assert result.samples["path"].tolist() == ["a/ok.png"]
    assert reasons(result)["a/x.bmp"] == "cannot read image header: Bad CRC-32 for file 'a/x.bmp'"
    with pytest.raises(ImageError, match=r"^cannot read a/x.bmp: Bad CRC-32 for file 'a/x.bmp'$"):
        load_image(DataRoot(archive), {"path": "a/x.bmp"})


def test_reading_stops_past_the_limit_whatever_was_declared():
    with pytest.raises(ImageError, match=r"^x.png holds more than the limit of 1,000 bytes per image "
                                         rf"\({LIMIT_BYTES}\); reading stopped$"):
        read_bounded(io.BytesIO(bytes(5000)), 1000, "x.png")
    assert read_bounded(io.BytesIO(bytes(1000)), 1000, "x.png") == bytes(1000)


def test_traversal_names_and_link_members_in_a_zip_are_problems(tmp_path):
    archive = write_zip(tmp_path / "evil.zip", {"../evil.png": a_png(), "/abs.png": a_png(),
                                                "a/../../up.png": a_png(), "a/ok.png": a_png()})
    with zipfile.ZipFile(archive, "a") as z:
        link = zipfile.ZipInfo("a/link.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(link, "/etc/passwd")
    result = scan(archive)
    assert result.samples["path"].tolist() == ["a/ok.png"]
    assert reasons(result) == {
        "../evil.png": "path leaves the data root: '../evil.png'",
        "/abs.png": "absolute path is not allowed: '/abs.png'",
        "a/../../up.png": "path leaves the data root: 'a/../../up.png'",
        "a/link.png": "zip member is a symbolic link, not an image: a/link.png"}


# ----------------------------------------------------------------------------------------- images


def test_image_catalogue_in_a_folder(tmp_path):
    root = tmp_path / "data" / "a"
    root.mkdir(parents=True)
    (root / "ok.png").write_bytes(a_png())
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_bytes(b"not an image at all, just text" * 4)
    (root / "huge.png").write_bytes(bomb_png(9400, 9400))  # 86 KB in the issue; a few bytes here
    (root / "cut.png").write_bytes(a_png((64, 64))[:20])  # cut inside the header
    (root / "truncated.png").write_bytes(a_png((64, 64))[:60])  # a header, then too little
    result = scan(root.parent)
    assert result.samples["path"].tolist() == ["a/ok.png", "a/truncated.png"]  # headers only at scan time
    with pytest.raises(ImageError, match=r"^cannot decode image \(corrupt or truncated\): "):
        load_image(DataRoot(root), {"path": "truncated.png"})
    assert reasons(result) == {
        "a/empty.png": "empty file (0 bytes)",
        "a/text.png": "not an image, or an unknown image format",
        "a/huge.png": "image too large to decode: 9400x9400 is 88,360,000 pixels, over the limit of 64,000,000 "
                      "(MLFIX_MAX_IMAGE_PIXELS)",
        "a/cut.png": "cannot read image header: Truncated File Read"}


def test_a_fifo_named_like_an_image_is_skipped_not_waited_for(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "ok.png").write_bytes(a_png())
    os.mkfifo(root / "pipe.png")
    done: list = []
    worker = threading.Thread(target=lambda: done.append(scan(root)), daemon=True)
    worker.start()
    worker.join(timeout=10)
    if not done:  # unblock the reader so that the thread ends, then fail
        with open(root / "pipe.png", "wb"):
            pass
        pytest.fail("the scan waited on a FIFO")
    assert reasons(done[0]) == {"pipe.png": "not a regular file (a device, pipe or socket): pipe.png"}


def test_a_file_over_the_byte_limit_in_a_folder_is_not_read(tmp_path, monkeypatch):
    (tmp_path / "big.png").write_bytes(a_png((64, 64)))
    size = (tmp_path / "big.png").stat().st_size
    monkeypatch.setenv(LIMIT_BYTES, "100")
    assert reasons(scan(tmp_path)) == {"big.png": f"big.png is {size:,} bytes, over the limit of 100 bytes per "
                                                  f"image ({LIMIT_BYTES}); not read"}


def test_the_pixel_limit_is_a_setting_and_no_thumbnail_decodes_past_it(tmp_path, monkeypatch):
    (tmp_path / "a.png").write_bytes(a_png((40, 40)))
    monkeypatch.setenv("MLFIX_MAX_IMAGE_PIXELS", "1599")
    message = "image too large to decode: 40x40 is 1,600 pixels, over the limit of 1,599 (MLFIX_MAX_IMAGE_PIXELS)"
    assert reasons(scan(tmp_path)) == {"a.png": message}
    cache = ThumbnailCache(tmp_path / "thumbs", lambda s: load_image(DataRoot(tmp_path), {"path": s}), 32)
    cache.ensure("a.png")
    assert cache.is_placeholder("a.png") and cache.errors["a.png"] == f"ImageError: {message}"


def test_a_huge_png_makes_a_placeholder_in_the_server_without_decoding(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "huge.png").write_bytes(bomb_png(9400, 9400))

    class Project:  # what for_project needs of a project
        dir = tmp_path / "project"

        def image(self, sample_id, target_size=None):
            return load_image(DataRoot(tmp_path / "images"), {"path": sample_id}, target_size)

    tracemalloc.start()
    try:
        path = for_project(Project(), 64).ensure("huge.png")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert Image.open(path).size == (64, 64) and path.with_suffix(".bad").read_text().startswith(
        "ImageError: image too large to decode: 9400x9400")
    assert peak < 8 * 2**20, f"{peak / 2**20:.0f} MB for one placeholder"


@pytest.mark.parametrize("mode", ["1", "L", "P", "I;16", "I", "F", "CMYK", "LA", "RGBA"])
def test_odd_modes_make_real_thumbnails(tmp_path, mode):
    Image.new(mode, (20, 10)).save(tmp_path / "x.tif")
    cache = ThumbnailCache(tmp_path / "thumbs", lambda s: load_image(DataRoot(tmp_path), {"path": s}), 32)
    assert Image.open(cache.ensure("x.tif")).size == (32, 16) and not cache.is_placeholder("x.tif")


# ----------------------------------------------------------------------------------------- CSVs


def csv_scan(tmp_path: Path, text: str | bytes):
    (tmp_path / "img").mkdir(exist_ok=True)
    for name in ("a.png", "b.png"):
        (tmp_path / "img" / name).write_bytes(a_png())
    path = tmp_path / "labels.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return scan(tmp_path / "img", labels=path)


def test_a_csv_with_a_bom_reads_its_path_column(tmp_path):
    result = csv_scan(tmp_path, "\ufeffpath,label\na.png,cat\n")
    assert result.samples[["path", "label"]].values.tolist() == [["a.png", "cat"]]


def test_a_huge_field_is_a_problem_row_not_a_silent_loss(tmp_path):
    result = csv_scan(tmp_path, "path,label\na.png," + "x" * 200_000 + "\nb.png,dog\n")
    assert result.samples[["path", "label"]].values.tolist() == [["b.png", "dog"]]
    assert result.problems["reason"].tolist() == ["line 2: a field is longer than 131,072 characters"]


def test_an_unclosed_quote_is_a_problem_row(tmp_path):
    result = csv_scan(tmp_path, 'path,label\nb.png,dog\n"a.png,cat\nb.png,dog\n')
    assert result.samples["path"].tolist() == ["b.png"]
    assert result.problems["reason"].tolist() == ["line 4: row has 1 fields, the header has 2; a quote is not closed"]


def test_formula_looking_cells_stay_data(tmp_path):
    result = csv_scan(tmp_path, 'path,label\na.png,"=HYPERLINK(""http://evil.example/"",""x"")"\n=cmd|x!A0,dog\n')
    assert result.samples[["path", "label"]].values.tolist() == [["a.png", '=HYPERLINK("http://evil.example/","x")']]
    assert reasons(result) == {"=cmd|x!A0": "file not found: =cmd|x!A0"}


@pytest.mark.parametrize("content, message", [
    (b"", "cannot parse labels CSV labels.csv: it is empty"),
    (b"\xff\xfe\x00garbage", "cannot parse labels CSV labels.csv: 'utf-8' codec can't decode byte 0xff"),
    (b"file,label\na.png,cat\n", "labels CSV labels.csv needs a 'path' column; it has ['file', 'label']"),
])
def test_a_csv_that_cannot_be_used_is_refused_with_a_message(tmp_path, content, message):
    with pytest.raises(ValueError) as refused:
        csv_scan(tmp_path, content)
    assert str(refused.value).startswith(message)


# ----------------------------------------------------------------------------------------- COCO


def coco_scan(tmp_path: Path, coco) -> object:
    (tmp_path / "img").mkdir(exist_ok=True)
    (tmp_path / "img" / "a.png").write_bytes(a_png((40, 40)))
    path = tmp_path / "coco.json"
    path.write_bytes(coco if isinstance(coco, bytes) else json.dumps(coco).encode())
    return scan(tmp_path / "img", coco=path)


GOOD_IMAGE = {"id": 1, "file_name": "a.png", "width": 40, "height": 40}


@pytest.mark.parametrize("coco, message", [
    (b"{not json", "not a valid COCO file (coco.json): JSONDecodeError"),
    (b"\xff\xfe{}", "not a valid COCO file (coco.json): UnicodeDecodeError"),
    ([1, 2], "not a valid COCO file (coco.json): TypeError"),
    ({"images": [], "categories": []}, "not a valid COCO file (coco.json): KeyError('annotations')"),
    ({"images": [5], "categories": [], "annotations": []}, "not a valid COCO file (coco.json): TypeError"),
    ({"images": [], "categories": [], "annotations": {"a": 1}},
     "not a valid COCO file (coco.json): 'annotations' is not a list"),
])
def test_a_malformed_coco_file_is_refused_with_a_message(tmp_path, coco, message):
    with pytest.raises(ValueError) as refused:
        coco_scan(tmp_path, coco)
    assert str(refused.value).startswith(message)


def test_annotations_of_the_wrong_types_are_problem_rows(tmp_path):
    bad = [7, {"id": 2, "image_id": [1], "bbox": [0, 0, 5, 5]}, {"id": 3, "image_id": 1, "bbox": ["0", 0, 5, 5]},
           {"id": 4, "image_id": 1, "bbox": [0, 0, float("inf"), 5]}, {"id": 5, "image_id": 1, "bbox": [0, 0, 0, 5]},
           {"id": 6, "image_id": 9, "bbox": [0, 0, 5, 5]}]
    good = {"id": 7, "image_id": 1, "category_id": {"x": 1}, "bbox": [0, 0, 20, 20]}
    result = coco_scan(tmp_path, {"images": [GOOD_IMAGE, {"id": 9}], "categories": [{"id": 1, "name": "cat"}],
                                  "annotations": bad + [good]})
    assert result.samples["sample_id"].tolist() == ["a.png#7"] and result.samples["label"].isna().all()
    no_box = "annotation without a known image or a 4-number bbox"
    assert list(zip(result.problems["sample_id"], result.problems["reason"])) == [
        ("annotation None", no_box), ("annotation 2", no_box), ("annotation 3", no_box),
        ("annotation 4", no_box), ("a.png#5", "empty box [0, 0, 0, 5]"), ("annotation 6", no_box)]


# ----------------------------------------------------------------------------------------- project folders


def test_links_out_of_the_root_and_missing_files_are_problems(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "ok.png").write_bytes(a_png())
    (tmp_path / "secret.png").write_bytes(a_png())
    (root / "out.png").symlink_to(tmp_path / "secret.png")
    (root / "in.png").symlink_to(root / "ok.png")  # a link that stays inside is an image like any other
    (root / "dangling.png").symlink_to(tmp_path / "gone.png")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nok.png,a\nin.png,a\nout.png,a\ndangling.png,a\nmissing.png,a\n")
    result = scan(root, labels=labels)
    assert result.samples["path"].tolist() == ["ok.png", "in.png"]
    assert reasons(result) == {"out.png": "path leaves the data root through a link: 'out.png'",
                               "dangling.png": "path leaves the data root through a link: 'dangling.png'",
                               "missing.png": "file not found: missing.png"}


def test_a_missing_data_root_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="image source not found"):
        scan(tmp_path / "nowhere")


# ----------------------------------------------------------------------------------------- properties

PREFIXES = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\x00", b"RIFF\x00\x00\x00\x00WEBP"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=st.sampled_from(PREFIXES), body=st.binary(max_size=400), cut=st.integers(0, 400))
def test_any_bytes_decode_to_an_image_or_an_image_error(prefix, body, cut):
    """Garbage, or a real header followed by garbage, or a real image cut anywhere: an RGB image or
    ImageError with a reason, never another exception."""
    for data in (prefix + body, a_png((24, 16))[:cut] + body):
        try:
            image = decode_image(data, target_size=32)
        except ImageError as err:
            assert str(err)
        else:
            assert image.mode == "RGB" and min(image.size) >= 1


@given(size=st.integers(0, 3000), limit=st.integers(1, 3000))
def test_a_bounded_read_returns_everything_up_to_the_limit_and_nothing_past_it(size, limit):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    if size <= limit:
        assert read_bounded(io.BytesIO(data), limit, "x") == data
    else:
        with pytest.raises(ImageError, match="holds more than the limit"):
            read_bounded(io.BytesIO(data), limit, "x")
