"""Label-error detection quality on real human label noise (CIFAR-10N) and on planted noise (GTSRB).

    python -m bench.detect            # CIFAR-10N first 10,000 images at 224 px; GTSRB 5,000 at 96 px
    python -m bench.detect --quick    # 300 images per data set at 64 px (a smoke test, < 60 s)
    python -m bench.detect --orders-only --n 3000 --size 112   # the orders' neighbour purity only:
                                      # embedding vs words, both from one pass at 112 px as in an index
    python -m bench.detect --only cifar10n --backbone efficientnet_lite2 --size 260 --tta-flip
    python -m bench.detect --only cifar10n --size 260 --tta-flip \
        --backbone efficientnet_lite0+efficientnet_lite1+efficientnet_lite2     # the best offline setup

Setup: pooled features of ``efficientnet_lite0`` (``--backbone``: any with offline weights) with its
offline ImageNet weights (``create_backbone("efficientnet_lite0", weights="offline")``), cached in
bench/results/ by bench/detect_features.py; ``--tta-flip`` averages each image's features with its
mirror image's (twice the extraction; CIFAR-10N only). CIFAR-10N: ``label`` is one human
annotator (random_label1), the truth is ``clean_label``. GTSRB: a seeded random subset (seed 0), 5% of
its labels flipped to another class with ``numpy.random.default_rng(FLIP_SEED)``.

Figures (JSON lines via bench.common.emit), per data set:
- per method: AUROC, average precision, precision at 1%, 2%, 5% of N, and the share of all errors
  found in the first 5% of the queue. mlfix's probe is fitted twice (the refit leaves out the
  samples cleanlab flags on the first fit) and the two fits' probabilities averaged; the baseline is cleanlab as usually run: self-confidence
  on the single cross-validated fit of the same probe on the same features (``cleanlab_single_fit``),
  and with sklearn's default regularization (``cleanlab_default_C``); ``loss_single_fit`` shows what
  the refit adds;
- neighbour purity of orderings (share of adjacent pairs with the same true class): the product's
  two similarity orders (``mlfix.pipeline.ordering.embedding.embedding_order``, the default, and the
  greedy chain on bags of visual words), over all images (``purity``) and inside each given-label
  class as the Review page shows them (``class_purity``);
- a simulated review: a reviewer fixes the top 200 of the queue per round; errors found after
  2,000 images viewed with the queue fixed at the start (static) vs recomputed after every round.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from bench.common import emit, parser
from bench.detect_features import DEFAULT_BACKBONE, bags_path, features, flip_averaged, load_labels, word_bags
from mlfix.pipeline.ordering.embedding import embedding_order
from mlfix.scoring import combine, neighbours, probe

BENCH = "detect"
FLIP_SEED = 0
FLIP_RATE = 0.05


def backbone_text(name: str, tta_flip: bool = False) -> str:
    """The setup's backbone field: name, weights, the timm architecture, flip TTA."""
    from mlfix.pipeline.backbone import architecture

    return f"{name} offline (ImageNet; timm {architecture(name)}){' + flip TTA' if tta_flip else ''}"


# ---------------------------------------------------------------------------------------------
# Metrics


def detection_metrics(is_error: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """AUROC, AP, precision at 1/2/5% of N, and recall within the first 5% (ties broken by index)."""
    score = np.nan_to_num(np.asarray(score, dtype=np.float64), nan=-np.inf)
    order = np.argsort(-score, kind="stable")
    n = len(score)
    found = np.cumsum(is_error[order])
    out = {"auroc": roc_auc_score(is_error, score), "ap": average_precision_score(is_error, score)}
    for pct in (1, 2, 5):
        top = max(1, int(round(n * pct / 100)))
        out[f"precision_at_{pct}pct"] = found[top - 1] / top
    out["recall_at_5pct"] = found[max(1, int(round(n * 0.05))) - 1] / max(1, is_error.sum())
    return {k: round(float(v), 4) for k, v in out.items()}


def purity(order: np.ndarray, truth: np.ndarray) -> float:
    """Share of adjacent pairs in ``order`` with the same true class."""
    t = truth[order]
    return float(np.mean(t[1:] == t[:-1]))


def class_purity(order_rows, labels: np.ndarray, truth: np.ndarray) -> float:
    """Neighbour purity inside each given-label class (as the Review page shows one class at a time):
    the share of adjacent pairs with the same true class, over all classes' orders.
    ``order_rows(rows)`` orders the rows of one class (a permutation of their positions)."""
    same = pairs = 0
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        t = truth[rows[order_rows(rows)]]
        same += int(np.sum(t[1:] == t[:-1]))
        pairs += max(0, len(rows) - 1)
    return same / max(1, pairs)


# ---------------------------------------------------------------------------------------------
# Methods evaluated


def method_scores(x: np.ndarray, labels: np.ndarray, ids: np.ndarray, oof: probe.OutOfFold,
                  near: neighbours.Neighbours, trusted=None) -> dict[str, pd.DataFrame]:
    """Every method's table on one feature set (one probe, one neighbour search)."""
    tables = {
        "knn": neighbours.knn_vote(x, labels, ids, trusted=trusted, neighbours=near),
        "cleanlab": probe.confident_learning(None, labels, ids, trusted=trusted, probabilities=oof),
        "loss": probe.probe_loss(None, labels, ids, trusted=trusted, probabilities=oof),
    }
    tables["combined"] = combine.combined([tables[m] for m in combine.COMBINED_DEFAULT],
                                          combine.COMBINED_WEIGHTS)
    return tables


def evaluate(name: str, x: np.ndarray, labels: np.ndarray, truth: np.ndarray, setup: dict,
             bags: np.ndarray | None = None, quick: bool = False,
             cells_mean: np.ndarray | None = None) -> None:
    n = len(labels)
    ids = np.arange(n)
    is_error = labels != truth
    emit(BENCH, f"{name}.noise_rate", round(float(is_error.mean()), 4), "share", n, **setup)
    with_time = {}
    start = time.perf_counter()
    oof = probe.out_of_fold_probabilities(x, labels, seed=0)
    with_time["probe_s"] = time.perf_counter() - start
    start = time.perf_counter()
    near = neighbours.embedding_neighbours(x, 50)
    with_time["knn_search_s"] = time.perf_counter() - start
    single = probe.out_of_fold_probabilities(x, labels, seed=0, refit_without_suspects=False)
    for fit, result in (("", oof), ("_single_fit", single)):
        accuracy = float((result.predicted() == truth).mean())
        emit(BENCH, f"{name}.probe_accuracy_vs_truth{fit}", round(accuracy, 4), "share", n, **setup)
    tables = method_scores(x, labels, ids, oof, near)
    # cleanlab as usually run: one cross-validated fit, with our regularization and with sklearn's
    # default (C=1).
    tables["cleanlab_single_fit"] = probe.confident_learning(None, labels, ids, probabilities=single)
    tables["loss_single_fit"] = probe.probe_loss(None, labels, ids, probabilities=single)
    default = probe.out_of_fold_probabilities(x, labels, seed=0, l2=1.0 / (0.8 * n), refit_without_suspects=False)
    tables["cleanlab_default_C"] = probe.confident_learning(None, labels, ids, probabilities=default)
    if cells_mean is not None:  # the probe on pooled + mean of the stride-16 cells
        both = probe.out_of_fold_probabilities(np.hstack([x, cells_mean]), labels, seed=0)
        tables["loss_pooled_cells"] = probe.probe_loss(None, labels, ids, probabilities=both)
    for method, table in tables.items():
        for metric, value in detection_metrics(is_error, table["score"].to_numpy()).items():
            emit(BENCH, f"{name}.{method}.{metric}", value, "", n, **setup)
    flags = tables["cleanlab"]["flag"].to_numpy()
    emit(BENCH, f"{name}.cleanlab_flags.precision", round(float(is_error[flags].mean()), 4), "", n, **setup)
    emit(BENCH, f"{name}.cleanlab_flags.recall", round(float(flags[is_error].mean()), 4), "", n, **setup)
    for key, value in with_time.items():
        emit(BENCH, f"{name}.{key}", round(value, 2), "s", n, **setup)
    embedding_figures(name, x, labels, truth, setup)
    if bags is not None:
        word_figures(name, bags, labels, truth, setup)
    review(name, x, labels, truth, setup, near, quick, first=tables)


def embedding_figures(name: str, x: np.ndarray, labels: np.ndarray, truth: np.ndarray, setup: dict) -> None:
    """Neighbour purity of a random order and of the product's embedding order (the default)."""
    n = len(labels)
    rng = np.random.default_rng(0)
    emit(BENCH, f"{name}.purity.random", round(purity(rng.permutation(n), truth), 4), "share", n, **setup)
    start = time.perf_counter()
    by_embedding = embedding_order(x)  # the product's order (mlfix.pipeline.ordering.embedding)
    emit(BENCH, f"{name}.purity.greedy_embedding", round(purity(by_embedding, truth), 4), "share", n,
         seconds=round(time.perf_counter() - start, 2), **setup)
    emit(BENCH, f"{name}.class_purity.greedy_embedding",
         round(class_purity(lambda rows: embedding_order(x[rows]), labels, truth), 4), "share", n, **setup)


def word_figures(name: str, bags: np.ndarray, labels: np.ndarray, truth: np.ndarray, setup: dict) -> None:
    """The visual-word vote's detection figures and the purity of the seed's greedy order on bags."""
    from mlfix.pipeline.ordering import order as order_bags
    from mlfix.pipeline.ordering.exact import greedy_order

    n = len(labels)
    table = neighbours.word_vote(bags, labels, np.arange(n))
    for metric, value in detection_metrics(labels != truth, table["score"].to_numpy()).items():
        emit(BENCH, f"{name}.words.{metric}", value, "", n, **setup)
    start = time.perf_counter()
    order = greedy_order(bags)
    emit(BENCH, f"{name}.purity.greedy_words", round(purity(order, truth), 4), "share", n,
         seconds=round(time.perf_counter() - start, 2), **setup)
    emit(BENCH, f"{name}.class_purity.greedy_words",
         round(class_purity(lambda rows: order_bags(bags[rows]), labels, truth), 4), "share", n, **setup)


def review(name: str, x: np.ndarray, labels: np.ndarray, truth: np.ndarray, setup: dict,
           near: neighbours.Neighbours, quick: bool, first: dict[str, pd.DataFrame], per_round: int = 200,
           budget: int = 2000) -> None:
    """A reviewer fixes the top ``per_round`` of the queue each round until ``budget`` images viewed.

    ``first``: the methods' tables before any review (static queues: combined, cleanlab, and the
    cleanlab baseline)."""
    n = len(labels)
    if quick:
        per_round, budget = max(10, n // 30), max(30, n // 10)
    ids = np.arange(n)
    for method in ("combined", "cleanlab", "cleanlab_single_fit"):
        static = np.argsort(-np.nan_to_num(first[method]["score"].to_numpy(), nan=-np.inf), kind="stable")
        found = int((labels[static[:budget]] != truth[static[:budget]]).sum())
        emit(BENCH, f"{name}.review.static.{method}.errors_found", found, "images", n,
             viewed=budget, per_round=per_round, **setup)
    current, trusted = labels.copy(), np.zeros(n, dtype=bool)
    viewed, found, queue_score = 0, 0, first["combined"]["score"].to_numpy()
    while viewed < budget:
        candidates = np.flatnonzero(~trusted)
        pick = candidates[np.argsort(-np.nan_to_num(queue_score[candidates], nan=-np.inf), kind="stable")]
        pick = pick[:min(per_round, budget - viewed)]
        found += int((current[pick] != truth[pick]).sum())
        current[pick], trusted[pick] = truth[pick], True  # the reviewer fixes or confirms them
        viewed += len(pick)
        oof = probe.out_of_fold_probabilities(x, current, seed=0, trusted=trusted)
        queue_score = method_scores(x, current, ids, oof, near, trusted=trusted)["combined"]["score"].to_numpy()
    emit(BENCH, f"{name}.review.reranked.combined.errors_found", found, "images", n,
         viewed=budget, per_round=per_round, **setup)
    emit(BENCH, f"{name}.review.errors_total", int((labels != truth).sum()), "images", n, **setup)


# ---------------------------------------------------------------------------------------------
# Data sets


PROBE = (f"5-fold softmax regression (scipy L-BFGS, l2={probe.DEFAULT_L2} on standardized features), "
         "averaged with a refit without the samples cleanlab flags on the first fit")


def pooled_and_bags(dataset: str, n: int, size: int, quick: bool, bag_size: int, words: int,
                    backbone: str = DEFAULT_BACKBONE, tta_flip: bool = False):
    """Pooled features at ``size`` and, when cached (or in quick mode), bags of words at ``bag_size``."""
    if quick:  # one small pass gives both
        data = word_bags(dataset, n, size, k=words, backbone=backbone)
        return data["pooled"].astype(np.float32), data["bags"], {"bags": f"{words} words at {size} px"}
    feats = flip_averaged(dataset, n, size, backbone) if tta_flip else features(dataset, n, size,
                                                                                 backbone=backbone)
    pooled = feats["pooled"].astype(np.float32)
    extra = {"bags": "none (not extracted)", "cells_mean": feats["cells_mean"].astype(np.float32)}
    if bags_path(dataset, n, bag_size, words, backbone).exists():
        return pooled, word_bags(dataset, n, bag_size, k=words, backbone=backbone)["bags"], {
            **extra, "bags": f"{words} words at {bag_size} px"}
    return pooled, None, extra


def cifar10n(n: int, size: int, quick: bool, bag_size: int, words: int, backbone: str = DEFAULT_BACKBONE,
             tta_flip: bool = False) -> None:
    table = load_labels("cifar10n", n)
    x, bags, extra = pooled_and_bags("cifar10n", n, size, quick, bag_size, words, backbone, tta_flip)
    cells_mean = extra.pop("cells_mean", None)
    setup = {"data": f"cifar10n first {n} images (label = random_label1)",
             "backbone": backbone_text(backbone, tta_flip and not quick),
             "image_size": size, "features": "pooled", "probe": PROBE, **extra}
    evaluate("cifar10n", x, table["label"].to_numpy(dtype=object),
             table["clean_label"].to_numpy(dtype=object), setup, bags=bags, quick=quick,
             cells_mean=cells_mean)


def gtsrb(n: int, size: int, quick: bool, words: int, backbone: str = DEFAULT_BACKBONE) -> None:
    table = load_labels("gtsrb35", n)
    x, bags, extra = pooled_and_bags("gtsrb35", n, size, quick, size, words, backbone)
    cells_mean = extra.pop("cells_mean", None)
    truth = table["label"].to_numpy(dtype=object)
    labels = flip_labels(truth, FLIP_RATE, FLIP_SEED)
    setup = {"data": f"gtsrb35 random {n} (subset seed 0), {FLIP_RATE:.0%} flipped (seed {FLIP_SEED})",
             "backbone": backbone_text(backbone), "image_size": size, "features": "pooled", "probe": PROBE,
             **extra}
    evaluate("gtsrb35", x, labels, truth, setup, bags=bags, quick=quick, cells_mean=cells_mean)


def flip_labels(truth: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """Flip ``rate`` of the labels to a different class, uniformly at random (seeded)."""
    rng = np.random.default_rng(seed)
    classes = np.array(sorted(set(truth)), dtype=object)
    labels = truth.copy()
    rows = rng.choice(len(truth), int(round(rate * len(truth))), replace=False)
    for row in rows:
        others = classes[classes != truth[row]]
        labels[row] = others[rng.integers(len(others))]
    return labels


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000, help="CIFAR-10N: first N images")
    p.add_argument("--size", type=int, default=224, help="CIFAR-10N input size in pixels")
    p.add_argument("--gtsrb-n", type=int, default=5_000)
    p.add_argument("--gtsrb-size", type=int, default=96)
    p.add_argument("--bag-size", type=int, default=112, help="CIFAR-10N input size for visual words")
    p.add_argument("--words", type=int, default=1024)
    p.add_argument("--words-only", action="store_true", help="only the visual-word figures (CIFAR-10N)")
    p.add_argument("--orders-only", action="store_true",
                   help="only the orderings' neighbour purity, embedding vs visual words (CIFAR-10N; "
                        "extracts the bags at --bag-size when they are not cached)")
    p.add_argument("--only", choices=["cifar10n", "gtsrb35"], help="run one data set")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE,
                   help="a backbone with offline weights (efficientnet_lite0, _lite1, _lite2), or an "
                        "ensemble of them joined by + (efficientnet_lite0+efficientnet_lite2)")
    p.add_argument("--tta-flip", action="store_true",
                   help="average each image's features with its mirror image's (twice the extraction; "
                        "not for GTSRB, where a mirrored sign can be another class)")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.size, args.gtsrb_n, args.gtsrb_size, args.words = 160, 64, 160, 64, 64
    if args.words_only:  # the visual-word figures alone, once the bags are extracted
        table = load_labels("cifar10n", args.n)
        bags = word_bags("cifar10n", args.n, args.bag_size, k=args.words, backbone=args.backbone)["bags"]
        word_figures("cifar10n", bags, table["label"].to_numpy(dtype=object),
                     table["clean_label"].to_numpy(dtype=object),
                     {"data": f"cifar10n first {args.n} images (label = random_label1)",
                      "backbone": backbone_text(args.backbone),
                      "bags": f"{args.words} words at {args.bag_size} px"})
        return 0
    if args.orders_only:  # which similarity order the Review page shows by default
        table = load_labels("cifar10n", args.n)
        labels, truth = table["label"].to_numpy(dtype=object), table["clean_label"].to_numpy(dtype=object)
        setup = {"data": f"cifar10n first {args.n} images (label = random_label1)",
                 "backbone": backbone_text(args.backbone), "image_size": args.size, "features": "pooled",
                 "bags": f"{args.words} words at {args.bag_size} px"}
        if args.size == args.bag_size:  # one pass gives both, as in a project's index
            data = word_bags("cifar10n", args.n, args.bag_size, k=args.words, backbone=args.backbone)
            x, bags = data["pooled"].astype(np.float32), data["bags"]
        else:
            x = features("cifar10n", args.n, args.size, backbone=args.backbone)["pooled"].astype(np.float32)
            bags = word_bags("cifar10n", args.n, args.bag_size, k=args.words, backbone=args.backbone)["bags"]
        embedding_figures("cifar10n", x, labels, truth, setup)
        word_figures("cifar10n", bags, labels, truth, setup)
        return 0
    if args.only in (None, "cifar10n"):
        cifar10n(args.n, args.size, args.quick, args.bag_size, args.words, args.backbone, args.tta_flip)
    if args.only in (None, "gtsrb35"):
        gtsrb(args.gtsrb_n, args.gtsrb_size, args.quick, args.words, args.backbone)
    return 0


if __name__ == "__main__":
    sys.exit(main())
