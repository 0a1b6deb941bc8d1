"""The Python side of the grid component (mlfix/ui/grid.py): palette keys and thumbnail URLs."""

from __future__ import annotations

import pytest


def test_palette_keys_are_digits_then_letters_that_are_not_commands():
    from mlfix.ui.grid import COMMAND_KEYS, palette

    entries = palette([f"class{i:02d}" for i in range(40)])
    keys = [e["key"] for e in entries]
    assert keys[:10] == list("1234567890")
    assigned = [k for k in keys if k is not None]
    assert len(assigned) == len(set(assigned)) == 30 and keys[30:] == [None] * 10
    assert not set(assigned) & COMMAND_KEYS
    assert all(e["color"].startswith("#") for e in entries)
    with pytest.raises(ValueError, match="unique"):
        palette(["a", "a"])


def test_thumbnail_urls_by_static_serving_or_data_urls(tmp_path):
    from PIL import Image

    from mlfix.data.thumbnails import ThumbnailCache
    from mlfix.ui.grid import STATIC_SUBDIR, thumbnail_urls

    cache = ThumbnailCache(tmp_path / "project" / "thumbs", lambda s: Image.new("RGB", (40, 30), "red"), 64)
    urls = thumbnail_urls(cache, ["a.png", "b.png"], tmp_path / "static")
    assert all(u.startswith(f"app/static/{STATIC_SUBDIR}/") for u in urls)
    served = tmp_path / "static" / urls[0].removeprefix("app/static/")
    assert served.read_bytes() == cache.path("a.png").read_bytes()
    inline = thumbnail_urls(cache, ["a.png"], None)
    assert inline[0].startswith("data:image/jpeg;base64,")


def test_static_mirrors_of_old_projects_are_pruned(tmp_path):
    from PIL import Image

    from mlfix.data.thumbnails import ThumbnailCache
    from mlfix.ui.grid import MAX_MIRRORS, STATIC_SUBDIR, thumbnail_urls

    for i in range(MAX_MIRRORS + 3):
        cache = ThumbnailCache(tmp_path / f"p{i}" / "thumbs", lambda s: Image.new("RGB", (20, 20)), 32)
        thumbnail_urls(cache, ["a.png"], tmp_path / "static")
    assert len(list((tmp_path / "static" / STATIC_SUBDIR).iterdir())) == MAX_MIRRORS


def test_an_unwritable_static_folder_falls_back_to_data_urls(tmp_path):
    from PIL import Image

    from mlfix.data.thumbnails import ThumbnailCache
    from mlfix.ui.grid import thumbnail_urls

    static = tmp_path / "static"
    static.write_text("a file where the folder should be")  # unwritable even for root
    cache = ThumbnailCache(tmp_path / "thumbs", lambda s: Image.new("RGB", (20, 20)), 32)
    assert thumbnail_urls(cache, ["a.png"], static)[0].startswith("data:image/jpeg")
