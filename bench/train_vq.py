"""Words learned with the backbone (``mlfix train --vq-words K``) against KMeans words, on flowers17 (issue #18).

    python -m bench.train_vq --quick   # 120 images at 64 px, 2 epochs of batch 32, 32 words
    python -m bench.train_vq           # all 1,360 at 96 px, 5 epochs of batch 64, 256 words

Two Barlow Twins runs of ``efficientnet_lite0`` from its offline weights (the product's default
``mlfix train``), one seed, the same images and settings, one without and one with ``--vq-words K``.
Each trained backbone then extracts the stride-16 cells of every image at the training size (what
``mlfix index`` does with the checkpoint), and the words come from:

- ``kmeans``: the run without VQ, faiss KMeans (``mlfix.pipeline.codebook.Codebook``, k words, seed 0);
- ``vq_trained``: the run with VQ, its trained codebook (``"vq"`` in ``last.pt``, read by
  ``mlfix.pipeline.vq.VQCodebook.from_state``), no fitting;
- ``kmeans_on_vq_backbone``: the run with VQ, KMeans words: the backbone's share of the change
  apart from the codebook's.

Figures per codebook (``setup.codebook``) and bag (``setup.bag``, bench/words.py's variants ``tfidf``
and ``tfidf_sublinear+centre+saliency``, ordered by ``embedding_order``): ``purity`` of the
all-image chain (adjacent pairs of one class, bench.detect.purity); ``words_used``; per run the
pooled embedding chain's purity (``embedding``) and ``train_s``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import SHARED_DATA, emit, parser, require_shared
from bench.detect import purity
from bench.words import variants
from mlfix.pipeline.ordering.embedding import embedding_order

BENCH = "train_vq"
BACKBONE = "efficientnet_lite0"
DATASET = "flowers17"
BAGS = ("tfidf", "tfidf_sublinear+centre+saliency")
# (images, image size, epochs, words, batch) for the full run and for --quick
PLANS = {"full": (1_360, 96, 5, 256, 64), "quick": (120, 64, 2, 32, 32)}


def train(table, folder: Path, size: int, epochs: int, words: int, batch: int) -> tuple[Path, float]:
    """(the checkpoint of one run, its seconds)."""
    from mlfix.cli.train import PRETRAINED_LR, openmp_waits_for_training
    from mlfix.data.images import DataRoot
    from mlfix.training.barlow_twins import train_barlow_twins

    openmp_waits_for_training(size)
    start = time.perf_counter()
    path = train_barlow_twins(DataRoot(SHARED_DATA / DATASET / "images.zip"), table, folder, backbone=BACKBONE,
                              init="offline", lr=PRETRAINED_LR, epochs=epochs, batch_size=batch,
                              image_size=size, seed=0, workers=1, vq_words=words)
    return path, time.perf_counter() - start


def cells_of(table, checkpoint: Path, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cells (N, h, w, C) float32, pooled (N, D), ok (N,)) of the trained backbone."""
    from mlfix.data.images import DataRoot
    from mlfix.pipeline.backbone import create_backbone
    from mlfix.pipeline.features import extract

    backbone = create_backbone(BACKBONE, weights=checkpoint)
    side = backbone.grid_size(size)
    cells = np.zeros((len(table), side, side, backbone.cell_channels), np.float32)

    def keep(rows: np.ndarray, batch: np.ndarray) -> None:
        cells[rows] = batch

    result = extract(DataRoot(SHARED_DATA / DATASET / "images.zip"), table, backbone, size, on_cells=keep,
                     statistics=False, workers=1)
    return cells, np.asarray(result.pooled, np.float32), result.ok


def figures(name: str, words: np.ndarray, cells: np.ndarray, pooled: np.ndarray, ok: np.ndarray, k: int,
            truth: np.ndarray, setup: dict) -> None:
    data = {"words": words, "ok": ok, "pooled": pooled, "norms": np.linalg.norm(cells, axis=-1)}
    setup = {**setup, "codebook": name}
    n = len(truth)
    emit(BENCH, f"{DATASET}.{name}.words_used", int(len(np.unique(words[ok]))), "words", n, **setup)
    for bag, (_, focus, build) in variants(data, k, set(BAGS)).items():
        emit(BENCH, f"{DATASET}.{name}.{bag}.purity", round(purity(embedding_order(build()), truth), 4), "share",
             n, **setup, bag=bag, focus=focus)


def run(quick: bool) -> None:
    import torch

    from bench.defaults import labels_and_truth, subset
    from mlfix.pipeline.codebook import Codebook
    from mlfix.pipeline.vq import VQCodebook

    if require_shared(DATASET) is None:
        return
    n, size, epochs, k, batch = PLANS["quick" if quick else "full"]
    table = subset(DATASET, n).assign(box_x=np.nan, box_y=np.nan, box_w=np.nan, box_h=np.nan)
    _, truth, _ = labels_and_truth(DATASET, table)
    setup = {"words": k, "image_size": size, "epochs": epochs, "backbone": f"{BACKBONE} (offline init, Barlow Twins)",
             "data": f"{DATASET} {len(table)} images", "batch_size": batch, "seed": 0}
    with tempfile.TemporaryDirectory() as tmp:
        for words in (0, k):
            torch.manual_seed(0)
            checkpoint, seconds = train(table, Path(tmp) / f"vq{words}", size, epochs, words, batch)
            cells, pooled, ok = cells_of(table, checkpoint, size)
            run_setup = {**setup, "vq_words": words, "train_s": round(seconds, 1)}
            emit(BENCH, f"{DATASET}.vq{words}.embedding.purity", round(purity(embedding_order(pooled), truth), 4),
                 "share", len(table), **run_setup)
            flat = cells[ok].reshape(-1, cells.shape[-1])
            kmeans = Codebook(k=k, seed=0).fit(flat).assign(cells)
            figures("kmeans" if not words else "kmeans_on_vq_backbone", kmeans, cells, pooled, ok, k, truth, run_setup)
            if words:
                state = torch.load(checkpoint, weights_only=True)["vq"]
                learned = VQCodebook.from_state({name: t.numpy() for name, t in state.items()}).assign(cells)
                figures("vq_trained", learned, cells, pooled, ok, k, truth, run_setup)


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    run(args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
