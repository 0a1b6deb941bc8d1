"""The Ray engine of ``mlfix index``: feature extraction and visual words on Ray Data.

The same two passes as the local engine's large-set route (:mod:`mlfix.pipeline.index`), spread
over a Ray cluster (or a Ray on this machine):

1. the images of the KMeans sample (:func:`~mlfix.pipeline.codebook.sample_plan`) go through the
   pipeline; each actor returns only its chunk's sampled cells; the driver fits the codebook once;
2. every image goes through it with the codebook's state shipped to the actors (``ray.put`` of
   :func:`~mlfix.pipeline.codebooks.codebook_state`: KMeans centroids or a VQ codebook); each returns
   its chunk's pooled vectors (float16) and word grids (uint16), which the driver writes as one
   shard file per chunk under ``features/ray-shards/<key digest>/``.

The pipeline is rows of the sample table in chunks of ``batch_size`` (one Ray row per chunk, the
batches of the local engine) -> decode in CPU tasks -> the backbone in an actor pool (built once per
actor; one GPU per actor when the cluster has GPUs, else one CPU actor per node)
(:mod:`mlfix.pipeline.ray_shards`). The driver then assembles the shards in row order into exactly
the artifacts and keys of the local engine's two-pass route (``features.key.json`` with
``"cells": false``), so every later stage reads them unaware of the engine, and deletes the shards.

Failures: Ray Data restarts an actor that dies and retries its tasks (``max_restarts`` and
``max_task_retries`` -1), and the driver's memory holds no per-image result beyond the KMeans sample
and the quality table; a rerun after the driver died reuses the finished shards of the same key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import socket
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from mlfix.atomic import atomic_path
from mlfix.data.quality import QUALITY_STATS
from mlfix.data.scan import problems_frame
from mlfix.errors import EngineError
from mlfix.pipeline.artifacts import write_key
from mlfix.pipeline.codebook import sample_plan
from mlfix.pipeline.codebooks import (AnyCodebook, codebook_state, fit_codebook, is_fitted, load_codebook,
                                      save_codebook)
from mlfix.pipeline.features import decode_failures
from mlfix.pipeline.ray_shards import (ChunkModel, NpyStream, chunk_items, decode_chunk, finished_chunks,
                                       read_shard, write_shard)

SHARDS_DIR = "features/ray-shards"
PAUSE_S = 0.0  # seconds each actor waits after a chunk: tests raise it to kill an actor mid-run
DECODE_SHARE = 4  # on CPU nodes one CPU in this many (at least one) is left to the decode tasks
PROBE_TIMEOUT_S = 5.0
# A decode task asks for other resources than a model actor, so that Ray Data does not fuse the two
# stages into the actor (decoding would then stall the model instead of overlapping with it).
DECODE_CPUS = 0.5


def connect(address: str | None) -> None:
    """Join the Ray cluster at ``address`` (None: the one on this machine, or start one); nothing
    when Ray is already initialised in this process. Raises :class:`EngineError` when ray is not
    installed or the address cannot be reached."""
    try:
        import ray
    except ImportError as err:
        raise EngineError("the ray engine needs the ray package: `pip install 'ray[data]'` (it is in "
                          "requirements.txt), or index with --engine local") from err
    if ray.is_initialized():
        return
    if address and address != "auto":
        _probe(address)
    try:
        ray.init(address=address or None, include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as err:
        raise EngineError(f"cannot join the Ray cluster at {address or 'this machine'}: {err}. Start one with "
                          "`ray start --head` (then --ray-address auto), check the address, or index with "
                          "--engine local") from err


def _probe(address: str) -> None:
    """Fail fast on an address nobody listens at (``ray.init`` retries for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S).close()
    except (OSError, ValueError) as err:
        raise EngineError(f"cannot reach the Ray cluster at {address}: {err}. Is `ray start --head` running "
                          "there (and its port open)? Or index with --engine local") from err


def cluster_plan(device: str | None) -> dict:
    """How to place the model actors on the cluster Ray is connected to: one per GPU when it has GPUs
    (and ``device`` is not ``cpu``), else one CPU actor per node that leaves CPUs to the decode tasks
    (an actor pool that takes every CPU starves them)."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus and device != "cpu":
        return {"actors": gpus, "gpus": gpus, "num_gpus": 1, "num_cpus": 1, "threads": None, "device": "cuda"}
    nodes = [node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")]
    cpus = max(1, int(min((c for c in nodes if c >= 1), default=1)))
    actor_cpus = cpus - max(1, cpus // DECODE_SHARE) if cpus >= 2 else 0.5
    return {"actors": max(1, sum(c >= 1 for c in nodes)), "gpus": 0, "num_gpus": 0, "num_cpus": actor_cpus,
            "threads": min(cpus, max(2, int(actor_cpus))), "device": "cpu"}


def shards_folder(run, words_key: dict) -> Path:
    """Where this key's shards live: a new key (or batch size, which changes the chunks) starts afresh."""
    what = json.dumps({**words_key, "batch_size": run.settings.batch_size, "images": len(run.samples)},
                      sort_keys=True, default=str)
    return run.dir / SHARDS_DIR / hashlib.sha1(what.encode()).hexdigest()[:16]


def forget_shards(directory: Path) -> None:
    """Delete every shard (after the artifacts they made are written)."""
    shutil.rmtree(Path(directory) / SHARDS_DIR, ignore_errors=True)


def ray_features_and_words(run, backbone, codebook: AnyCodebook, feature_key: dict, grid: tuple[int, int]) -> dict:
    """Both passes on Ray for ``run`` (a :class:`~mlfix.pipeline.index.IndexRun`): fits ``codebook``,
    writes the features artifacts; returns the engine record's ``address``, ``actors``, ``gpus``.
    ``grid`` is (cells per side, channels) of ``backbone`` at the run's image size."""
    settings = run.settings
    address = settings.ray_address
    connect(address)  # first: without ray installed, an EngineError that says what to do
    import ray
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False  # mlfix's own bar counts images
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    plan = cluster_plan(run.device)
    folder = shards_folder(run, settings.words_key(feature_key))
    side, channels = grid
    model = {"model": ray.put(backbone), "device": plan["device"], "threads": plan["threads"],
             "tta_flip": settings.tta_flip, "grid": (side, channels, backbone.pooled_dim), "pause": PAUSE_S}
    run.progress.plan("features", len(run.samples))  # the full pass comes next: part of the overall estimate
    if not is_fitted(codebook) and not _load_codebook(codebook, folder):  # else trained with the backbone
        rows, keep = sample_plan(len(run.samples), side * side, codebook.sample_size, codebook.seed)
        _fit_codebook(run, codebook, plan, rows, {**model, "keep": keep, "seed": codebook.seed})
        save_codebook(codebook, folder)
    chunks = _full_pass(run, plan, folder, {**model, "codebook": ray.put(codebook_state(codebook))})
    _assemble(run, folder, chunks, (side, backbone.pooled_dim), feature_key)
    return {"address": address, "actors": plan["actors"], "gpus": plan["gpus"]}


def _load_codebook(codebook: AnyCodebook, folder: Path) -> bool:
    """The codebook a driver that died fitted for these shards, when there is one: its fitted
    attributes (scikit-learn's trailing ``_``) into ``codebook``."""
    saved = load_codebook(folder)
    if type(saved) is not type(codebook):
        return False
    vars(codebook).update({name: value for name, value in vars(saved).items() if name.endswith("_")})
    return True


def _pipeline(run, items: list[dict], plan: dict, statistics: bool, actor: dict) -> Iterator[dict]:
    """chunks -> decode tasks -> model actors; the actors' results as they finish (any order)."""
    import ray

    dataset = ray.data.from_items(items, override_num_blocks=len(items))
    dataset = dataset.map(decode_chunk, fn_kwargs={"root": run.root, "image_size": run.settings.image_size,
                                                   "statistics": statistics}, num_cpus=DECODE_CPUS)
    dataset = dataset.map(ChunkModel, compute=ray.data.ActorPoolStrategy(size=plan["actors"]),
                          fn_constructor_kwargs=actor, num_cpus=plan["num_cpus"], num_gpus=plan["num_gpus"])
    return dataset.iter_rows()


def _fit_codebook(run, codebook: AnyCodebook, plan: dict, rows: np.ndarray, actor: dict) -> None:
    """Pass 1: the sample plan's images through the pipeline, their sampled cells in row order, the fit."""
    progress = run.progress.stage("codebook sample")
    sampled: dict[int, np.ndarray] = {}
    failures: list[pd.DataFrame] = []
    done = 0
    for result in _pipeline(run, chunk_items(run.samples, rows, run.settings.batch_size), plan, False, actor):
        sampled[int(result["chunk"])] = result["cells"]
        failures.append(decode_failures(run.samples, result["rows"], result["errors"]))
        done += len(result["rows"])
        progress(done, len(rows))
    kept = [sampled[chunk] for chunk in sorted(sampled) if len(sampled[chunk])]
    if not kept:  # not one image of the sample decoded
        from mlfix.pipeline.index_outputs import no_readable_samples

        no_readable_samples(run.dir, pd.concat([run.problems, *failures], ignore_index=True))
    run.progress.update("codebook", 0, 1)
    fit_codebook(codebook, np.concatenate(kept))
    run.progress.update("codebook", 1, 1)


def _full_pass(run, plan: dict, folder: Path, actor: dict) -> int:
    """Pass 2: every chunk without a shard through the pipeline, each result written as its shard.
    Returns the number of chunks."""
    n, batch_size = len(run.samples), run.settings.batch_size
    chunks = math.ceil(n / batch_size)
    finished = set(finished_chunks(folder))
    progress = run.progress.stage("features")
    done = sum(min(batch_size, n - chunk * batch_size) for chunk in finished)
    progress(done, n)
    items = chunk_items(run.samples, np.arange(n), batch_size, skip=finished)
    if items:
        for result in _pipeline(run, items, plan, True, actor):
            write_shard(folder, int(result["chunk"]), {name: result[name] for name in SHARD_ARRAYS})
            done += len(result["rows"])
            progress(done, n)
    return chunks


SHARD_ARRAYS = ("rows", "ok", "pooled", "words", "stats", "hashes", "errors", "pid")


def _assemble(run, folder: Path, chunks: int, grid: tuple[int, int], feature_key: dict) -> None:
    """The shards in row order -> the local two-pass route's artifacts: words, pooled, ok, quality,
    problems and sample status, then ``features.key.json``. Streams the arrays: flat memory in N."""
    from mlfix.pipeline.index_outputs import record_features_pass

    features_dir, n = run.dir / "features", len(run.samples)
    side, dim = grid
    ok = np.zeros(n, dtype=bool)
    stats = np.full((n, len(QUALITY_STATS)), np.nan, dtype=np.float32)
    hashes = np.zeros(n, dtype=np.int64)
    failures = []
    with atomic_path(features_dir / "words.npy", suffix=".npy") as words_tmp, \
            atomic_path(features_dir / "pooled.npy", suffix=".npy") as pooled_tmp:
        words, pooled = NpyStream(words_tmp, (n, side, side), np.uint16), NpyStream(pooled_tmp, (n, dim), np.float16)
        try:
            for chunk in range(chunks):
                shard = read_shard(folder, chunk)
                rows = shard["rows"]
                words.write(shard["words"])
                pooled.write(shard["pooled"])
                ok[rows], stats[rows], hashes[rows] = shard["ok"], shard["stats"], shard["hashes"]
                if not shard["ok"].all():
                    failures.append(decode_failures(run.samples, rows, shard["errors"]))
        finally:
            words.close()
            pooled.close()
    record_features_pass(run, ok, hashes, stats, pd.concat([problems_frame([]), *failures], ignore_index=True),
                         feature_key)
    (features_dir / "cells.npy").unlink(missing_ok=True)
    write_key(features_dir / "features.key.json", {**feature_key, "cells": False})
