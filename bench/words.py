"""Visual words that beat plain embeddings? Weighted bags, focus weights and a combined order (issue #18).

    python -m bench.words --quick     # CIFAR-10N 300, flowers17 120, GTSRB 300 at 64 px, 64 words (< 60 s
                                      # once cached), timing at 2,000 synthetic images
    python -m bench.words             # CIFAR-10N first 10,000 at 112 px, flowers17 1,360 at 224 px,
                                      # GTSRB 5,000 at 96 px, 1,024 words; timing at 20k and --scale-n
    python -m bench.words --only gtsrb35 --no-timing
    python -m bench.words --only cifar10n --n 3000 --size 224 --no-timing   # one set at another plan

Setup: ``efficientnet_lite0`` with its offline ImageNet weights, one pass per set through
``mlfix.pipeline.features.extract`` keeping the stride-16 cells: the pooled vectors of that pass are
the embedding baseline, the cells give the word grid (faiss KMeans, ``mlfix.pipeline.codebook.Codebook``,
k words, seed 0: ``"codebook": "kmeans"``; with ``--codebook vq`` the learned VQ-VAE codebook of
``mlfix.pipeline.vq``, ``"codebook": "vq"``)
and each cell's feature norm (the saliency weight). Cached in bench/results/ (git-ignored) as
``grids_<set>_<n>_<arch>_<size>_k<k>.npz``. Labels: CIFAR-10N ``label`` (one human annotator) vs
``clean_label``; GTSRB (a seeded 5,000, as bench/detect.py) and flowers17 with 5% of labels flipped
(seed 0, bench/detect.py's ``flip_labels``) vs the unflipped labels.

Variants (``setup.bag`` / ``setup.focus``): ``embedding`` (the pooled vectors, the product's default
order); ``bits`` (the seed's popcount chain and word vote); ``counts``; ``tfidf``; ``tfidf_sublinear``
(tf = 1 + log count); ``tfidf+centre`` (Gaussian centre prior); ``tfidf+saliency`` (cell feature norm);
``tfidf+centre+saliency``; ``tfidf_sublinear+centre(+saliency)``; ``combined_w<W>`` (unit pooled vector
beside W x the unit tf-idf bag); ``combined_focus_w<W>`` (the same with the last bag);
``combined_centre_w1`` (with the sublinear centre-weighted bag: no cell norms needed). Every variant
but ``bits`` is ordered by ``mlfix.pipeline.ordering.embedding.embedding_order`` and votes by
``mlfix.scoring.neighbours.knn_vote`` (cosine over its vectors; k = 50).

Figures per set and variant: ``purity`` (adjacent pairs of one true class, the all-image chain),
``class_purity`` (the same inside each given-label class), ``vote_auroc`` / ``vote_ap`` (the
vote's score against the true errors), ``build_s`` (vectors from the grids). Timing
(``timing.<variant>``) on synthetic clustered 14 x 14 word grids: build and order at 20,000 and at
``--scale-n`` (default 1,000,000; float16 vectors there).
"""

from __future__ import annotations

import sys
import time
from typing import Callable

import numpy as np

from bench.common import RESULTS_DIR, SHARED_DATA, emit, parser, require_shared
from bench.detect import backbone_text, class_purity, detection_metrics, purity
from mlfix.pipeline.ordering import weighted
from mlfix.pipeline.ordering.embedding import embedding_order

BENCH = "words"
BACKBONE = "efficientnet_lite0"
COMBINED_WEIGHTS = (0.5, 1.0)
SUBLINEAR = "tfidf, tf = 1 + log(count)"
# data set -> (images, image size) for the full run and for --quick
PLANS = {"cifar10n": ((10_000, 112), (300, 64)), "flowers17": ((1_360, 224), (120, 64)),
         "gtsrb35": ((5_000, 96), (300, 64))}


# ---------------------------------------------------------------------------------------------
# Word grids, cell norms and pooled vectors of one pass (cached)


def grids(dataset: str, n: int, size: int, k: int, log=print, codebook: str = "kmeans") -> dict[str, np.ndarray]:
    """``words`` (N, h, w) uint16, ``norms`` (N, h, w) float16 cell feature norms, ``pooled`` (N, D)
    float16, ``ok`` (N,) bool, ``seconds`` (extraction + codebook) for ``n`` rows of ``dataset``;
    ``codebook``: ``kmeans`` or ``vq`` (:class:`mlfix.pipeline.vq.VQCodebook`, default settings)."""
    from mlfix.pipeline.backbone import architecture

    tail = "" if codebook == "kmeans" else f"_{codebook}"
    path = RESULTS_DIR / f"grids_{dataset}_{n}_{architecture(BACKBONE)}_{size}_k{k}{tail}.npz"
    if path.exists():
        with np.load(path) as data:
            return {key: data[key] for key in data.files}
    out = _extract_grids(dataset, n, size, k, log, codebook)
    RESULTS_DIR.mkdir(exist_ok=True)
    np.savez(path, **out)
    return out


def _extract_grids(dataset: str, n: int, size: int, k: int, log, codebook: str = "kmeans") -> dict[str, np.ndarray]:
    import torch

    from bench.defaults import subset
    from mlfix.data.images import DataRoot
    from mlfix.pipeline.backbone import create_backbone
    from mlfix.pipeline.codebook import Codebook
    from mlfix.pipeline.features import extract

    torch.manual_seed(0)
    table = subset(dataset, n).assign(box_x=np.nan, box_y=np.nan, box_w=np.nan, box_h=np.nan)
    backbone = create_backbone(BACKBONE, weights="offline")
    side = backbone.grid_size(size)
    cells = np.zeros((len(table), side, side, backbone.cell_channels), np.float16)

    def keep(rows: np.ndarray, batch: np.ndarray) -> None:
        cells[rows] = batch

    start = time.perf_counter()
    result = extract(DataRoot(SHARED_DATA / dataset / "images.zip"), table, backbone, size, on_cells=keep,
                     statistics=False, progress=lambda done, total: done % 1280 < 64 and log(
                         f"{dataset} {size}px: {done}/{total}", file=sys.stderr))
    extracted = time.perf_counter() - start
    from mlfix.pipeline.vq import VQCodebook

    learner = Codebook(k=k, seed=0) if codebook == "kmeans" else VQCodebook(k=k, seed=0)
    learner.fit(cells[result.ok].reshape(-1, cells.shape[-1]).astype(np.float32))
    words = learner.assign(cells.astype(np.float32))
    norms = np.linalg.norm(cells.astype(np.float32), axis=-1).astype(np.float16)
    return {"words": words, "norms": norms, "pooled": np.asarray(result.pooled), "ok": result.ok,
            "extract_seconds": np.array(extracted),
            "codebook_seconds": np.array(time.perf_counter() - start - extracted)}


# ---------------------------------------------------------------------------------------------
# Variants: (N, d) vectors ordered and voted by cosine


Variant = tuple[str, str, Callable[[], np.ndarray]]


def variants(data: dict[str, np.ndarray], k: int, only: set[str] | None = None) -> dict[str, Variant]:
    """name -> (bag, focus, build()) where build() returns the (N, d) vectors; ``only``: these names."""
    words, ok = data["words"], data["ok"]
    h, w = words.shape[1:]
    centre = weighted.centre_weights(h, w)

    def saliency():
        return weighted.saliency_weights(data["norms"].astype(np.float32))

    def tfidf(focus=None, sublinear=False):
        return weighted.weighted_bags(words, k, "tfidf", focus=focus, ok=ok, sublinear=sublinear)

    def best_words():  # the best word-only variant on flowers17 and GTSRB (this bench)
        return tfidf(centre * saliency(), sublinear=True)

    pooled = data["pooled"].astype(np.float32)
    out = {
        "embedding": ("none (pooled embedding)", "none", lambda: pooled),
        "counts": ("counts", "none", lambda: weighted.weighted_bags(words, k, "counts", ok=ok)),
        "tfidf": ("tfidf", "none", tfidf),
        "tfidf_sublinear": (SUBLINEAR, "none", lambda: tfidf(sublinear=True)),
        "tfidf+centre": ("tfidf", "centre", lambda: tfidf(centre)),
        "tfidf+saliency": ("tfidf", "saliency", lambda: tfidf(saliency())),
        "tfidf+centre+saliency": ("tfidf", "centre x saliency", lambda: tfidf(centre * saliency())),
        "tfidf_sublinear+centre": (SUBLINEAR, "centre", lambda: tfidf(centre, sublinear=True)),
        "tfidf_sublinear+centre+saliency": (SUBLINEAR, "centre x saliency", best_words),
        # what an index can build today (words.npy and pooled.npy; no cell norms stored)
        "combined_centre_w1": (f"pooled + 1 x {SUBLINEAR}", "centre",
                               lambda: weighted.index_combined_vectors(pooled, words, k, ok)),
    }
    for weight in COMBINED_WEIGHTS:
        out[f"combined_w{weight:g}"] = (f"pooled + {weight:g} x tfidf", "none", lambda weight=weight:
                                        weighted.combined_vectors(pooled, tfidf(), weight))
        out[f"combined_focus_w{weight:g}"] = (
            f"pooled + {weight:g} x {SUBLINEAR}", "centre x saliency",
            lambda weight=weight: weighted.combined_vectors(pooled, best_words(), weight))
    return {name: value for name, value in out.items() if only is None or name in only}


def evaluate(dataset: str, data: dict[str, np.ndarray], labels: np.ndarray, truth: np.ndarray, k: int,
             setup: dict, only: set[str] | None = None) -> None:
    """Purity, class purity and vote figures of every variant on one set."""
    from mlfix.scoring.neighbours import knn_vote

    n, is_error, ids = len(labels), labels != truth, np.arange(len(labels))
    if only is None or "bits" in only:
        emit(BENCH, f"{dataset}.noise_rate", round(float(is_error.mean()), 4), "share", n, **setup)
        _bits(dataset, data["words"], labels, truth, k, setup)
    for name, (bag, focus, build) in variants(data, k, only).items():
        start = time.perf_counter()
        x = build()
        setup_built = {**setup, "build_s": round(time.perf_counter() - start, 2)}
        funcs = {"purity": lambda x=x: purity(embedding_order(x), truth),
                 "class_purity": lambda x=x: class_purity(lambda rows: embedding_order(x[rows]), labels, truth),
                 "vote": lambda x=x: knn_vote(x, labels, ids)["score"].to_numpy()}
        _figures(dataset, name, bag, focus, funcs, is_error, n, setup_built)


def _bits(dataset: str, words: np.ndarray, labels: np.ndarray, truth: np.ndarray, k: int, setup: dict) -> None:
    """The seed's bags: popcount chain and word vote."""
    from mlfix.pipeline.codebook import pack_bags
    from mlfix.pipeline.ordering import order as order_bags
    from mlfix.pipeline.ordering.exact import greedy_order
    from mlfix.scoring.neighbours import word_vote

    bags, ids = pack_bags(words, k), np.arange(len(labels))
    funcs = {"purity": lambda: purity(greedy_order(bags), truth),
             "class_purity": lambda: class_purity(lambda rows: order_bags(bags[rows]), labels, truth),
             "vote": lambda: word_vote(bags, labels, ids)["score"].to_numpy()}
    _figures(dataset, "bits", "bits", "none", funcs, labels != truth, len(labels), setup)


def _figures(dataset, name, bag, focus, funcs, is_error, n, setup) -> None:
    setup = {**setup, "variant": name, "bag": bag, "focus": focus}
    for key in ("purity", "class_purity"):
        start = time.perf_counter()
        value = funcs[key]()
        emit(BENCH, f"{dataset}.{name}.{key}", round(value, 4), "share", n,
             seconds=round(time.perf_counter() - start, 2), **setup)
    metrics = detection_metrics(is_error, funcs["vote"]())
    for key in ("auroc", "ap"):
        emit(BENCH, f"{dataset}.{name}.vote_{key}", metrics[key], "", n, **setup)


def run_set(dataset: str, n: int, size: int, k: int, only: set[str] | None = None, codebook: str = "kmeans") -> None:
    from bench.defaults import labels_and_truth, subset

    if require_shared(dataset) is None:
        return
    table = subset(dataset, n)
    labels, truth, noise = labels_and_truth(dataset, table)
    data = grids(dataset, n, size, k, codebook=codebook)
    h, w = data["words"].shape[1:]
    setup = {"codebook": codebook, "words": k, "grid": f"{h}x{w}", "image_size": size,
             "backbone": backbone_text(BACKBONE), "data": f"{dataset} {len(table)} images", "noise": noise,
             "extract_s": round(float(data["extract_seconds"]), 1),
             "codebook_s": round(float(data["codebook_seconds"]), 1)}
    evaluate(dataset, data, labels, truth, k, setup, only)


# ---------------------------------------------------------------------------------------------
# Timing on synthetic word grids


def synthetic_grids(n: int, k: int = 1024, side: int = 14, clusters: int = 100, background: float = 0.3,
                    seed: int = 0, chunk: int = 65_536) -> np.ndarray:
    """(n, side, side) uint16 word grids: each image's cluster draws Zipf-like words (rank ~ u^3 of
    its own word permutation), a ``background`` share of cells from a permutation shared by all."""
    rng = np.random.default_rng(seed)
    perms = np.argsort(rng.random((clusters + 1, k)), axis=1).astype(np.uint16)  # row 0: background
    out = np.empty((n, side, side), np.uint16)
    for begin in range(0, n, chunk):
        m = min(chunk, n - begin)
        cluster = rng.integers(1, clusters + 1, m)[:, None]
        source = np.where(rng.random((m, side * side)) < background, 0, cluster)
        rank = (k * rng.random((m, side * side)) ** 3).astype(np.int64)
        out[begin:begin + m] = perms[source, rank].reshape(m, side, side)
    return out


def timing(n: int, k: int, setup: dict) -> None:
    """Build and order time of the bits chain and of the tf-idf (+ saliency) bags at ``n`` images."""
    from mlfix.pipeline.codebook import pack_bags
    from mlfix.pipeline.ordering import order as order_bags

    words = synthetic_grids(n, k)
    norms = np.random.default_rng(1).gamma(4.0, 1.0, words.shape).astype(np.float16)
    dtype = np.float32 if n <= 100_000 else np.float16
    setup = {**setup, "codebook": "kmeans", "words": k, "grid": "14x14", "data": "synthetic clustered grids",
             "vector_dtype": np.dtype(dtype).name}
    start = time.perf_counter()
    bags = pack_bags(words, k)
    built = time.perf_counter() - start
    start = time.perf_counter()
    order_bags(bags)
    emit(BENCH, "timing.bits", {"build_s": round(built, 2), "order_s": round(time.perf_counter() - start, 2)},
         "s", n, variant="bits", bag="bits", focus="none", **setup)
    for name, focus in (("tfidf", None), ("tfidf+saliency", "saliency")):
        start = time.perf_counter()
        weights = weighted.saliency_weights(norms) if focus else None
        x = weighted.weighted_bags(words, k, "tfidf", focus=weights, dtype=dtype)
        built = time.perf_counter() - start
        if focus:  # the order costs the same as tf-idf's: only the build differs
            emit(BENCH, f"timing.{name}", {"build_s": round(built, 2)}, "s", n, variant=name, bag="tfidf",
                 focus=focus, **setup)
            continue
        _time_order(f"timing.{name}", x, built, n, {**setup, "variant": name, "bag": "tfidf", "focus": "none"})
        if n <= 100_000:  # beside a 1280-d pooled vector (random here): the combined order's cost
            pooled = np.random.default_rng(2).normal(size=(n, 1280)).astype(np.float16)
            start = time.perf_counter()
            both = weighted.combined_vectors(pooled, x, 1.0)
            _time_order("timing.combined_w1", both, built + time.perf_counter() - start, n,
                        {**setup, "variant": "combined_w1", "bag": "pooled + 1 x tfidf", "focus": "none"})
        del x


def _time_order(metric: str, x: np.ndarray, built: float, n: int, setup: dict) -> None:
    start = time.perf_counter()
    embedding_order(x)
    emit(BENCH, metric, {"build_s": round(built, 2), "order_s": round(time.perf_counter() - start, 2),
                         "vectors_gib": round(x.nbytes / 2 ** 30, 2)}, "s", n, **setup)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--only", choices=sorted(PLANS), help="one data set")
    p.add_argument("--words", type=int, default=1024)
    p.add_argument("--scale-n", type=int, default=1_000_000, help="the large timing size (synthetic)")
    p.add_argument("--variants", nargs="+", help="only these variants (default: all)")
    p.add_argument("--codebook", choices=("kmeans", "vq"), default="kmeans",
                   help="KMeans words, or the learned VQ-VAE codebook (mlfix.pipeline.vq)")
    p.add_argument("--n", type=int, help="with --only: images of that set instead of the plan's")
    p.add_argument("--size", type=int, help="with --only: image size instead of the plan's")
    p.add_argument("--no-timing", action="store_true")
    p.add_argument("--timing-only", action="store_true")
    args = p.parse_args(argv)
    if (args.n or args.size) and not args.only:
        p.error("--n and --size change one set's plan: give --only too")
    words = 64 if args.quick else args.words
    if not args.timing_only:
        for dataset, (full, quick) in PLANS.items():
            if args.only in (None, dataset):
                n, size = quick if args.quick else full
                n, size = args.n or n, args.size or size
                run_set(dataset, n, size, words, set(args.variants) if args.variants else None, args.codebook)
    if not args.no_timing:
        sizes = (2_000,) if args.quick else (20_000, args.scale_n)
        for n in sizes:
            timing(n, 1024, {})
    return 0


if __name__ == "__main__":
    sys.exit(main())
