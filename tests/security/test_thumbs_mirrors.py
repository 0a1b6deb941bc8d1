"""Thumbnail mirrors under ``static/`` (served without sign-in) do not outlive the server process
that made them (the key from a secret of each process is tested in tests/service/test_static_serving.py)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from mlfix.data.thumbnails import ThumbnailCache
from mlfix.ui import grid


def cache_of(folder: Path) -> ThumbnailCache:
    return ThumbnailCache(folder / "thumbs", lambda s: Image.new("RGB", (20, 20), "blue"), 32)


def test_mirrors_of_an_earlier_server_go_at_the_first_use(tmp_path, monkeypatch):
    static = tmp_path / "static"
    old = static / grid.STATIC_SUBDIR / "0123456789abcdef01234567"  # left by a server that has stopped
    (old / "91").mkdir(parents=True)
    (old / "91" / "x_32.jpg").write_bytes(b"an old thumbnail")
    stray = static / grid.STATIC_SUBDIR / "a-file"
    stray.write_text("x")
    monkeypatch.setattr(grid, "_FORGOTTEN", set())
    [url] = grid.thumbnail_urls(cache_of(tmp_path / "p"), ["a.png"], static)
    assert not old.exists() and not stray.exists()
    assert [p.name for p in (static / grid.STATIC_SUBDIR).iterdir()] == [Path(url).parts[3]]
    # later calls (another project, same process) keep what this process made
    grid.thumbnail_urls(cache_of(tmp_path / "q"), ["a.png"], static)
    assert len(list((static / grid.STATIC_SUBDIR).iterdir())) == 2


def test_the_app_start_clears_the_static_mirrors(tmp_path, monkeypatch):
    static = tmp_path / "static"
    old = static / grid.STATIC_SUBDIR / "feedfacefeedfacefeedface"
    old.mkdir(parents=True)
    monkeypatch.setattr(grid, "_FORGOTTEN", set())
    grid.forget_old_mirrors(static)
    assert not old.exists()
    grid.forget_old_mirrors(None)  # static serving off: nothing to do
