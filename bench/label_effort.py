"""Labelling effort: key presses of a simulated reviewer who labels runs of similar images at once.

    python -m bench.label_effort            # flowers17 (1,360 at 224 px), GTSRB 5,000 and CIFAR-10N 10,000 (96 px)
    python -m bench.label_effort --quick    # flowers17 1,360, GTSRB 1,000, CIFAR-10N 1,000 at 96 px (cached features)

Setup: pooled features of the offline ``efficientnet_lite0`` (ImageNet weights), cached in
bench/results/ by bench/detect_features.py; the truth is each set's label (CIFAR-10N: ``clean_label``).
Two starting points per set: (a) ``unlabeled``; (b) ``noisy80``: 80% of the labels replaced by
another class drawn at random (seed 0), 20% left right.

The grid: all images in the embedding chain's order (:func:`mlfix.pipeline.ordering.embedding.embedding_order`,
the Review page's "(all images)" order in label mode), cut into runs where the order's similarity
drops (:func:`mlfix.pipeline.ordering.runs.run_ids`, the grid's breaks).

The simulated reviewer follows the grid, in order:

1. **runs**: for each run, the class most of its images truly are (its majority); consecutive runs with
   the same majority are one span. A span already right throughout costs nothing; else one run costs
   2 presses (the run key on a focused image, then the class key), several runs 3 (click, shift-click,
   class key). Every image of the span gets the class.
2. **odd ones**: every image still wrong, one by one in grid order: 2 presses (click it, class key),
   1 when it follows the last one fixed (the focus moves on by itself).

A class key is one press whatever the number of classes (keys 1-9, 0 and letters for 30 classes; a
click on the palette chip beyond). The baseline labels image by image in the same order: 1 press per
image (the class key, or accept for an image already right), the focus moving on by itself.

Figures per set and start (JSON lines via bench.common.emit): presses per image to reach 95% and 100%
correct labels, presses per corrected label (at 95%), the share correct after 1 press per 10 images;
the same for the baseline; the runs' count, mean length and purity (share of images in their run's
majority class). Goal (issue 14): <= 0.25 presses per image to 95% correct on flowers17 and GTSRB.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from bench.common import emit, parser, timer
from bench.detect_features import DEFAULT_BACKBONE, features, load_labels

BENCH = "label_effort"
NOISE_SEED = 0
NOISE_RATE = 0.8
TARGET = 0.95
FULL = {"flowers17": (1360, 224), "gtsrb35": (5000, 96), "cifar10n": (10_000, 96)}
QUICK = {"flowers17": (1360, 224), "gtsrb35": (1000, 96), "cifar10n": (1000, 96)}


# ---------------------------------------------------------------------------------------------
# The simulated reviewer (pure functions of codes; -1 = unlabeled)


@dataclass
class Curve:
    """Correct labels after each press: ``presses`` (cumulative) and ``correct`` (count) per step,
    starting at (0, initially correct)."""

    presses: list
    correct: list

    def add(self, cost: int, correct: int) -> None:
        self.presses.append(self.presses[-1] + cost)
        self.correct.append(correct)

    def presses_to(self, share: float, n: int) -> int | None:
        """Presses when ``share`` of the ``n`` labels were first right (None: never)."""
        hit = np.flatnonzero(np.asarray(self.correct) >= share * n - 1e-9)
        return int(self.presses[hit[0]]) if len(hit) else None

    def correct_after(self, budget: float) -> int:
        """Correct labels after at most ``budget`` presses (the last step within it)."""
        within = np.flatnonzero(np.asarray(self.presses) <= budget)
        return int(self.correct[within[-1]])


def majority(values: np.ndarray) -> int:
    """The most common value (ties: the smallest)."""
    return int(np.bincount(values).argmax())


def spans_of_runs(run_ids: np.ndarray, truth_in_order: np.ndarray) -> list[tuple[int, int, int, int]]:
    """``(start, stop, class, runs)``: consecutive runs with the same majority class, merged.

    >>> spans_of_runs(np.array([0, 0, 1, 1, 2, 2]), np.array([3, 3, 3, 4, 5, 5]))
    [(0, 4, 3, 2), (4, 6, 5, 1)]
    """
    starts = np.flatnonzero(np.r_[True, run_ids[1:] != run_ids[:-1]])
    stops = np.r_[starts[1:], len(run_ids)]
    spans: list[list[int]] = []
    for start, stop in zip(starts, stops):
        cls = majority(truth_in_order[start:stop])
        if spans and spans[-1][2] == cls:
            spans[-1][1], spans[-1][3] = int(stop), spans[-1][3] + 1
        else:
            spans.append([int(start), int(stop), cls, 1])
    return [tuple(s) for s in spans]


def label_runs(order: np.ndarray, run_ids: np.ndarray, truth: np.ndarray, current: np.ndarray,
               curve: Curve) -> list[tuple[int, int, int, int]]:
    """Phase 1: each span of runs (:func:`spans_of_runs`) labelled with its majority class, in grid
    order (``current`` changed in place); returns the spans."""
    spans = spans_of_runs(run_ids, truth[order])
    for start, stop, cls, runs in spans:
        rows = order[start:stop]
        if (current[rows] == cls).all():
            continue
        current[rows] = cls
        curve.add(2 if runs == 1 else 3, int((current == truth).sum()))
    return spans


def fix_odd_ones(order: np.ndarray, truth: np.ndarray, current: np.ndarray, curve: Curve) -> None:
    """Last phase: every image still wrong, one by one in grid order: the class key (1 press) when it
    is the image right after the last one fixed (the focus moves on by itself), else a click on it
    first (2 presses).

    >>> curve = Curve([0], [0]); fix_odd_ones(np.arange(5), np.zeros(5, int), np.array([1, 1, 0, 1, 0]), curve)
    >>> curve.presses, curve.correct
    ([0, 2, 3, 5], [0, 3, 4, 5])
    """
    right = int((current == truth).sum())
    last = -2
    for position, row in enumerate(order):
        if current[row] != truth[row]:
            current[row] = truth[row]
            right += 1
            curve.add(1 if position == last + 1 else 2, right)
            last = position


def simulate_runs(order: np.ndarray, run_ids: np.ndarray, truth: np.ndarray, labels: np.ndarray) -> Curve:
    """The run-labelling reviewer (module docstring) on ``labels`` (codes, -1 unlabeled).

    >>> truth = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    >>> curve = simulate_runs(np.arange(8), np.array([0, 0, 0, 0, 1, 1, 1, 1]), truth, np.full(8, -1))
    >>> curve.presses, curve.correct
    ([0, 2, 4, 6, 8], [0, 3, 6, 7, 8])
    """
    current = labels.copy()
    curve = Curve([0], [int((current == truth).sum())])
    label_runs(order, run_ids, truth, current, curve)
    fix_odd_ones(order, truth, current, curve)
    return curve


def suggestion_codes(x: np.ndarray, current: np.ndarray, k: int) -> np.ndarray:
    """Each image's suggested class from its neighbours' current labels (``Project.suggest``'s kNN
    vote, ``scope="all"``: never its own label back); -1 where none."""
    from mlfix.scoring.suggest import suggest_labels

    table = suggest_labels(x, np.where(current >= 0, current, None), np.arange(len(current)), method="knn",
                           scope="all", k=k)
    out = np.full(len(current), -1, dtype=np.int64)
    out[table["sample_id"].to_numpy(dtype=np.int64)] = table["suggested_label"].to_numpy(dtype=np.int64)
    return out


def simulate_runs_and_suggestions(x: np.ndarray, order: np.ndarray, run_ids: np.ndarray, truth: np.ndarray,
                                  labels: np.ndarray, k: int = 10) -> Curve:
    """The run reviewer, plus one pass of suggestions between runs and odd ones: after labelling the
    runs, each image gets the kNN vote of its neighbours' labels; on a span where taking the
    suggestions fixes more than it breaks, the reviewer selects it and presses Enter (the grid
    relabels each selected image to its suggestion): 2 presses (3 for several runs); then the odd
    ones one by one."""
    current = labels.copy()
    curve = Curve([0], [int((current == truth).sum())])
    spans = label_runs(order, run_ids, truth, current, curve)
    take_suggestions(x, order, spans, truth, current, curve, k)
    fix_odd_ones(order, truth, current, curve)
    return curve


def take_suggestions(x: np.ndarray, order: np.ndarray, spans: list, truth: np.ndarray, current: np.ndarray,
                     curve: Curve, k: int) -> None:
    """One pass of suggestions (the kNN vote of the current labels) over the grid's spans: where taking
    them fixes more images than it breaks, select the span and press Enter (2 presses, 3 for several runs)."""
    suggested = suggestion_codes(x, current, k)
    for start, stop, _, runs in spans:
        rows = order[start:stop]
        take = rows[(suggested[rows] >= 0) & (suggested[rows] != current[rows])]
        if int((suggested[take] == truth[take]).sum() - (current[take] == truth[take]).sum()) > 0:
            current[take] = suggested[take]
            curve.add(2 if runs == 1 else 3, int((current == truth).sum()))


def simulate_clusters(x: np.ndarray, order: np.ndarray, run_ids: np.ndarray, truth: np.ndarray,
                      labels: np.ndarray, k: int = 10) -> Curve:
    """The Clusters page first: each cluster (:func:`mlfix.pipeline.clusters.cluster_embeddings`,
    ``choose_k``) named with its majority class, 2 presses (pick the class, **Name**; none when the
    cluster is right already); then, as :func:`simulate_runs_and_suggestions`, the suggestions pass
    over the grid's spans and the odd ones one by one."""
    from mlfix.pipeline.clusters import cluster_embeddings

    found = cluster_embeddings(x, seed=0)
    current = labels.copy()
    curve = Curve([0], [int((current == truth).sum())])
    for cluster in range(found.k):
        rows = np.flatnonzero(found.assign == cluster)
        cls = majority(truth[rows])
        if not (current[rows] == cls).all():
            current[rows] = cls
            curve.add(2, int((current == truth).sum()))
    take_suggestions(x, order, spans_of_runs(run_ids, truth[order]), truth, current, curve, k)
    fix_odd_ones(order, truth, current, curve)
    return curve


def simulate_one_by_one(order: np.ndarray, truth: np.ndarray, labels: np.ndarray) -> Curve:
    """The baseline: one press per image, in grid order.

    >>> simulate_one_by_one(np.arange(3), np.array([0, 1, 1]), np.array([0, 0, -1])).correct
    [1, 1, 2, 3]
    """
    right = int((labels == truth).sum())
    curve = Curve([0], [right])
    for row in order:
        right += int(labels[row] != truth[row])
        curve.add(1, right)
    return curve


def replace_labels(truth: np.ndarray, n_classes: int, rate: float, seed: int) -> np.ndarray:
    """``truth`` with ``rate`` of the labels (a random subset) replaced by another class drawn at random.

    >>> (replace_labels(np.zeros(10, int), 3, 0.8, 0) != 0).sum()
    np.int64(8)
    """
    rng = np.random.default_rng(seed)
    labels = truth.copy()
    rows = rng.choice(len(truth), int(round(rate * len(truth))), replace=False)
    labels[rows] = (truth[rows] + rng.integers(1, n_classes, len(rows))) % n_classes
    return labels


# ---------------------------------------------------------------------------------------------
# One data set


def load(dataset: str, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(features float32, true class codes) of the first ``n`` (or seeded subset) images."""
    table = load_labels(dataset, n)
    column = "clean_label" if "clean_label" in table.columns else "label"
    _, truth = np.unique(table[column].to_numpy(), return_inverse=True)
    x = features(dataset, n, size, backbone=DEFAULT_BACKBONE, log=lambda *a, **k: print(*a, file=sys.stderr))
    return np.asarray(x["pooled"], dtype=np.float32), truth.astype(np.int64)


def figures(curve: Curve, n: int, initial: np.ndarray, truth: np.ndarray) -> dict:
    """Presses per image to 95% and 100%, presses per corrected label at 95%, share after n/10 presses."""
    to_target, to_all = curve.presses_to(TARGET, n), curve.presses_to(1.0, n)
    corrected = None
    if to_target is not None:  # labels made right by then: at least the gain in correct labels
        gained = curve.correct_after(to_target) - int((initial == truth).sum())
        corrected = round(to_target / max(gained, 1), 4)
    return {"presses_per_image_to_95": None if to_target is None else round(to_target / n, 4),
            "presses_per_image_to_100": None if to_all is None else round(to_all / n, 4),
            "presses_per_corrected_label_to_95": corrected,
            "correct_after_1_press_per_10_images": round(curve.correct_after(n / 10) / n, 4)}


def evaluate(dataset: str, n: int, size: int) -> None:
    from mlfix.pipeline.ordering.embedding import embedding_order
    from mlfix.pipeline.ordering.runs import run_ids

    x, truth = load(dataset, n, size)
    n_classes = int(truth.max()) + 1
    with timer() as took:
        order = embedding_order(x)
        runs = run_ids(x, order)
    setup = {"dataset": dataset, "size": size, "backbone": f"{DEFAULT_BACKBONE} offline", "classes": n_classes,
             "order": "embedding chain, all images", "runs": "mlfix.pipeline.ordering.runs.run_ids defaults"}
    t = truth[order]
    lengths = np.bincount(runs)
    pure = sum(int((t[runs == r] == majority(t[runs == r])).sum()) for r in range(len(lengths)))
    emit(BENCH, f"{dataset}.runs", int(len(lengths)), "runs", n, order_and_runs_s=round(took(), 2), **setup)
    emit(BENCH, f"{dataset}.mean_run_length", round(float(lengths.mean()), 2), "images", n, **setup)
    emit(BENCH, f"{dataset}.run_purity", round(pure / n, 4), "share", n, **setup)
    starts = {"unlabeled": np.full(n, -1, dtype=np.int64),
              "noisy80": replace_labels(truth, n_classes, NOISE_RATE, NOISE_SEED)}
    for start, labels in starts.items():
        for reviewer, curve in (("runs", simulate_runs(order, runs, truth, labels)),
                                ("runs_suggest", simulate_runs_and_suggestions(x, order, runs, truth, labels)),
                                ("clusters_suggest", simulate_clusters(x, order, runs, truth, labels)),
                                ("one_by_one", simulate_one_by_one(order, truth, labels))):
            for metric, value in figures(curve, n, labels, truth).items():
                unit = "share" if metric.startswith("correct") else "presses"
                emit(BENCH, f"{dataset}.{start}.{reviewer}.{metric}", value, unit, n, start=start,
                     reviewer=reviewer, initially_correct=round(float((labels == truth).mean()), 4), **setup)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--only", choices=sorted(FULL), help="one data set")
    args = p.parse_args(argv)
    sets = QUICK if args.quick else FULL
    for dataset, (n, size) in sets.items():
        if args.only and dataset != args.only:
            continue
        evaluate(dataset, n, size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
