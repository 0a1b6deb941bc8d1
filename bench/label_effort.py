"""Labelling effort: key presses of a simulated reviewer who labels runs of similar images at once.

    python -m bench.label_effort            # flowers17 (1,360 at 224 px), GTSRB 5,000 (96 px), CIFAR-10N 10,000 (112 px)
    python -m bench.label_effort --quick    # flowers17 1,360, GTSRB 1,000 and CIFAR-10N 1,000 at 96 px

Setup: the offline ``efficientnet_lite0`` (ImageNet weights): pooled vectors and 1,024 KMeans words
of one pass (bench/words.py's cached grids, the index's two artifacts); the truth is each set's
label (CIFAR-10N: ``clean_label``). Two starting points per set: (a) ``unlabeled``; (b) ``noisy80``:
80% of the labels replaced by another class drawn at random (seed 0), 20% left right.

The grid: all images in a similarity order, 200 per page (the Review page's default), cut into
runs where the order's similarity drops (:func:`mlfix.pipeline.ordering.runs.run_ids` on the pooled
vectors, the grid's breaks and its ``r`` key). Two orders (``setup.order``): ``combined``, the
Review page's default (the chain over :func:`mlfix.pipeline.ordering.weighted.index_combined_vectors`,
as ``mlfix index`` builds it), and ``embedding`` (the chain over the pooled vectors alone).

Costs, from what the grid does (mlfix/ui/grid.js; :class:`bench.label_effort_sim.Pager`): a class
key, a click, a button and a page flip (``n``) are one press each; after a decision the focus (and
the shift-click anchor) moves to the image after the last one decided, so a span that starts at the
focus costs 2 presses (``r`` or a shift-click on its last image, then the key) and one elsewhere 3
(a click on its first image first); a span over a page break costs ``n``, a shift-click and the key
on each further page. Not counted: typing the class names once, scrolling. The simulated reviewers
(bench/label_effort_sim.py), each following the grid in order:

- ``spans`` (the reviewer the grid is built for): on each page, from the focused image, the longest
  stretch of its true class, passing over at most ``TOLERANCE`` other images in a row (a person
  sees "these twelve are stop signs but one"), labelled in one decision, plus one click per image
  inside already labelled right, to take it out of the selection. A wrong image alone: its key.
  Stretches already right cost nothing. Then the odd ones.
- ``runs``: for each run, the class most of its images truly are (its majority); consecutive runs
  with the same majority are one span, labelled in one decision (none when right throughout). Every
  image of the span gets the class. Then the odd ones.
- ``runs_suggest``: ``runs``, then one pass of suggestions (the **Suggest labels** button, then Enter
  on each span where taking them helps; the grid suggests only for images nobody decided on), then
  the odd ones.
- ``clusters_suggest``: the Clusters page first (each cluster named with its majority class, 3
  presses: open the picker, pick, **Name**), then the suggestions pass, then the odd ones.
- the **odd ones**: every image still wrong, one by one in grid order: its key when focused (right
  after the last one fixed), else a click on it first, plus the page flips.

A class key is one press whatever the number of classes (keys 1-9, 0 and letters for 30 classes; a
click on the palette chip beyond). The baseline (``one_by_one``) labels image by image in the same
order: 1 press per image (the class key, or accept for an image already right), the focus moving on
by itself.

Figures per set, order and start (JSON lines via bench.common.emit): presses per image to reach 95%
and 100% correct labels, presses per corrected label (at 95%), the share correct after 1 press per
10 images; the same for the baseline; the runs' count, mean length and purity (share of images in
their run's majority class). Goal (issue 14): <= 0.25 presses per image to 95% correct on flowers17
and GTSRB.
"""

from __future__ import annotations

import sys

import numpy as np

from bench.common import emit, parser, timer
from bench.detect_features import DEFAULT_BACKBONE
from bench.label_effort_sim import (PAGE, TOLERANCE, Curve, majority, replace_labels, simulate_clusters,
                                    simulate_one_by_one, simulate_runs, simulate_runs_and_suggestions, simulate_spans)

BENCH = "label_effort"
NOISE_SEED = 0
NOISE_RATE = 0.8
TARGET = 0.95
FULL = {"flowers17": (1360, 224), "gtsrb35": (5000, 96), "cifar10n": (10_000, 112)}
QUICK = {"flowers17": (1360, 224), "gtsrb35": (1000, 96), "cifar10n": (1000, 96)}
WORDS = 1024  # KMeans words of the index (its default)
ORDERS = ("combined", "embedding")  # the Review page's default first


# ---------------------------------------------------------------------------------------------
# One data set


def load(dataset: str, n: int, size: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(bench/words.py's grids: ``pooled``, ``words``, ``ok`` of one pass, true class codes) of the
    ``n`` rows of :func:`bench.defaults.subset`."""
    from bench.defaults import subset
    from bench.words import grids

    table = subset(dataset, n)
    column = "clean_label" if "clean_label" in table.columns else "label"
    _, truth = np.unique(table[column].to_numpy(), return_inverse=True)
    data = grids(dataset, n, size, WORDS, log=lambda *a, **k: print(*a, file=sys.stderr))
    return data, truth.astype(np.int64)


def order_vectors(data: dict[str, np.ndarray], order: str) -> np.ndarray:
    """The vectors the ``order`` (``combined`` or ``embedding``) chains, as ``mlfix index`` builds them."""
    from mlfix.pipeline.ordering.weighted import index_combined_vectors

    pooled = np.asarray(data["pooled"], dtype=np.float32)
    return pooled if order == "embedding" else index_combined_vectors(pooled, data["words"], WORDS, data["ok"])


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

    data, truth = load(dataset, n, size)
    x = np.asarray(data["pooled"], dtype=np.float32)
    n_classes = int(truth.max()) + 1
    starts = {"unlabeled": np.full(n, -1, dtype=np.int64),
              "noisy80": replace_labels(truth, n_classes, NOISE_RATE, NOISE_SEED)}
    for order_name in ORDERS:
        with timer() as took:
            order = embedding_order(order_vectors(data, order_name))
            runs = run_ids(x, order)
        setup = {"dataset": dataset, "size": size, "backbone": f"{DEFAULT_BACKBONE} offline", "classes": n_classes,
                 "order": order_name, "words": WORDS, "page": PAGE, "tolerance": TOLERANCE,
                 "runs": "mlfix.pipeline.ordering.runs.run_ids defaults"}
        t = truth[order]
        lengths = np.bincount(runs)
        pure = sum(int((t[runs == r] == majority(t[runs == r])).sum()) for r in range(len(lengths)))
        prefix = f"{dataset}.{order_name}"
        emit(BENCH, f"{prefix}.runs", int(len(lengths)), "runs", n, order_and_runs_s=round(took(), 2), **setup)
        emit(BENCH, f"{prefix}.mean_run_length", round(float(lengths.mean()), 2), "images", n, **setup)
        emit(BENCH, f"{prefix}.run_purity", round(pure / n, 4), "share", n, **setup)
        emit(BENCH, f"{prefix}.adjacent_purity", round(float((t[1:] == t[:-1]).mean()), 4), "share", n, **setup)
        for start, labels in starts.items():
            for reviewer, curve in (("spans", simulate_spans(order, truth, labels)),
                                    ("runs", simulate_runs(order, runs, truth, labels)),
                                    ("runs_suggest", simulate_runs_and_suggestions(x, order, runs, truth, labels)),
                                    ("clusters_suggest", simulate_clusters(x, order, runs, truth, labels)),
                                    ("one_by_one", simulate_one_by_one(order, truth, labels))):
                for metric, value in figures(curve, n, labels, truth).items():
                    unit = "share" if metric.startswith("correct") else "presses"
                    emit(BENCH, f"{prefix}.{start}.{reviewer}.{metric}", value, unit, n, start=start,
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
