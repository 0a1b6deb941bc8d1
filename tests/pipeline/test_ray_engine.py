"""The Ray engine of ``mlfix index``: the same project as the local engine, through faults.

One local Ray (2 CPUs, no dashboard) for the module; 40 digits at 8x8 px plus 2 files whose pixels do
not decode and one that is no image, at 64 px with random weights, 16 words and batches of 8 (6 chunks
a pass).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest

ray = pytest.importorskip("ray")

from mlfix.demo import write_digits  # noqa: E402
from mlfix.errors import EngineError  # noqa: E402
from mlfix.pipeline import ray_engine  # noqa: E402
from mlfix.pipeline.artifacts import read_engine  # noqa: E402
from mlfix.pipeline.ordering import ORDERINGS  # noqa: E402
from mlfix.pipeline.ray_shards import finished_chunks  # noqa: E402
from mlfix.progress import Progress  # noqa: E402
from mlfix.project import Project  # noqa: E402
from tests.s3 import s3_server  # noqa: E402, F401  (a session fixture)

SETTINGS = {"weights": "random", "image_size": 64, "words": 16, "batch_size": 8}
BROKEN = ["bad-1.png", "bad-2.png"]  # their header reads (the scan keeps them), their pixels do not
ARRAYS = ["features/pooled.npy", "features/words.npy", "features/ok.npy", "codebook/centroids.npy",
          "codebook/bags.npy"] + [f"{folder}/{name}.npy" for folder in ORDERINGS.values()
                                  for name in ("all", "class-0000", "class-0009")]
KEYS = ["features/features.key.json", "features/words.key.json", "codebook/bags.key.json",
        "orders/orders.key.json", "features/quality.key.json"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray") / "images"
    write_digits(folder, limit=40)
    first = sorted(p for p in folder.iterdir() if p.is_dir())[0]
    for name, source in zip(BROKEN, sorted(first.glob("*.png"))):
        (first / name).write_bytes(source.read_bytes()[:80])
    (first / "not-an-image.png").write_bytes(b"not an image")  # a problem of the scan, not of decoding
    return folder


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def index(folder, images, **settings):
    project = Project.create(folder, images=images, **SETTINGS)
    project.index(progress=Progress("index", log_dir=folder / "logs", terminal=False), **settings)
    return project


def artifacts(project) -> dict:
    found = {name: np.load(project.dir / name) for name in ARRAYS}
    found.update({name: json.loads((project.dir / name).read_text()) for name in KEYS})
    found["samples"] = pd.read_parquet(project.dir / "samples.parquet")
    found["problems"] = pd.read_parquet(project.dir / "problems.parquet")
    found["quality"] = pd.read_parquet(project.dir / "features/quality.parquet")
    return found


@pytest.fixture(scope="module")
def local_two_pass(images, tmp_path_factory):
    return index(tmp_path_factory.mktemp("local") / "p", images, cell_cache_gb=0, workers=0)


@pytest.fixture(scope="module")
def ray_project(images, tmp_path_factory, local_ray):
    return index(tmp_path_factory.mktemp("ray") / "p", images, engine="ray")


def assert_same_project(got: dict, want: dict, exact: tuple = tuple(ARRAYS)) -> None:
    for name in exact:
        assert got[name].dtype == want[name].dtype and np.array_equal(got[name], want[name]), name
    for name in KEYS + ["samples", "problems", "quality"]:
        same = got[name].equals(want[name]) if isinstance(want[name], pd.DataFrame) else got[name] == want[name]
        assert same, name


def test_the_ray_engine_makes_the_local_two_pass_project(ray_project, local_two_pass):
    got, want = artifacts(ray_project), artifacts(local_two_pass)
    # the pooled vectors within float16 rounding; on one machine they come out bit for bit
    np.testing.assert_allclose(got["features/pooled.npy"].astype(np.float32),
                               want["features/pooled.npy"].astype(np.float32), rtol=2**-10, atol=2**-14)
    assert_same_project(got, want)
    assert got["features/features.key.json"]["cells"] is False
    assert not (ray_project.dir / ray_engine.SHARDS_DIR).exists()  # the shards are gone once assembled
    assert len(got["samples"]) == 42 and int(got["features/ok.npy"].sum()) == 40


def test_the_cell_cache_route_samples_the_same_cells_rounded_to_float16(ray_project, images, tmp_path):
    """The cell cache feeds KMeans the same images and cells, but stored as float16: the centroids
    differ by that rounding. A cell near the border of two words could then change its word; none
    does on this set, so words, bags and orders are the same."""
    cached = index(tmp_path / "p", images, workers=0)
    got, want = artifacts(cached), artifacts(ray_project)
    assert got["features/features.key.json"].pop("cells") is True
    want["features/features.key.json"].pop("cells")
    np.testing.assert_allclose(got["codebook/centroids.npy"], want["codebook/centroids.npy"], atol=5e-3)
    assert not np.array_equal(got["codebook/centroids.npy"], want["codebook/centroids.npy"])
    assert_same_project(got, want, exact=tuple(a for a in ARRAYS if a != "codebook/centroids.npy"))


def test_bad_images_are_skipped_and_reported_as_by_the_local_engine(ray_project):
    problems = ray_project.problems
    decode = problems[problems["stage"] == "decode"]
    assert sorted(decode["path"].str.rsplit("/", n=1).str[-1]) == sorted(BROKEN)
    samples = pd.read_parquet(ray_project.dir / "samples.parquet")
    broken = samples["path"].str.contains("bad-")
    assert (samples.loc[broken, "status"] == "unreadable").all() and (samples.loc[~broken, "status"] == "ok").all()
    pooled = np.load(ray_project.dir / "features/pooled.npy")
    assert not pooled[broken.to_numpy()].any() and pooled[~broken.to_numpy()].any(axis=1).all()


def test_the_engine_record_says_which_engine_ran(ray_project, local_two_pass):
    ray_record, local_record = read_engine(ray_project.dir), read_engine(local_two_pass.dir)
    assert {k: ray_record[k] for k in ("engine", "address", "actors", "gpus", "images")} == \
        {"engine": "ray", "address": None, "actors": 1, "gpus": 0, "images": 42}
    assert local_record["engine"] == "local" and local_record["actors"] == 0 and ray_record["seconds"] > 0
    log = [json.loads(line) for line in (ray_project.dir / "logs/index.jsonl").read_text().splitlines()]
    features = [r for r in log if r.get("stage") == "features" and "done" in r]
    assert features[-1]["done"] == features[-1]["total"] == 42  # images done / total, as the local engine


def kill_first_actor(folder, killed: list) -> None:
    """Wait for the first shard of the run, then SIGKILL the actor process that made it."""
    deadline = time.time() + 300
    while time.time() < deadline and not killed:
        for shard in folder.glob("*/chunk-*.npz") if folder.exists() else []:
            try:
                pid = int(np.load(shard)["pid"])
            except (OSError, ValueError, KeyError):  # being renamed into place
                continue
            os.kill(pid, signal.SIGKILL)
            killed.append((pid, len(finished_chunks(shard.parent))))
            return
        time.sleep(0.02)


def test_an_actor_killed_mid_run_still_ends_in_the_same_project(ray_project, images, tmp_path, monkeypatch):
    monkeypatch.setattr(ray_engine, "PAUSE_S", 0.5)  # each chunk lasts long enough to kill the actor in it
    folder, killed = tmp_path / "p", []
    killer = threading.Thread(target=kill_first_actor, args=(folder / ray_engine.SHARDS_DIR, killed), daemon=True)
    killer.start()
    project = index(folder, images, engine="ray")
    killer.join(timeout=5)
    assert killed, "no actor was killed"
    pid, shards_then = killed[0]
    assert shards_then < 6  # it died with chunks still to do (6 chunks a pass)
    assert_same_project(artifacts(project), artifacts(ray_project))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # it is dead: a new actor finished the run


def test_images_on_object_storage_make_the_same_project(ray_project, images, s3_server, tmp_path):  # noqa: F811
    """The decode tasks read an s3:// prefix (each worker connects with its own credentials: the
    environment's), as the nodes of a cluster without a shared filesystem would."""
    uri = s3_server.upload(images, "ray-images/digits")
    project = index(tmp_path / "p", uri, engine="ray")
    assert project.source["images"] == uri
    assert_same_project(artifacts(project), artifacts(ray_project))


def in_process_pipeline(calls: list, fail_after: int | None = None):
    """``_pipeline`` without Ray's scheduling (the same decode and model code, in this process);
    raises after ``fail_after`` results of the full pass, as a driver that dies would stop."""
    from mlfix.pipeline.ray_shards import ChunkModel, decode_chunk

    def pipeline(run, items, plan, statistics, actor):
        model = ChunkModel(**actor)
        for done, item in enumerate(items):
            if statistics and fail_after is not None and done == fail_after:
                raise KeyboardInterrupt("the driver died")
            calls.append((statistics, item["chunk"]))
            yield model(decode_chunk(item, run.root, run.settings.image_size, statistics))

    return pipeline


def test_a_rerun_after_the_driver_died_reuses_the_finished_shards(ray_project, images, tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(ray_engine, "_pipeline", in_process_pipeline(calls, fail_after=2))
    with pytest.raises(KeyboardInterrupt):
        index(tmp_path / "p", images, engine="ray")
    assert calls == [(False, c) for c in range(6)] + [(True, 0), (True, 1)]
    calls.clear()
    monkeypatch.setattr(ray_engine, "_pipeline", in_process_pipeline(calls))
    project = index(tmp_path / "p", images, engine="ray")
    assert calls == [(True, c) for c in range(2, 6)]  # no codebook pass, no finished chunk again
    assert_same_project(artifacts(project), artifacts(ray_project))


def test_connect_to_an_unreachable_cluster_says_what_to_do(monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(EngineError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1:1.*ray start --head"):
        ray_engine.connect("127.0.0.1:1")


def test_connect_without_ray_installed_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(EngineError, match="needs the ray package.*--engine local"):
        ray_engine.connect(None)
