"""Storage per image of every project artifact, measured on a real project (``bench.scale --only storage``).

Indexes a seeded ``n`` of the flowers17 photos with the defaults that matter for sizes (EfficientNet-Lite0
offline at 224 px: a 14 x 14 word grid; 1,024 words), computes the scores, makes the Review page's
thumbnails (128 px JPEG), then sums the bytes of each artifact. Arrays whose size is fixed by the settings
(the codebook, JSON files, the decisions database) are reported whole; the rest per image, which
docs/scale.md multiplies out to 100M images.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import SHARED_DATA, emit, require_shared, timer

SEED = 0
CACHE = "features/cells.npy"  # the cell cache: only while it fits cell_cache_gb (4 GiB: ~98k images at 224 px)
PER_IMAGE = (".npy", ".parquet", ".jpg")  # arrays, tables, thumbnails: one row or file per image


def per_image(name: str) -> bool:
    """Whether an artifact grows with N (the codebook, JSON files, the settings and the decisions
    database, which grows with decisions made, do not)."""
    return name.endswith(PER_IMAGE) and name not in ("codebook/centroids.npy", "health.parquet")  # summary: a row per check


def artifact(relative: str) -> str:
    """The artifact a project file belongs to: the file for features/codebook/scores, the folder for
    orders (all.npy and one file per class) and thumbnails."""
    parts = relative.split("/")
    if parts[0] == "orders":
        return "/".join(parts[:-1]) + "/*.npy" if parts[-1].endswith(".npy") else "/".join(parts[:-1]) + "/(json)"
    if parts[0] == "thumbs":
        return "thumbs/*.jpg"
    return relative


def artifact_bytes(folder: Path) -> pd.Series:
    """Bytes per artifact of a project folder (keys, progress logs and locks left out)."""
    files = [p for p in folder.rglob("*") if p.is_file() and not p.name.endswith((".key.json", ".lock"))
             and "progress" not in p.relative_to(folder).parts]
    table = pd.DataFrame({"artifact": [artifact(p.relative_to(folder).as_posix()) for p in files],
                          "bytes": [p.stat().st_size for p in files]})
    return table.groupby("artifact")["bytes"].sum().sort_values(ascending=False)


def storage(n: int, setup: dict, bench: str = "scale") -> None:
    from mlfix.data.thumbnails import for_project
    from mlfix.project import Project

    if require_shared("flowers17") is None:
        return
    table = pd.read_csv(SHARED_DATA / "flowers17" / "labels.csv", dtype=str)
    table = table.iloc[np.sort(np.random.default_rng(SEED).choice(len(table), min(n, len(table)), replace=False))]
    with tempfile.TemporaryDirectory() as tmp:
        table[["path", "label"]].to_csv(Path(tmp) / "labels.csv", index=False)
        project = Project.create(Path(tmp) / "project", images=SHARED_DATA / "flowers17" / "images.zip",
                                 labels=Path(tmp) / "labels.csv", backbone="efficientnet_lite0", weights="offline",
                                 image_size=224, words=1024, seed=SEED)
        with timer() as took:
            project.index()
            project.scores()
            for_project(project, workers=1).ensure_many(project.samples["sample_id"])
        sizes = artifact_bytes(project.dir)
    setup = {**setup, "data": f"flowers17 seeded {len(table):,}", "backbone": "efficientnet_lite0 offline",
             "image_size": 224, "words": 1024, "thumbnail": "128 px JPEG", "seconds": round(took(), 1)}
    for name, size in sizes.items():
        grows = per_image(name)
        emit(bench, f"storage.{name}", round(size / len(table), 1) if grows else int(size),
             "bytes/image" if grows else "bytes", len(table), per_image=grows, cache=name == CACHE, **setup)
    kept = [name for name in sizes.index if per_image(name) and name != CACHE]
    emit(bench, "storage.total_per_image", round(sizes[kept].sum() / len(table), 1), "bytes/image", len(table),
         without=f"{CACHE} (a cache kept only while it fits cell_cache_gb) and the fixed-size files", **setup)
