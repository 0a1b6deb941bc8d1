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

Costs, from what the grid does (mlfix/ui/grid.js): a class key or a click is one press; after a
decision the focus (and the shift-click anchor) moves to the image after the last one decided; a
page flip (``n``) is one press. The simulated reviewers, each following the grid in order:

- ``spans`` (the reviewer the grid is built for): on each page, from the focused image, the longest
  stretch of its true class, passing over at most :data:`TOLERANCE` other images in a row (a person
  sees "these twelve are stop signs but one"). The stretch is labelled in one decision: shift-click
  its last image and press the class key (2 presses; 3 when the stretch does not start at the focus:
  a click on its first image first), plus one click per image inside already labelled right, to
  take it out of the selection. A stretch of one image that is wrong: its class key (1 press, 2
  when not focused). Stretches already right cost nothing. Then the odd ones.
- ``runs``: for each run, the class most of its images truly are (its majority); consecutive runs
  with the same majority are one span. A span already right throughout costs nothing; else one run
  costs 2 presses (the run key on a focused image, then the class key), several runs 3 (click,
  shift-click, class key). Every image of the span gets the class. Then the odd ones.
- ``runs_suggest``: ``runs``, then one pass of suggestions (:func:`take_suggestions`), then the odd ones.
- ``clusters_suggest``: the Clusters page first (each cluster named with its majority class), then
  the suggestions pass, then the odd ones.
- the **odd ones**: every image still wrong, one by one in grid order: 2 presses (click it, class
  key), 1 when it follows the last one fixed (the focus moves on by itself), plus the page flips.

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
from dataclasses import dataclass
from typing import Callable

import numpy as np

from bench.common import emit, parser, timer
from bench.detect_features import DEFAULT_BACKBONE

BENCH = "label_effort"
NOISE_SEED = 0
NOISE_RATE = 0.8
TARGET = 0.95
FULL = {"flowers17": (1360, 224), "gtsrb35": (5000, 96), "cifar10n": (10_000, 112)}
QUICK = {"flowers17": (1360, 224), "gtsrb35": (1000, 96), "cifar10n": (1000, 96)}
WORDS = 1024  # KMeans words of the index (its default)
PAGE = 200  # images per page of the Review grid (its default)
TOLERANCE = 2  # the spans reviewer passes over at most this many other images in a row
ORDERS = ("combined", "embedding")  # the Review page's default first


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


class Pager:
    """The grid's page: ``flip_to(position)`` is the page flips (``n``/``p``, one press each) to show
    the page holding ``position``; ``page=None``: one page, no flips.

    >>> pager = Pager(200); pager.flip_to(450), pager.flip_to(10), Pager(None).flip_to(10_000)
    (2, 2, 0)
    """

    def __init__(self, page: int | None = PAGE):
        self.page, self.shown = page, 0

    def flip_to(self, position: int) -> int:
        if self.page is None:
            return 0
        target = position // self.page
        flips, self.shown = abs(target - self.shown), target
        return flips

    def last_page(self, start: int, stop: int) -> int:
        """Pages that ``[start, stop)`` reaches past the one holding ``start`` (each a decision more)."""
        return 0 if self.page is None else (stop - 1) // self.page - start // self.page


def label_runs(order: np.ndarray, run_ids: np.ndarray, truth: np.ndarray, current: np.ndarray,
               curve: Curve, pager: Pager | None = None) -> list[tuple[int, int, int, int]]:
    """Phase 1: each span of runs (:func:`spans_of_runs`) labelled with its majority class, in grid
    order (``current`` changed in place); a span over a page break is one decision more per page
    (2 presses each). Returns the spans."""
    pager = pager or Pager(None)
    spans = spans_of_runs(run_ids, truth[order])
    for start, stop, cls, runs in spans:
        rows = order[start:stop]
        if (current[rows] == cls).all():
            continue
        current[rows] = cls
        more_pages = pager.last_page(start, stop)
        cost = pager.flip_to(start) + (2 if runs == 1 else 3) + 2 * more_pages
        pager.flip_to(stop - 1)
        curve.add(cost, int((current == truth).sum()))
    return spans


def fix_odd_ones(order: np.ndarray, truth: np.ndarray, current: np.ndarray, curve: Curve,
                 pager: Pager | None = None) -> None:
    """Last phase: every image still wrong, one by one in grid order: the class key (1 press) when it
    is the image right after the last one fixed (the focus moves on by itself), else a click on it
    first (2 presses); plus the page flips to reach it.

    >>> curve = Curve([0], [0]); fix_odd_ones(np.arange(5), np.zeros(5, int), np.array([1, 1, 0, 1, 0]), curve)
    >>> curve.presses, curve.correct
    ([0, 2, 3, 5], [0, 3, 4, 5])
    """
    pager = pager or Pager(None)
    right = int((current == truth).sum())
    last = -2
    for position in np.flatnonzero(current[order] != truth[order]):
        row = order[position]
        current[row] = truth[row]
        right += 1
        flips = pager.flip_to(int(position))
        curve.add(flips + (1 if position == last + 1 and not flips else 2), right)
        last = int(position)


def span_end(truth_in_order: np.ndarray, start: int, stop: int, tolerance: int = TOLERANCE) -> int:
    """End (exclusive) of the stretch of ``truth_in_order[start]``'s class from ``start``, passing over
    at most ``tolerance`` other values in a row, within ``[start, stop)``; it ends on its class.

    >>> t = np.array([1, 1, 2, 1, 3, 3, 1, 4])
    >>> span_end(t, 0, 8, 0), span_end(t, 0, 8, 1), span_end(t, 0, 8, 2), span_end(t, 0, 5, 2)
    (2, 4, 7, 4)
    """
    cls, end, position = truth_in_order[start], start + 1, start + 1
    while position < stop:
        ahead = position
        while ahead < stop and ahead - position < tolerance and truth_in_order[ahead] != cls:
            ahead += 1
        if ahead == stop or truth_in_order[ahead] != cls:
            break
        end = position = ahead + 1
    return end


def label_spans(order: np.ndarray, truth: np.ndarray, current: np.ndarray, curve: Curve, pager: Pager,
                tolerance: int = TOLERANCE) -> None:
    """The spans reviewer's pass (module docstring), page by page, ``current`` changed in place."""
    t, n = truth[order], len(order)
    for first in range(0, n, pager.page or n):
        stop, focus, position = min(first + (pager.page or n), n), first, first
        while position < stop:
            end = span_end(t, position, stop, tolerance)
            cls, rows = t[position], order[position:end]
            if end - position == 1:
                if current[rows[0]] != cls:
                    current[rows[0]] = cls
                    curve.add(pager.flip_to(position) + (1 if position == focus else 2), int((current == truth).sum()))
                    focus = end
            else:
                kept = (truth[rows] != cls) & (current[rows] == truth[rows])  # right already: clicked out
                take = rows[~kept]
                if int((truth[take] == cls).sum() - (current[take] == truth[take]).sum()) > 0:
                    current[take] = cls
                    cost = pager.flip_to(position) + (2 if position == focus else 3) + int(kept.sum())
                    curve.add(cost, int((current == truth).sum()))
                    focus = end
            position = end


def reviewed(order: np.ndarray, truth: np.ndarray, labels: np.ndarray, page: int | None,
             first_pass: Callable[[np.ndarray, Curve, Pager], None]) -> Curve:
    """The curve of a reviewer who starts from ``labels`` (codes, -1 unlabeled), makes
    ``first_pass(current, curve, pager)`` (changing ``current`` in place, adding its steps to
    ``curve``), then fixes the odd ones (:func:`fix_odd_ones`) on the same pages."""
    current = labels.copy()
    curve = Curve([0], [int((current == truth).sum())])
    pager = Pager(page)
    first_pass(current, curve, pager)
    fix_odd_ones(order, truth, current, curve, pager)
    return curve


def simulate_spans(order: np.ndarray, truth: np.ndarray, labels: np.ndarray, page: int | None = PAGE,
                   tolerance: int = TOLERANCE) -> Curve:
    """The spans reviewer (module docstring) on ``labels`` (codes, -1 unlabeled): stretches of one
    class, then the odd ones.

    >>> truth = np.array([0, 0, 0, 1, 0, 0, 2, 2])
    >>> curve = simulate_spans(np.arange(8), truth, np.full(8, -1), page=None)
    >>> curve.presses, curve.correct   # shift-click + key twice, then the 1 fixed (click + key)
    ([0, 2, 4, 6], [0, 5, 7, 8])
    """
    return reviewed(order, truth, labels, page,
                    lambda current, curve, pager: label_spans(order, truth, current, curve, pager, tolerance))


def simulate_runs(order: np.ndarray, run_ids: np.ndarray, truth: np.ndarray, labels: np.ndarray,
                  page: int | None = PAGE) -> Curve:
    """The run-labelling reviewer (module docstring) on ``labels`` (codes, -1 unlabeled).

    >>> truth = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    >>> curve = simulate_runs(np.arange(8), np.array([0, 0, 0, 0, 1, 1, 1, 1]), truth, np.full(8, -1))
    >>> curve.presses, curve.correct
    ([0, 2, 4, 6, 8], [0, 3, 6, 7, 8])
    """
    return reviewed(order, truth, labels, page,
                    lambda current, curve, pager: label_runs(order, run_ids, truth, current, curve, pager))


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
                                  labels: np.ndarray, k: int = 10, page: int | None = PAGE) -> Curve:
    """The run reviewer, plus one pass of suggestions between runs and odd ones: after labelling the
    runs, each image gets the kNN vote of its neighbours' labels; on a span where taking the
    suggestions fixes more than it breaks, the reviewer selects it and presses Enter (the grid
    relabels each selected image to its suggestion): 2 presses (3 for several runs); then the odd
    ones one by one."""
    def runs_then_suggestions(current: np.ndarray, curve: Curve, pager: Pager) -> None:
        spans = label_runs(order, run_ids, truth, current, curve, pager)
        take_suggestions(x, order, spans, truth, current, curve, k, pager)

    return reviewed(order, truth, labels, page, runs_then_suggestions)


def take_suggestions(x: np.ndarray, order: np.ndarray, spans: list, truth: np.ndarray, current: np.ndarray,
                     curve: Curve, k: int, pager: Pager | None = None) -> None:
    """One pass of suggestions (the kNN vote of the current labels) over the grid's spans: where taking
    them fixes more images than it breaks, select the span and press Enter (2 presses, 3 for several runs)."""
    pager = pager or Pager(None)
    suggested = suggestion_codes(x, current, k)
    for start, stop, _, runs in spans:
        rows = order[start:stop]
        take = rows[(suggested[rows] >= 0) & (suggested[rows] != current[rows])]
        if int((suggested[take] == truth[take]).sum() - (current[take] == truth[take]).sum()) > 0:
            current[take] = suggested[take]
            cost = pager.flip_to(start) + (2 if runs == 1 else 3) + 2 * pager.last_page(start, stop)
            pager.flip_to(stop - 1)
            curve.add(cost, int((current == truth).sum()))


def simulate_clusters(x: np.ndarray, order: np.ndarray, run_ids: np.ndarray, truth: np.ndarray,
                      labels: np.ndarray, k: int = 10, page: int | None = PAGE) -> Curve:
    """The Clusters page first: each cluster (:func:`mlfix.pipeline.clusters.cluster_embeddings`,
    ``choose_k``) named with its majority class, 2 presses (pick the class, **Name**; none when the
    cluster is right already); then, as :func:`simulate_runs_and_suggestions`, the suggestions pass
    over the grid's spans and the odd ones one by one."""
    from mlfix.pipeline.clusters import cluster_embeddings

    found = cluster_embeddings(x, seed=0)

    def clusters_then_suggestions(current: np.ndarray, curve: Curve, pager: Pager) -> None:
        for cluster in range(found.k):
            rows = np.flatnonzero(found.assign == cluster)
            cls = majority(truth[rows])
            if not (current[rows] == cls).all():
                current[rows] = cls
                curve.add(2, int((current == truth).sum()))
        take_suggestions(x, order, spans_of_runs(run_ids, truth[order]), truth, current, curve, k, pager)

    return reviewed(order, truth, labels, page, clusters_then_suggestions)


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
