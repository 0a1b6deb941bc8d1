"""Images on object storage (``s3://``) behind the same data root as a folder: the same scan, the
same project, the same refusals (a local S3 endpoint: moto's server, tests/s3.py)."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pandas as pd
import pytest

from mlfix import limits
from PIL import Image

from mlfix.data.images import DataRoot, load_image, open_image_header
from mlfix.data.object_store import BLOCK, RangeReader, normal_uri
from mlfix.data.scan import scan
from mlfix.data import thumbnails
from mlfix.data.thumbnails import ThumbnailCache
from mlfix.errors import ImageError, ImageSourceUnavailable, UnsafePathError
from mlfix.project import Project
from tests.conftest import FAST_SETTINGS, shape_image, write_image_folder
from tests.s3 import s3_server  # noqa: F401  (a session fixture)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """12 images in 3 colour classes, a truncated PNG (its header reads, its pixels do not), a text
    file named like an image and a file that is not an image at all."""
    root = write_image_folder(tmp_path_factory.mktemp("s3") / "images", per_class=4, classes=("red", "green", "blue"))
    (root / "red" / "truncated.png").write_bytes((root / "red" / "000.png").read_bytes()[:80])
    (root / "green" / "notes.png").write_bytes(b"not an image")
    (root / "blue" / "readme.txt").write_text("skipped: not an image extension")
    return root


@pytest.fixture(scope="module")
def uri(folder, s3_server):  # noqa: F811
    return s3_server.upload(folder, "photos/set-1")


def test_an_s3_prefix_scans_like_the_folder_it_came_from(folder, uri):
    remote, local = scan(uri), scan(folder)
    pd.testing.assert_frame_equal(remote.samples, local.samples)
    pd.testing.assert_frame_equal(remote.problems, local.problems)
    assert remote.source["images"] == uri.rstrip("/") and len(remote.samples) == 13  # 12 + the truncated one
    assert remote.problems["path"].tolist() == ["green/notes.png"]


def test_images_decode_as_from_the_folder_and_the_root_pickles_as_its_uri(folder, uri):
    root = pickle.loads(pickle.dumps(DataRoot(uri)))  # as a DataLoader worker or a Ray task gets it
    assert root.store._filesystem is None  # reconnects in the worker, with the worker's credentials
    row = {"path": "blue/002.png", "box_x": 2, "box_y": 3, "box_w": 20, "box_h": 30}
    assert np.array_equal(np.asarray(load_image(root, row)), np.asarray(load_image(DataRoot(folder), row)))
    with pytest.raises(ImageError, match="cannot|truncated|broken"):
        load_image(root, {"path": "red/truncated.png"})


@pytest.mark.parametrize("path, error, reason", [
    ("../set-2/red/000.png", UnsafePathError, "leaves the data root"),
    ("/photos/set-1/red/000.png", UnsafePathError, "absolute path"),
    ("red/nope.png", ImageError, "file not found: red/nope.png"),
    ("red", ImageError, "is a folder, not an image: red"),
])
def test_nothing_outside_the_prefix_is_read_and_missing_objects_are_reasons(uri, s3_server, path, error,  # noqa: F811
                                                                            reason):
    s3_server.put("photos/set-2/red/000.png", shape_image((1, 2, 3), 0).tobytes())  # a neighbour prefix
    with pytest.raises(error, match=reason):
        DataRoot(uri).read_bytes(path)


def test_an_object_over_the_size_limit_is_refused_before_it_is_read(uri, monkeypatch):
    monkeypatch.setenv(limits.Limits.env_name("zip_member_bytes"), "100")
    with pytest.raises(ImageError, match="over the limit of 100 bytes per image"):
        DataRoot(uri).read_bytes("red/000.png")


def test_bad_sources_say_what_to_give(s3_server):  # noqa: F811
    with pytest.raises(ValueError, match="carries credentials.*AWS_ACCESS_KEY_ID"):
        DataRoot("s3://AKIA123:secret@photos/set-1")
    for uri in ("nosuchfs://photos/set-1", "local:///etc", "mock:///x"):  # local:// would skip the link checks
        with pytest.raises(ValueError, match="give a folder or a .zip, or a URI of s3, gs"):
            DataRoot(uri)
    for uri in ("s3://photos/set-1?access_key=AKIA&region=x", "abfs://c@acct.dfs.core.windows.net/p?client_secret=s",
                "s3://photos/set-1?session_token=t"):
        with pytest.raises(ValueError, match="carries credentials"):
            DataRoot(uri)
    with pytest.raises(ValueError, match="'#' part"):
        DataRoot("s3://photos/set#1?region=x")
    with pytest.raises(ValueError, match="names no bucket"):
        DataRoot(s3_server.uri(""))
    with pytest.raises(FileNotFoundError, match="nothing is stored under"):
        DataRoot(s3_server.uri("photos/no-such-prefix"))
    s3_server.put("photos/one.png", b"x")
    with pytest.raises(ValueError, match="a folder \\(a prefix\\) of images, not one object"):
        DataRoot(s3_server.uri("photos/one.png"))


def test_a_uri_is_written_one_way_and_a_user_at_a_host_is_no_credential():
    assert normal_uri("s3://photos/set-1/?region=us-east-1") == "s3://photos/set-1?region=us-east-1"
    assert normal_uri("abfs://container@account.dfs.core.windows.net/photos/") == \
        "abfs://container@account.dfs.core.windows.net/photos"


def test_a_store_that_cannot_be_reached_says_what_to_check_and_thumbnails_retry(uri, tmp_path, monkeypatch):
    down = uri.replace(uri.split("endpoint_override=")[1].split("&")[0], "127.0.0.1:1")
    with pytest.raises(ImageSourceUnavailable, match="cannot reach s3://photos/set-1.*Check the network.*AWS_ACCESS"):
        DataRoot(down)
    root, answering = DataRoot(uri), [False]

    def load(sample_id):
        if not answering[0]:
            raise ImageSourceUnavailable("cannot reach the store")
        return load_image(root, {"path": sample_id})

    cache = ThumbnailCache(tmp_path / "thumbs", load, 32, workers=1)
    calls = []
    cache.load = lambda sample_id: calls.append(sample_id) or load(sample_id)
    assert cache.ensure_many(["red/000.png", "red/001.png"]) == [cache.unavailable_path] * 2
    assert calls == ["red/000.png"]  # the second does not wait on the store's timeouts too
    assert not cache.is_placeholder("red/000.png") and not cache.path("red/000.png").exists()
    answering[0] = True  # the store is back: the thumbnail is made, not the placeholder remembered
    monkeypatch.setattr(thumbnails, "SOURCE_RETRY_S", 0.0)
    cache._source_down_until = 0.0
    assert cache.ensure_many(["red/000.png"]) == [cache.path("red/000.png")] and cache.path("red/000.png").exists()


def test_an_endpoint_that_accepts_and_never_answers_fails_within_the_timeouts(monkeypatch):
    import socket
    import time

    from mlfix.data import object_store

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # the kernel completes connections into the backlog; nothing ever reads or replies
    monkeypatch.setattr(object_store, "S3_REQUEST_TIMEOUT_S", 1.0)  # the connection itself succeeds
    start = time.monotonic()
    try:
        with pytest.raises(ImageSourceUnavailable, match="cannot reach"):
            DataRoot(f"s3://photos/set-1?endpoint_override=127.0.0.1:{silent.getsockname()[1]}&scheme=http")
    finally:
        silent.close()
    assert time.monotonic() - start < 30  # 3 attempts of 1 s and back-off (~5 s); ~90 s without the timeout


def test_the_timeouts_keep_every_option_of_the_uri_and_survive_pickling(uri):
    from pyarrow.fs import FileSystem

    from mlfix.data import object_store

    given = FileSystem.from_uri(uri)[0].__reduce__()[1][0]
    root = pickle.loads(pickle.dumps(DataRoot(uri)))  # as a Ray worker gets it: reconnected from the URI
    kept = root.store.filesystem.__reduce__()[1][0]
    assert kept["connect_timeout"] == object_store.S3_CONNECT_TIMEOUT_S
    assert kept["request_timeout"] == object_store.S3_REQUEST_TIMEOUT_S
    assert {**kept, "connect_timeout": -1.0, "request_timeout": -1.0} == given
    assert (given["region"], given["scheme"]) == ("us-east-1", "http") and given["endpoint_override"].startswith("127.0.0.1:")
    unverified = object_store._connect(uri + "&tls_verify_certificates=false")[0]  # an option the rebuild would drop
    assert unverified.__reduce__()[1][0]["request_timeout"] == -1.0  # left as pyarrow made it


class CountingFile:
    """A pyarrow random-access file stand-in that counts the bytes asked for."""

    def __init__(self, data: bytes):
        self.data, self.fetched = data, 0

    def size(self) -> int:
        return len(self.data)

    def read_at(self, n: int, offset: int) -> bytes:
        self.fetched += n
        return self.data[offset:offset + n]

    def close(self) -> None:
        pass


def test_the_header_check_fetches_one_block_not_the_whole_object():
    image = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (900, 900, 3), dtype=np.uint8)).save(image, "PNG")
    raw = CountingFile(image.getvalue())
    assert len(raw.data) > 2_000_000
    handle = io.BufferedReader(RangeReader(raw, "s3://b/p"), buffer_size=BLOCK)
    assert open_image_header(handle).size == (900, 900)
    assert raw.fetched <= 2 * BLOCK
    handle.seek(0)
    assert handle.read() == raw.data  # and the whole object reads back unchanged


def test_a_file_uri_is_the_local_folder(folder):
    assert DataRoot(folder.as_uri()).location == folder.resolve()


@pytest.mark.slow
def test_a_project_on_s3_images_is_the_project_on_the_folder(folder, uri, tmp_path):
    """Scan, index (features, words, orders) and thumbnails from the bucket: the same artifacts."""
    made = {}
    for name, images in (("local", folder), ("s3", uri)):
        project = Project.create(tmp_path / name, images=images, **FAST_SETTINGS)
        project.index(workers=0)
        made[name] = project
    for artifact in ("features/pooled.npy", "features/words.npy", "codebook/bags.npy", "orders/all.npy"):
        assert np.array_equal(np.load(made["s3"].dir / artifact), np.load(made["local"].dir / artifact)), artifact
    pd.testing.assert_frame_equal(made["s3"].problems, made["local"].problems)
    assert json.loads((made["s3"].dir / "features/features.key.json").read_text()) == \
        json.loads((made["local"].dir / "features/features.key.json").read_text())
    assert made["s3"].image("blue/001.png").size == made["local"].image("blue/001.png").size
