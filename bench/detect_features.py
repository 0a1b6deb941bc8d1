"""Cached pooled features for the detection benchmark (bench/detect.py).

Features are extracted once per (dataset, first N images, backbone, input size, flip) and cached in
bench/results/ (git-ignored) as ``features_<key>.npz`` holding ``pooled`` (N, D) float16 and
``cells_mean`` (N, C) float16 (the stride-16 cell grid averaged over the image: a mid-level feature
that costs nothing extra to keep). The key names the timm architecture mlfix builds for the backbone
(``tf_efficientnet_lite0`` for ``efficientnet_lite0``), so features from an older build are not reused.
``flip`` caches the mirrored images' features; :func:`flip_averaged` is the flip test-time augmentation.
An ensemble (``efficientnet_lite0+efficientnet_lite2``) is its members' cached features side by side
(cells: the first member's), which is what ``mlfix.pipeline.backbone.BackboneEnsemble`` computes
(tests/pipeline/test_backbone_ensemble.py); its flip average is therefore the members' flip averages.

``mlfix.pipeline.features.extract`` is used when it exists; until then (and as a fallback) a plain batched loop
over the same ``image_transform`` gives the same vectors.

Run alone to fill the cache:
``python -m bench.detect_features cifar10n 10000 224 [--flip] [--backbone efficientnet_lite1]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import RESULTS_DIR, SHARED_DATA


# How each data set is subsampled: CIFAR-10N's first N images (its order is already random);
# GTSRB's files are sorted by class, so a seeded random subset (kept in file order).
SUBSET_SEED = {"cifar10n": None, "gtsrb35": 0}


def load_labels(dataset: str, n: int | None) -> pd.DataFrame:
    """labels.csv of a shared data set, ``n`` rows (see SUBSET_SEED), with a ``sample_id`` column."""
    table = pd.read_csv(SHARED_DATA / dataset / "labels.csv", dtype=str, keep_default_na=False)
    if n is not None and n < len(table):
        seed = SUBSET_SEED.get(dataset)
        rows = np.arange(n) if seed is None else np.sort(
            np.random.default_rng(seed).choice(len(table), n, replace=False))
        table = table.iloc[rows].reset_index(drop=True)
    table.insert(0, "sample_id", table["path"])
    return table


DEFAULT_BACKBONE = "efficientnet_lite0"


def _arch(backbone: str) -> str:
    from mlfix.pipeline.backbone import architecture

    return architecture(backbone)


def cache_path(dataset: str, n: int, size: int, flip: bool, backbone: str = DEFAULT_BACKBONE) -> Path:
    return RESULTS_DIR / f"features_{dataset}_{n}_{_arch(backbone)}_{size}{'_flip' if flip else ''}.npz"


def features(dataset: str, n: int, size: int, flip: bool = False, backbone: str = DEFAULT_BACKBONE,
             batch_size: int = 64, log=print) -> dict[str, np.ndarray]:
    """Pooled and cell-mean features for the first ``n`` images of ``dataset`` (cached)."""
    from mlfix.pipeline.backbone import ENSEMBLE_SEPARATOR

    if ENSEMBLE_SEPARATOR in backbone:
        parts = [features(dataset, n, size, flip, member, batch_size, log)
                 for member in backbone.split(ENSEMBLE_SEPARATOR)]
        return {"pooled": np.hstack([part["pooled"] for part in parts]), "cells_mean": parts[0]["cells_mean"],
                "seconds": np.array(sum(float(part["seconds"]) for part in parts))}
    path = cache_path(dataset, n, size, flip, backbone)
    if path.exists():
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    table = load_labels(dataset, n)
    start = time.perf_counter()
    out = _extract(dataset, table, size, flip, backbone, batch_size, log)
    out["seconds"] = np.array(time.perf_counter() - start)
    RESULTS_DIR.mkdir(exist_ok=True)
    np.savez(path, **out)
    return out


def flip_averaged(dataset: str, n: int, size: int, backbone: str = DEFAULT_BACKBONE,
                  log=print) -> dict[str, np.ndarray]:
    """Features averaged over each image and its mirror image (flip test-time augmentation)."""
    plain, mirrored = (features(dataset, n, size, flip, backbone, log=log) for flip in (False, True))
    return {key: ((plain[key].astype(np.float32) + mirrored[key].astype(np.float32)) / 2).astype(np.float16)
            for key in ("pooled", "cells_mean")}


def _extract(dataset, table, size, flip, backbone_name, batch_size, log) -> dict[str, np.ndarray]:
    import torch

    from mlfix.pipeline.backbone import create_backbone, image_transform
    from mlfix.data.images import DataRoot, load_image

    torch.manual_seed(0)
    # channels_last on both model and input: about 2x faster on this CPU
    backbone = create_backbone(backbone_name, weights="offline").eval().to(memory_format=torch.channels_last)
    root = DataRoot(SHARED_DATA / dataset / "images.zip")
    transform = image_transform(size)
    pooled, cells_mean = [], []
    rows = table.to_dict("records")
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            batch = torch.stack([transform(load_image(root, r)) for r in rows[start:start + batch_size]])
            if flip:
                batch = torch.flip(batch, dims=[3])
            cells, pool = backbone(batch.contiguous(memory_format=torch.channels_last))
            pooled.append(pool.float().numpy().astype(np.float16))
            cells_mean.append(cells.float().mean(dim=(2, 3)).numpy().astype(np.float16))
            if (start // batch_size) % 20 == 0:
                log(f"{dataset} {size}px flip={flip}: {start + len(batch)}/{len(rows)}", file=sys.stderr)
    return {"pooled": np.concatenate(pooled), "cells_mean": np.concatenate(cells_mean)}


def bags_path(dataset: str, n: int, size: int, k: int, backbone: str = DEFAULT_BACKBONE) -> Path:
    return RESULTS_DIR / f"bags_{dataset}_{n}_{_arch(backbone)}_{size}_k{k}.npz"


def word_bags(dataset: str, n: int, size: int, k: int = 1024, backbone: str = DEFAULT_BACKBONE,
              seed: int = 0, log=print) -> dict[str, np.ndarray]:
    """Bags of visual words (packed, as a project's codebook/bags.npy) plus the pooled vectors of the
    same pass, through ``mlfix.pipeline.features.extract`` and ``mlfix.pipeline.codebook`` (cached)."""
    path = bags_path(dataset, n, size, k, backbone)
    if path.exists():
        with np.load(path) as data:
            return {key: data[key] for key in data.files}
    import torch

    from mlfix.pipeline.backbone import create_backbone
    from mlfix.pipeline.codebook import Codebook, pack_bags
    from mlfix.data.images import DataRoot
    from mlfix.pipeline.features import extract

    torch.manual_seed(0)
    table = load_labels(dataset, n)
    table = table.assign(box_x=np.nan, box_y=np.nan, box_w=np.nan, box_h=np.nan)
    backbone = create_backbone(backbone, weights="offline")
    side = backbone.grid_size(size)
    cells = np.zeros((len(table), side, side, backbone.cell_channels), dtype=np.float16)

    def keep(rows: np.ndarray, batch: np.ndarray) -> None:
        cells[rows] = batch.astype(np.float16)

    start = time.perf_counter()
    result = extract(DataRoot(SHARED_DATA / dataset / "images.zip"), table, backbone, size, on_cells=keep,
                     progress=lambda done, total: done % 1280 < 64 and log(f"bags {done}/{total}",
                                                                             file=sys.stderr))
    flat = cells.reshape(-1, cells.shape[-1]).astype(np.float32)
    codebook = Codebook(k=k, seed=seed).fit(flat)
    words = codebook.assign(cells.astype(np.float32))
    out = {"bags": pack_bags(words, k), "pooled": result.pooled, "ok": result.ok,
           "seconds": np.array(time.perf_counter() - start)}
    np.savez(path, **out)
    return out


if __name__ == "__main__":
    if sys.argv[1] == "bags":
        data = word_bags(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        print(sys.argv, data["bags"].shape, float(data["seconds"]))
        sys.exit(0)
    import argparse

    p = argparse.ArgumentParser(description="fill the feature cache of bench/detect.py")
    p.add_argument("dataset")
    p.add_argument("n", type=int)
    p.add_argument("size", type=int)
    p.add_argument("--flip", action="store_true", help="the mirrored images' features")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help="a backbone with offline weights")
    a = p.parse_args()
    data = features(a.dataset, a.n, a.size, flip=a.flip, backbone=a.backbone)
    print(vars(a), data["pooled"].shape, float(data["seconds"]))
