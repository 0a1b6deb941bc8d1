"""Feature extraction and KMeans: how close the pipeline gets to the bare model, and what KMeans costs.

    python -m bench.extraction [--quick]

Figures:
- ``pipeline_vs_forward``: images/s of :func:`mlfix.pipeline.features.extract` (decode in workers, resize,
  forward, cells handed to a callback) over images/s of the bare forward on the same batches, made
  once in memory beforehand (goal: at least 90%). On flowers17 photos when present, else generated.
- ``kmeans_seconds`` and ``kmeans_peak_mb`` at 200k and 1M cells (k=1024, d=256, 20 iterations;
  faiss trains on a 262,144-cell sample).
"""

from __future__ import annotations

import numpy as np

from bench.common import emit, parser, peak_rss_mb, require_shared, reset_peak_rss, timer


def flowers_samples(limit: int):
    from mlfix.data.scan import scan

    folder = require_shared("flowers17")
    if folder is None:
        return None, None
    result = scan(folder / "images.zip")
    return result, result.samples.iloc[:limit].reset_index(drop=True)


def bench_pipeline(n: int, image_size: int, batch_size: int) -> None:
    import torch

    from mlfix.pipeline.backbone import create_backbone
    from mlfix.data.images import DataRoot
    from mlfix.pipeline.features import SampleImages, extract

    result, samples = flowers_samples(n)
    if result is None:
        return
    root = DataRoot(result.source["images"])
    torch.manual_seed(0)
    backbone = create_backbone("resnet18", "random").eval()
    images = SampleImages(root, samples, image_size)
    batches = [torch.stack([images[i][1] for i in range(s, min(n, s + batch_size))])
               for s in range(0, n, batch_size)]
    with torch.inference_mode():
        backbone(batches[0].contiguous(memory_format=torch.channels_last))  # warm-up
        with timer() as bare:
            for batch in batches:
                backbone.to(memory_format=torch.channels_last)(batch.contiguous(memory_format=torch.channels_last))
    kept = []
    with timer() as full:
        extract(root, samples, backbone, image_size, batch_size=batch_size,
                on_cells=lambda rows, cells: kept.append(cells.shape[0]))
    setup = {"backbone": "resnet18", "image_size": image_size, "batch_size": batch_size, "data": "flowers17"}
    bare_rate, full_rate = n / bare(), n / full()
    emit("extraction", "bare_forward", round(bare_rate, 1), "img/s", n, **setup)
    emit("extraction", "pipeline", round(full_rate, 1), "img/s", n, **setup)
    emit("extraction", "pipeline_vs_forward", round(full_rate / bare_rate, 3), "ratio", n, **setup)


def bench_kmeans(cells: int, dim: int = 256, k: int = 1024) -> None:
    from mlfix.pipeline.codebook import Codebook

    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1, (k, dim)).astype(np.float32)
    data = centers[rng.integers(0, k, cells)] + rng.normal(0, 0.3, (cells, dim)).astype(np.float32)
    before = peak_rss_mb() if reset_peak_rss() else None
    with timer() as took:
        codebook = Codebook(k=k, seed=0).fit(data)
    setup = {"k": k, "dim": dim, "niter": 20, "cells_used": codebook.fit_info_["cells_used"],
             "input_mb": round(data.nbytes / 2**20, 1)}
    emit("kmeans", "fit_seconds", round(took(), 2), "s", cells, **setup)
    if before is not None:
        emit("kmeans", "fit_extra_peak_mb", round(peak_rss_mb() - before, 1), "MiB", cells, **setup)


def main() -> None:
    args = parser(__doc__.split("\n")[0]).parse_args()
    if args.quick:
        bench_pipeline(n=64, image_size=64, batch_size=32)
        bench_kmeans(cells=20_000, k=64)
        return
    bench_pipeline(n=512, image_size=224, batch_size=64)
    bench_kmeans(cells=200_000)
    bench_kmeans(cells=1_000_000)


if __name__ == "__main__":
    main()
