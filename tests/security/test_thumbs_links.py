"""Links under a project's ``thumbs/`` are never followed: a thumbnail linked to a secret file is
not sent to the browser, a ``.bad`` marker linked to a file does not overwrite it, a sub-folder
linked elsewhere receives nothing."""

from __future__ import annotations

import base64
import os

import pytest
from PIL import Image

from mlfix.data.thumbnails import ThumbnailCache, is_plain_file, read_thumbnail
from mlfix.ui import grid

SECRET = b"root:x:0:0:root:/root:/bin/bash\n"


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "passwd"
    path.write_bytes(SECRET)
    return path


def cache_of(tmp_path, load=lambda s: Image.new("RGB", (40, 30), "red")) -> ThumbnailCache:
    return ThumbnailCache(tmp_path / "project" / "thumbs", load, 32)


def test_a_thumbnail_linked_to_a_secret_is_replaced_not_sent(tmp_path, secret):
    cache = cache_of(tmp_path)
    target = cache.path("a.png")
    target.parent.mkdir(parents=True)
    target.symlink_to(secret)
    url = grid.thumbnail_urls(cache, ["a.png"], None)[0]
    sent = base64.b64decode(url.removeprefix("data:image/jpeg;base64,"))
    assert sent[:3] == b"\xff\xd8\xff" and SECRET not in sent  # a JPEG made from the image
    assert is_plain_file(target) and secret.read_bytes() == SECRET


def test_a_link_under_static_serving_is_not_mirrored(tmp_path, secret):
    cache = cache_of(tmp_path)
    target = cache.path("a.png")
    target.parent.mkdir(parents=True)
    target.symlink_to(secret)
    [url] = grid.thumbnail_urls(cache, ["a.png"], tmp_path / "static")
    served = tmp_path / "static" / url.removeprefix("app/static/")
    assert not served.is_symlink() and served.read_bytes()[:3] == b"\xff\xd8\xff"


def test_a_bad_marker_linked_to_a_file_does_not_overwrite_it(tmp_path, secret):
    def broken(sample_id):
        raise ValueError("cannot decode")

    cache = cache_of(tmp_path, broken)
    marker = cache.path("a.png").with_suffix(".bad")
    marker.parent.mkdir(parents=True)
    marker.symlink_to(secret)
    assert not cache.is_placeholder("a.png")  # a link is not our marker
    cache.ensure("a.png")
    assert secret.read_bytes() == SECRET
    assert is_plain_file(marker) and marker.read_text() == "ValueError: cannot decode"
    assert cache.is_placeholder("a.png")


def test_a_linked_sub_folder_receives_nothing(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cache = cache_of(tmp_path)
    sub = cache.path("a.png").parent
    sub.parent.mkdir(parents=True)
    sub.symlink_to(elsewhere, target_is_directory=True)
    path = cache.ensure("a.png")
    assert list(elsewhere.iterdir()) == [] and not sub.is_symlink() and is_plain_file(path)


def test_a_linked_thumbs_folder_is_not_written_through(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cache = cache_of(tmp_path)
    cache.folder.parent.mkdir(parents=True)
    cache.folder.symlink_to(elsewhere, target_is_directory=True)
    cache.ensure("a.png")
    assert list(elsewhere.iterdir()) == [] and not cache.folder.is_symlink()


def test_read_thumbnail_refuses_links_and_non_files(tmp_path, secret):
    link = tmp_path / "t.jpg"
    link.symlink_to(secret)
    with pytest.raises(OSError):
        read_thumbnail(link)
    os.mkfifo(tmp_path / "fifo.jpg")
    with pytest.raises(OSError, match="not a plain file"):
        read_thumbnail(tmp_path / "fifo.jpg")
