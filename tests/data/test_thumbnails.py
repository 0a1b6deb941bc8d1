"""Thumbnails: made once, then read from disk; a broken image gives a placeholder, not a crash."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from mlfix.data.thumbnails import (ThumbnailCache, make_thumbnail, placeholder, thumbnail_relpath)


def colour_image(width=300, height=200, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), "RGB")


class CountingLoader:
    def __init__(self, images):
        self.images = images
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, sample_id):
        with self.lock:
            self.calls.append(sample_id)
        value = self.images[sample_id]
        if isinstance(value, Exception):
            raise value
        return value


def test_thumbnail_keeps_aspect_and_fits_the_size():
    thumb = make_thumbnail(colour_image(300, 200), 128)
    assert thumb.size == (128, 85) and thumb.mode == "RGB"


def test_small_images_are_scaled_up_to_fill_the_tile():
    assert make_thumbnail(colour_image(32, 32), 128).size == (128, 128)


def test_grey_and_alpha_images_become_rgb():
    assert make_thumbnail(Image.new("LA", (50, 40)), 64).mode == "RGB"


def test_second_call_reads_from_disk_not_the_image(tmp_path):
    loader = CountingLoader({"a.png": colour_image(), "b.png": colour_image(seed=1)})
    cache = ThumbnailCache(tmp_path / "thumbs", loader, size=128)
    first = cache.ensure_many(["a.png", "b.png"])
    assert sorted(loader.calls) == ["a.png", "b.png"]
    assert all(p.exists() for p in first)
    with Image.open(first[0]) as im:
        assert im.format == "JPEG" and max(im.size) == 128
    second = cache.ensure_many(["b.png", "a.png"])
    assert second == [first[1], first[0]]
    assert len(loader.calls) == 2  # nothing decoded again
    # a new cache object (a new process, a page rerun) also finds them on disk
    ThumbnailCache(tmp_path / "thumbs", loader, size=128).ensure("a.png")
    assert len(loader.calls) == 2


def test_sizes_are_cached_separately(tmp_path):
    loader = CountingLoader({"a.png": colour_image()})
    small = ThumbnailCache(tmp_path, loader, size=64).ensure("a.png")
    large = ThumbnailCache(tmp_path, loader, size=256).ensure("a.png")
    assert small != large and len(loader.calls) == 2
    with Image.open(large) as im:
        assert max(im.size) == 256


def test_bad_image_gives_a_placeholder_and_is_not_read_again(tmp_path):
    loader = CountingLoader({"bad.jpg": OSError("truncated JPEG"), "ok.png": colour_image()})
    cache = ThumbnailCache(tmp_path, loader, size=64)
    paths = cache.ensure_many(["bad.jpg", "ok.png"])
    assert all(p.exists() for p in paths)
    assert cache.is_placeholder("bad.jpg") and not cache.is_placeholder("ok.png")
    assert "truncated JPEG" in cache.errors["bad.jpg"]
    with Image.open(paths[0]) as im:
        assert np.asarray(im.convert("RGB")).std() > 0  # the cross is drawn
    cache.ensure("bad.jpg")
    assert loader.calls.count("bad.jpg") == 1


def test_paths_are_sharded_and_stable():
    rel = thumbnail_relpath("cats/001.png", 128)
    assert rel == thumbnail_relpath("cats/001.png", 128)
    folder, name = rel.split("/")
    assert len(folder) == 2 and name.startswith(folder) and name.endswith("_128.jpg")
    assert thumbnail_relpath("cats/002.png", 128) != rel


def test_no_half_written_files_are_left_behind(tmp_path):
    loader = CountingLoader({f"{i}.png": colour_image(seed=i) for i in range(20)})
    ThumbnailCache(tmp_path, loader, size=64, workers=4).ensure_many(list(loader.images))
    leftovers = [p for p in tmp_path.rglob(".*")]  # temporary files are hidden (mlfix.atomic)
    assert leftovers == [] and len(list(tmp_path.rglob("*.jpg"))) == 20


@pytest.mark.parametrize("size", [0, 8, 2000, 12.5, True])
def test_bad_sizes_are_refused_with_a_message(size, tmp_path):
    with pytest.raises(ValueError, match="thumbnail size"):
        ThumbnailCache(tmp_path, lambda s: None, size=size)


def test_placeholder_is_the_requested_size():
    assert placeholder(96).size == (96, 96)


def test_for_project_uses_the_project_images(tmp_path):
    from mlfix.project import Project
    from mlfix.data.thumbnails import for_project, thumbnail

    (tmp_path / "data" / "cat").mkdir(parents=True)
    colour_image(400, 300).save(tmp_path / "data" / "cat" / "1.jpg")
    colour_image(60, 80).save(tmp_path / "data" / "cat" / "2.png")
    project = Project.create(tmp_path / "project", images=tmp_path / "data")

    cache = for_project(project, size=128)
    assert for_project(project, size=128) is cache  # one cache per project and size
    path = cache.ensure("cat/1.jpg")
    assert path.is_relative_to(tmp_path / "project" / "thumbs")
    with Image.open(path) as im:
        assert im.size == (128, 96)
    with Image.open(thumbnail(project, "cat/2.png", 64)) as im:
        assert im.size == (48, 64)
    assert cache.ensure_many(["nope.png"])[0].exists() and cache.is_placeholder("nope.png")
