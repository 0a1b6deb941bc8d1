"""The indexing pipeline of a project: features -> visual words -> bags of words -> orderings.

Each stage's artifact has a key (the settings and inputs that made it); a stage runs only when its
key changed. Cell vectors are handled in one of two ways, chosen by their size:

- they fit ``cell_cache_gb`` (float16 on disk): one pass over the images stores them in
  ``features/cells.npy``; KMeans samples from it and every cell is assigned from it. A new number of
  words then costs no forward pass.
- they do not: a first pass over a random subset of the images collects the KMeans sample, then the
  full pass assigns each batch's cells to words as they come. Memory stays bounded for any N.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from mlfix.codebook import Codebook, pack_bags
from mlfix.progress import Progress
from mlfix.project import (Project, _atomic_parquet, atomic_save_npy, frame_digest, read_key,
                           write_key)

ASSIGN_CHUNK = 2048  # images per assignment chunk from the cell cache


def run_index(project: Project, progress: Progress, workers: int | None = None,
              device: str | None = None) -> None:
    settings, samples = project.settings, project.samples
    if len(samples) == 0:
        raise ValueError(f"project {project.dir} has no readable samples; see its problems table")
    from mlfix.backbone import architecture

    weights, weights_id = resolve_weights(project)
    # the timm architecture too: when mlfix changes what a backbone name builds (EfficientNet-Lite
    # became timm's tf_ variant), features cached by the old build are recomputed, not reused
    feature_key = {"samples": frame_digest(samples, ["sample_id", "path", "box_x", "box_y", "box_w", "box_h"]),
                   "backbone": settings["backbone"], "architecture": architecture(settings["backbone"]),
                   "weights": weights_id,
                   "image_size": int(settings["image_size"]), "cell_stride": int(settings["cell_stride"])}
    if settings.get("tta_flip"):  # only when on: projects indexed before it keep their features
        feature_key["tta_flip"] = True
    words_key = {**feature_key, "words": int(settings["words"]), "seed": int(settings["seed"]),
                 "kmeans_iterations": int(settings["kmeans_iterations"])}
    features_dir, codebook_dir = project.dir / "features", project.dir / "codebook"
    if read_key(features_dir / "words.key.json") != words_key:
        _features_and_words(project, weights, feature_key, words_key, progress, workers, device)
    if read_key(codebook_dir / "bags.key.json") != words_key:
        words = np.load(features_dir / "words.npy", mmap_mode="r")
        progress.update("bags", 0, 1)
        atomic_save_npy(codebook_dir / "bags.npy", pack_bags(words, int(settings["words"])))
        write_key(codebook_dir / "bags.key.json", words_key)
        progress.update("bags", 1, 1)
    order_key = {**words_key, "labels": frame_digest(samples, ["label"]),
                 "exact_order_max": int(settings["exact_order_max"])}
    if read_key(project.dir / "orders" / "orders.key.json") != order_key:
        _orders(project, order_key, progress)


def resolve_weights(project: Project) -> tuple[str, object]:
    """The weights argument for the backbone and an identity for the cache key."""
    weights = str(project.settings["weights"])
    if weights == "auto":
        trained = project.trained_weights()
        weights = str(trained) if trained is not None and _checkpoint_fits(trained, project) else "random"
    if weights in ("random", "imagenet", "offline"):
        return weights, weights
    path = Path(weights).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    stat = path.stat()
    return str(path), {"file": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _checkpoint_fits(path: Path, project: Project) -> bool:
    """A trained checkpoint is used only for the backbone architecture it was trained for."""
    from mlfix.pretrain import checkpoint_summary

    summary = checkpoint_summary(path.parent) or {}
    return (summary.get("settings") or {}).get("backbone") == project.settings["backbone"]


def _features_and_words(project: Project, weights: str, feature_key: dict, words_key: dict,
                        progress: Progress, workers: int | None, device: str | None) -> None:
    import torch

    from mlfix.backbone import create_backbone

    settings, samples = project.settings, project.samples
    torch.manual_seed(int(settings["seed"]))  # random init is part of the key through the seed
    backbone = create_backbone(settings["backbone"], weights, int(settings["cell_stride"])).eval()
    size = int(settings["image_size"])
    with torch.inference_mode():
        cells, _ = backbone(torch.zeros(1, 3, size, size))
    _, channels, side, _ = cells.shape
    cache_bytes = len(samples) * side * side * channels * 2
    codebook = Codebook(k=int(settings["words"]), seed=int(settings["seed"]),
                        niter=int(settings["kmeans_iterations"]))
    run = dict(project=project, backbone=backbone, workers=workers, device=device, progress=progress)
    if cache_bytes <= float(settings["cell_cache_gb"]) * 2**30:
        _words_from_cell_cache(codebook, feature_key, (side, channels), **run)
    else:
        _words_in_two_passes(codebook, feature_key, (side, channels), **run)
    centroids_path = project.dir / "codebook" / "centroids.npy"
    atomic_save_npy(centroids_path, codebook.centroids_)
    (project.dir / "codebook" / "fit.json").write_text(json.dumps(codebook.fit_info_, indent=1))
    write_key(project.dir / "features" / "words.key.json", words_key)


def _extract_all(project, backbone, on_cells, workers, device, progress) -> np.ndarray:
    """Full pass: pooled vectors to features/pooled.npy, decode failures to the problems table."""
    from mlfix.features import extract

    settings, features_dir = project.settings, project.dir / "features"
    tmp_pooled = features_dir / "pooled.tmp.npy"
    result = extract(project.root, project.samples, backbone, int(settings["image_size"]),
                     batch_size=int(settings["batch_size"]), workers=workers, device=device,
                     on_cells=on_cells, progress=progress.stage("features"), pooled_out=tmp_pooled,
                     tta_flip=bool(settings.get("tta_flip")))
    del result.pooled
    os.replace(tmp_pooled, features_dir / "pooled.npy")
    atomic_save_npy(features_dir / "ok.npy", result.ok)
    _record_decode_failures(project, result.ok, result.problems)
    return result.ok


def _words_from_cell_cache(codebook: Codebook, feature_key: dict, shape: tuple[int, int], *, project,
                           backbone, workers, device, progress) -> None:
    features_dir = project.dir / "features"
    side, channels = shape
    n = len(project.samples)
    cells_path = features_dir / "cells.npy"
    if read_key(features_dir / "features.key.json") != {**feature_key, "cells": True} or not cells_path.exists():
        features_dir.mkdir(parents=True, exist_ok=True)
        tmp = features_dir / "cells.tmp.npy"
        cache = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, side, side, channels))

        def store(rows: np.ndarray, cells: np.ndarray) -> None:
            cache[rows] = cells

        _extract_all(project, backbone, store, workers, device, progress)
        cache.flush()
        del cache
        os.replace(tmp, cells_path)
        write_key(features_dir / "features.key.json", {**feature_key, "cells": True})
    cells = np.load(cells_path, mmap_mode="r")
    ok_rows = np.flatnonzero(np.load(features_dir / "ok.npy"))
    flat = cells.reshape(n * side * side, channels)
    per_image = side * side
    total = len(ok_rows) * per_image
    rng = np.random.default_rng(codebook.seed)
    picks = np.sort(rng.choice(total, min(total, codebook.sample_size), replace=False))
    sample_rows = ok_rows[picks // per_image] * per_image + picks % per_image
    progress.update("codebook", 0, 1)
    codebook.fit(np.asarray(flat[sample_rows], dtype=np.float32))
    progress.update("codebook", 1, 1)
    words = np.zeros((n, side, side), dtype=np.uint16)
    for start in range(0, n, ASSIGN_CHUNK):
        words[start:start + ASSIGN_CHUNK] = codebook.assign(np.asarray(cells[start:start + ASSIGN_CHUNK]))
        progress.update("words", min(n, start + ASSIGN_CHUNK), n)
    atomic_save_npy(features_dir / "words.npy", words)


def _words_in_two_passes(codebook: Codebook, feature_key: dict, shape: tuple[int, int], *, project,
                         backbone, workers, device, progress) -> None:
    from mlfix.features import extract

    features_dir = project.dir / "features"
    side, channels = shape
    samples, settings = project.samples, project.settings
    n, per_image = len(samples), side * side
    rng = np.random.default_rng(codebook.seed)
    images_needed = min(n, math.ceil(1.25 * codebook.sample_size / per_image))
    subset = np.sort(rng.choice(n, images_needed, replace=False))
    keep = max(1, math.ceil(codebook.sample_size / images_needed))
    kept: list[np.ndarray] = []

    def collect(rows: np.ndarray, cells: np.ndarray) -> None:
        flat = cells.reshape(len(rows), per_image, channels)
        choice = rng.random((len(rows), per_image)).argsort(axis=1)[:, :keep]
        kept.append(np.take_along_axis(flat, choice[..., None], axis=1).reshape(-1, channels))

    extract(project.root, samples.iloc[subset], backbone, int(settings["image_size"]),
            batch_size=int(settings["batch_size"]), workers=workers, device=device,
            on_cells=collect, progress=progress.stage("codebook sample"),
            tta_flip=bool(settings.get("tta_flip")))
    progress.update("codebook", 0, 1)
    codebook.fit(np.concatenate(kept))
    progress.update("codebook", 1, 1)
    features_dir.mkdir(parents=True, exist_ok=True)
    tmp = features_dir / "words.tmp.npy"
    words = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint16, shape=(n, side, side))

    def assign(rows: np.ndarray, cells: np.ndarray) -> None:
        words[rows] = codebook.assign(cells)

    _extract_all(project, backbone, assign, workers, device, progress)
    words.flush()
    os.replace(tmp, features_dir / "words.npy")
    (features_dir / "cells.npy").unlink(missing_ok=True)
    write_key(features_dir / "features.key.json", {**feature_key, "cells": False})


def _record_decode_failures(project: Project, ok: np.ndarray, failures: pd.DataFrame) -> None:
    samples = project.samples.copy()
    samples["status"] = np.where(ok, "ok", "unreadable")
    samples["status"] = samples["status"].astype("string")
    _atomic_parquet(samples, project.dir / "samples.parquet")
    problems = project.problems
    problems = problems[problems["stage"] != "decode"]
    _atomic_parquet(pd.concat([problems, failures], ignore_index=True), project.dir / "problems.parquet")


def _orders(project: Project, order_key: dict, progress: Progress) -> None:
    from mlfix.ordering import order as order_bags

    orders_dir = project.dir / "orders"
    samples = project.samples
    ok = np.load(project.dir / "features" / "ok.npy")
    packed = np.load(project.dir / "codebook" / "bags.npy", mmap_mode="r")
    exact_max = int(project.settings["exact_order_max"])
    labels = samples["label"]
    groups = {None: np.flatnonzero(ok)}
    for i, label in enumerate(sorted(labels.dropna().unique())):
        groups[label] = np.flatnonzero(ok & (labels == label).fillna(False).to_numpy())
    names = {}
    for done, (label, rows) in enumerate(groups.items(), start=1):
        name = "all" if label is None else f"class-{done - 2:04d}"
        order = order_bags(np.asarray(packed[rows]), exact_max=exact_max)
        atomic_save_npy(orders_dir / f"{name}.npy", rows[order].astype(np.int64))
        if label is not None:
            names[label] = name
        progress.update("orders", done, len(groups))
    (orders_dir / "orders.json").write_text(json.dumps({"labels": names}, ensure_ascii=False, indent=1))
    write_key(orders_dir / "orders.key.json", order_key)

