"""The indexing pipeline of a project: features -> visual words -> bags of words -> orderings.

Each stage's artifact has a key (the settings and inputs that made it); a stage runs only when its
key changed. Cell vectors are handled in one of two ways, chosen by their size:

- they fit ``cell_cache_gb`` (float16 on disk): one pass over the images stores them in
  ``features/cells.npy``; KMeans samples from it and every cell is assigned from it. A new number of
  words then costs no forward pass.
- they do not: a first pass over a random subset of the images collects the KMeans sample, then the
  full pass assigns each batch's cells to words as they come. Memory stays bounded for any N.

The codebook is the project's ``codebook`` setting (KMeans or a learned VQ codebook, made by
:mod:`mlfix.pipeline.codebooks`). Both routes fit it on the same cells:
:func:`~mlfix.pipeline.codebook.sample_plan`'s images, :func:`~mlfix.pipeline.codebook.sample_cells`
of each. ``engine = "ray"`` runs the two-pass route on
a Ray cluster (:mod:`mlfix.pipeline.ray_engine`) into the same artifacts and keys; every features pass
records which engine ran it in ``features/engine.json`` (:func:`~mlfix.pipeline.artifacts.read_engine`).

Two similarity orders are written, each with its own key: by bags of words (``orders/``) and by
pooled embedding (``orders/by-embedding/``, keyed by the features, not the words): a project indexed
before the embedding order existed gains it on its next index run without a new pass over the images.

The full pass also measures every image for the quality checks (``features/quality.parquet``, keyed by
the features: :mod:`mlfix.data.quality`); a project whose features were extracted before that gains
it on its next index run from a decode-only pass (stage "image quality"), without a feature pass.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from mlfix.atomic import atomic_path, write_json_atomic
from mlfix.data.images import DataRoot
from mlfix.data.quality import QUALITY_FILE, QUALITY_KEY
from mlfix.data.scan import problems_frame
from mlfix.errors import NotAProjectError
from mlfix.pipeline.artifacts import atomic_save_npy, frame_digest, read_key, same_key, write_engine, write_key
from mlfix.pipeline.codebook import pack_bags, sample_cells, sample_plan
from mlfix.pipeline.codebooks import (AnyCodebook, assign_words, create_codebook, fit_codebook, is_fitted,
                                      save_codebook, trained_codebook)
from mlfix.pipeline.index_outputs import no_readable_samples, record_features_pass, write_quality
from mlfix.pipeline.ordering import ORDERINGS
from mlfix.progress import Progress
from mlfix.settings import IndexSettings

ASSIGN_CHUNK = 2048  # images per assignment chunk from the cell cache
COMBINED_MAX = 100_000  # images up to which the combined order is built: (N, D + k) float32 in memory
COMBINED_VERSION = 1  # part of the combined order's key: bump when its recipe changes


@dataclass
class IndexRun:
    """What one indexing run works on: the project folder, its settings and data, where to report."""

    dir: Path
    settings: IndexSettings
    root: DataRoot
    samples: pd.DataFrame
    progress: Progress
    workers: int | None = None
    device: str | None = None

    @property
    def problems(self) -> pd.DataFrame:
        path = self.dir / "problems.parquet"
        return pd.read_parquet(path) if path.exists() else problems_frame([])


def run_index(directory: Path, settings: IndexSettings, root: DataRoot, weights: str, weights_id: object,
              progress: Progress, workers: int | None = None, device: str | None = None) -> None:
    """Make (or reuse) every index artifact of the project folder ``directory``.

    ``weights`` is what :func:`~mlfix.pipeline.backbone.create_backbone` takes (a keyword or a file)
    and ``weights_id`` its identity in the cache key (both from the facade, which knows the project's
    checkpoints). The sample table is read from ``samples.parquet``; decode failures are written back
    to it and to ``problems.parquet``.
    """
    if not (directory / "samples.parquet").is_file():  # e.g. a mlfix.toml written by hand
        raise NotAProjectError(f"{directory} has no sample table (samples.parquet): scan the images first "
                               f"with `mlfix index --images PATH --project {directory}`")
    samples = pd.read_parquet(directory / "samples.parquet")
    if len(samples) == 0:
        no_readable_samples(Path(directory))
    from mlfix.pipeline.backbone import architecture

    run = IndexRun(Path(directory), settings, root, samples, progress, workers, device)
    # the timm architecture too: when mlfix changes what a backbone name builds (EfficientNet-Lite
    # became timm's tf_ variant), features cached by the old build are recomputed, not reused
    feature_key = settings.feature_key(
        frame_digest(samples, ["sample_id", "path", "box_x", "box_y", "box_w", "box_h"]),
        architecture(settings.backbone), weights_id)
    words_key = settings.words_key(feature_key)
    features_dir, codebook_dir = run.dir / "features", run.dir / "codebook"
    if read_key(features_dir / "words.key.json") != words_key:
        _features_and_words(run, weights, feature_key, words_key)
    if not same_key(run.dir / QUALITY_KEY, feature_key) or not (run.dir / QUALITY_FILE).exists():
        _measure_quality(run, feature_key)  # features cached before the statistics existed
    if read_key(codebook_dir / "bags.key.json") != words_key:
        words = np.load(features_dir / "words.npy", mmap_mode="r")
        progress.update("bags", 0, 1)
        atomic_save_npy(codebook_dir / "bags.npy", pack_bags(words, settings.words))
        write_key(codebook_dir / "bags.key.json", words_key)
        progress.update("bags", 1, 1)
    labels_digest = frame_digest(run.samples, ["label"])
    order_key = settings.order_key(words_key, labels_digest)
    if read_key(run.dir / "orders" / "orders.key.json") != order_key:
        _orders(run, order_key)
    embedding_key = _embedding_order_key(feature_key, labels_digest)
    if read_key(run.dir / ORDERINGS["embedding"] / "orders.key.json") != embedding_key:
        _embedding_orders(run, embedding_key)  # a project indexed before gains it without a new pass
    combined_key = {**embedding_key, **words_key, "ordering": "combined", "combined_version": COMBINED_VERSION}
    if len(run.samples) > COMBINED_MAX:
        run.progress.note(f"the combined order is built up to {COMBINED_MAX:,} images (its vectors are "
                          f"{COMBINED_MAX * 2304 * 4 / 2**30:.1f} GB there); this project has "
                          f"{len(run.samples):,}: the embedding and words orders serve it", stage="orders")
    elif read_key(run.dir / ORDERINGS["combined"] / "orders.key.json") != combined_key:
        _combined_orders(run, combined_key)


def _features_and_words(run: IndexRun, weights: str, feature_key: dict, words_key: dict) -> None:
    import torch

    from mlfix.pipeline.backbone import create_backbone

    settings = run.settings
    torch.manual_seed(settings.seed)  # random init is part of the key through the seed
    backbone = create_backbone(settings.backbone, weights, settings.cell_stride).eval()
    size = settings.image_size
    with torch.inference_mode():
        cells, _ = backbone(torch.zeros(1, 3, size, size))
    _, channels, side, _ = cells.shape
    cache_bytes = len(run.samples) * side * side * channels * 2
    codebook = create_codebook(settings.codebook, k=settings.words, seed=settings.seed,
                               niter=settings.kmeans_iterations)
    if settings.codebook == "vq":  # the codebook trained with the backbone, when its weights carry one
        codebook, note = trained_codebook(codebook, weights, channels)
        if note:
            run.progress.note(note, stage="codebook")
    start = time.perf_counter()
    record = _run_engine(run, codebook, backbone, feature_key, (side, channels), cache_bytes)
    if codebook.fit_info_.get("advice"):  # a small set: mlfix's advice instead of faiss's warning
        run.progress.note(codebook.fit_info_["advice"], stage="codebook")
    save_codebook(codebook, run.dir / "codebook")
    write_key(run.dir / "features" / "words.key.json", words_key)
    write_engine(run.dir, {"engine": settings.engine, **record, "images": len(run.samples),
                           "seconds": round(time.perf_counter() - start, 3)})
    if settings.engine == "ray":
        from mlfix.pipeline.ray_engine import forget_shards

        forget_shards(run.dir)  # after the key: a driver that dies before it keeps its finished chunks


def _run_engine(run: IndexRun, codebook: AnyCodebook, backbone, feature_key: dict, shape: tuple[int, int],
                cache_bytes: int) -> dict:
    """Features and words by the chosen engine and route; the engine record's address, actors, gpus."""
    if run.settings.engine == "ray":  # the two-pass route on a Ray cluster: the same artifacts
        from mlfix.pipeline.ray_engine import ray_features_and_words

        return ray_features_and_words(run, backbone, codebook, feature_key, shape)
    if cache_bytes <= run.settings.cell_cache_gb * 2**30:
        _words_from_cell_cache(run, codebook, backbone, feature_key, shape)
    else:
        _words_in_two_passes(run, codebook, backbone, feature_key, shape)
    import torch

    device = str(run.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return {"address": None, "actors": 0, "gpus": int(device.startswith("cuda"))}


def _extract(run: IndexRun, samples: pd.DataFrame, backbone, on_cells, stage: str, pooled_out=None,
             statistics: bool = False):
    from mlfix.pipeline.features import extract

    settings = run.settings
    return extract(run.root, samples, backbone, settings.image_size, batch_size=settings.batch_size,
                   workers=run.workers, device=run.device, on_cells=on_cells,
                   progress=run.progress.stage(stage), pooled_out=pooled_out, tta_flip=settings.tta_flip,
                   statistics=statistics)


def _extract_all(run: IndexRun, backbone, on_cells, feature_key: dict) -> np.ndarray:
    """Full pass: pooled vectors to features/pooled.npy, decode failures to the problems table,
    the images' quality statistics to features/quality.parquet (keyed by ``feature_key``)."""
    features_dir = run.dir / "features"
    with atomic_path(features_dir / "pooled.npy", suffix=".npy") as tmp_pooled:
        result = _extract(run, run.samples, backbone, on_cells, "features", pooled_out=tmp_pooled,
                          statistics=True)
        del result.pooled  # the memory map: closed before the rename
    record_features_pass(run, result.ok, result.content_hash, result.stats, result.problems, feature_key)
    return result.ok


def _words_from_cell_cache(run: IndexRun, codebook: AnyCodebook, backbone, feature_key: dict,
                           shape: tuple[int, int]) -> None:
    features_dir = run.dir / "features"
    side, channels = shape
    n = len(run.samples)
    cells_path = features_dir / "cells.npy"
    if read_key(features_dir / "features.key.json") != {**feature_key, "cells": True} or not cells_path.exists():
        with atomic_path(cells_path, suffix=".npy") as tmp:
            cache = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, side, side, channels))

            def store(rows: np.ndarray, cells: np.ndarray) -> None:
                cache[rows] = cells

            _extract_all(run, backbone, store, feature_key)
            cache.flush()
            del cache
        write_key(features_dir / "features.key.json", {**feature_key, "cells": True})
    cells = np.load(cells_path, mmap_mode="r")
    ok = np.load(features_dir / "ok.npy")
    if not is_fitted(codebook):  # not trained with the backbone
        plan_rows, keep = sample_plan(n, side * side, codebook.sample_size, codebook.seed)
        plan_rows = plan_rows[ok[plan_rows]]  # the images of the plan that decoded
        kept = [sample_cells(rows, np.asarray(cells[rows], dtype=np.float32), keep, codebook.seed)
                for rows in np.array_split(plan_rows, max(1, math.ceil(len(plan_rows) / ASSIGN_CHUNK)))]
        run.progress.update("codebook", 0, 1)
        fit_codebook(codebook, np.concatenate(kept))
        run.progress.update("codebook", 1, 1)
    words = np.zeros((n, side, side), dtype=np.uint16)
    for start in range(0, n, ASSIGN_CHUNK):
        words[start:start + ASSIGN_CHUNK] = assign_words(codebook, np.asarray(cells[start:start + ASSIGN_CHUNK]))
        run.progress.update("words", min(n, start + ASSIGN_CHUNK), n)
    words[~ok] = 0  # an image that did not decode has no words (its cached cells are zeros), as in two passes
    atomic_save_npy(features_dir / "words.npy", words)


def _words_in_two_passes(run: IndexRun, codebook: AnyCodebook, backbone, feature_key: dict,
                         shape: tuple[int, int]) -> None:
    features_dir = run.dir / "features"
    side, _ = shape
    n = len(run.samples)
    if not is_fitted(codebook):  # not trained with the backbone: the sample pass first
        _fit_in_a_sample_pass(run, codebook, backbone, side)
    with atomic_path(features_dir / "words.npy", suffix=".npy") as tmp:
        words = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint16, shape=(n, side, side))

        def assign(rows: np.ndarray, cells: np.ndarray) -> None:
            words[rows] = assign_words(codebook, cells)

        _extract_all(run, backbone, assign, feature_key)
        words.flush()
        del words
    (features_dir / "cells.npy").unlink(missing_ok=True)
    write_key(features_dir / "features.key.json", {**feature_key, "cells": False})


def _fit_in_a_sample_pass(run: IndexRun, codebook: AnyCodebook, backbone, side: int) -> None:
    """The first of two passes: the sample plan's images, their sampled cells, the fit."""
    n = len(run.samples)
    subset, keep = sample_plan(n, side * side, codebook.sample_size, codebook.seed)
    kept: list[np.ndarray] = []

    def collect(rows: np.ndarray, cells: np.ndarray) -> None:
        kept.append(sample_cells(subset[rows], cells, keep, codebook.seed))

    run.progress.plan("features", n)  # the full pass comes next: part of the overall estimate
    sampled = _extract(run, run.samples.iloc[subset], backbone, collect, "codebook sample")
    if not kept:  # not one image of the sample decoded
        no_readable_samples(run.dir, pd.concat([run.problems, sampled.problems], ignore_index=True))
    run.progress.update("codebook", 0, 1)
    fit_codebook(codebook, np.concatenate(kept))
    run.progress.update("codebook", 1, 1)


def _measure_quality(run: IndexRun, feature_key: dict) -> None:
    """The quality table from a decode-only pass (no backbone), for features cached without it."""
    from mlfix.data.quality import measure_images

    table = measure_images(run.root, run.samples, run.settings.image_size,
                           progress=run.progress.stage("image quality"), workers=run.workers or None)
    write_quality(run, table, feature_key)


def _orders(run: IndexRun, order_key: dict) -> None:
    from mlfix.pipeline.ordering import order as order_bags

    packed = np.load(run.dir / "codebook" / "bags.npy", mmap_mode="r")

    def by_words(rows: np.ndarray) -> np.ndarray:
        return order_bags(np.asarray(packed[rows]), exact_max=run.settings.exact_order_max)

    _write_orders(run, run.dir / ORDERINGS["words"], by_words, order_key, "orders")


def _embedding_order_key(feature_key: dict, labels_digest: str) -> dict:
    """What the embedding orders depend on: the pooled vectors (not the words) and the labels."""
    from mlfix.pipeline.ordering.embedding import EXACT_MAX, VERSION

    return {**feature_key, "labels": labels_digest, "ordering": "embedding", "version": VERSION,
            "exact_max": EXACT_MAX}


def _embedding_orders(run: IndexRun, key: dict) -> None:
    from mlfix.pipeline.ordering.embedding import embedding_order

    pooled = np.load(run.dir / "features" / "pooled.npy", mmap_mode="r")

    def by_embedding(rows: np.ndarray) -> np.ndarray:
        # every row: the memory map itself (the large-N chain reads it a cluster at a time)
        whole = len(rows) == len(pooled) and np.array_equal(rows, np.arange(len(pooled)))
        return embedding_order(pooled if whole else np.asarray(pooled[rows]))

    _write_orders(run, run.dir / ORDERINGS["embedding"], by_embedding, key, "orders (embedding)")


def _combined_orders(run: IndexRun, key: dict) -> None:
    """The chain over the pooled embedding beside the weighted bag of words (sublinear tf-idf, centre
    prior), each unit length and weighted alike (:func:`~mlfix.pipeline.ordering.weighted.index_combined_vectors`)."""
    from mlfix.pipeline.ordering.embedding import embedding_order
    from mlfix.pipeline.ordering.weighted import index_combined_vectors

    features_dir = run.dir / "features"
    words, ok = np.load(features_dir / "words.npy", mmap_mode="r"), np.load(features_dir / "ok.npy")
    vectors = index_combined_vectors(np.load(features_dir / "pooled.npy"), words, run.settings.words, ok)
    _write_orders(run, run.dir / ORDERINGS["combined"], lambda rows: embedding_order(vectors[rows]), key,
                  "orders (combined)")


def _write_orders(run: IndexRun, orders_dir: Path, order_rows: Callable[[np.ndarray], np.ndarray], key: dict,
                  stage: str) -> None:
    """One order of all readable rows (all.npy) and one per class (class-NNNN.npy), orders.json
    (label -> file), then the key. ``order_rows(rows)`` returns a permutation of ``rows``' positions."""
    ok = np.load(run.dir / "features" / "ok.npy")
    labels = run.samples["label"]
    groups = {None: np.flatnonzero(ok)}
    for label in sorted(labels.dropna().unique()):
        groups[label] = np.flatnonzero(ok & (labels == label).fillna(False).to_numpy())
    names = {}
    for done, (label, rows) in enumerate(groups.items(), start=1):
        name = "all" if label is None else f"class-{done - 2:04d}"
        order = order_rows(rows)
        atomic_save_npy(orders_dir / f"{name}.npy", rows[order].astype(np.int64))
        if label is not None:
            names[label] = name
        run.progress.update(stage, done, len(groups))
    write_json_atomic(orders_dir / "orders.json", {"labels": names}, ensure_ascii=False, indent=1)
    write_key(orders_dir / "orders.key.json", key)
