"""Images on object storage (``s3://``) behind the same data root as a folder: the same scan, the
same project, the same refusals (a local S3 endpoint: moto's server, tests/s3.py)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest

from mlfix import limits
from mlfix.data.images import DataRoot, load_image
from mlfix.data.scan import scan
from mlfix.errors import ImageError, UnsafePathError
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
    with pytest.raises(ValueError, match="URI pyarrow reads"):
        DataRoot("nosuchfs://photos/set-1")
    with pytest.raises(FileNotFoundError, match="nothing is stored under"):
        DataRoot(s3_server.uri("photos/no-such-prefix"))
    s3_server.put("photos/one.png", b"x")
    with pytest.raises(ValueError, match="a folder \\(a prefix\\) of images, not one object"):
        DataRoot(s3_server.uri("photos/one.png"))


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
