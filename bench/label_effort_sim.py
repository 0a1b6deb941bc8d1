"""The simulated reviewers of bench/label_effort.py: pure functions of class codes (-1 = unlabeled).

Each reviewer returns a :class:`Curve` (correct labels after each step, and the presses so far). The
costs are what the Review grid does (mlfix/ui/grid.js; see bench/label_effort.py's docstring): a
class key, a click and a page flip are one press each; after a decision the focus (and the
shift-click anchor) moves to the image after the last one decided, so a span that starts at the
focus costs 2 presses (``r`` or a shift-click, then the key) and one elsewhere 3 (a click first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

PAGE = 200  # images per page of the Review grid (its default)
TOLERANCE = 2  # the spans reviewer passes over at most this many other images in a row
NAME_CLUSTER = 3  # the Clusters page: open the class picker, pick the class, press Name



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
    """The grid the reviewer sees: its page and focused image, and what one decision costs.

    ``flip_to(position)``: the page flips (``n``/``p``, one press each) to show ``position``'s page;
    a new page puts the focus on its first image. ``decision(start, stop)``: the presses to label
    positions ``[start, stop)`` with one key (see the module docstring), after which the focus is on
    ``stop``. ``page=None``: one page. ``reviewed`` (rows, set by the reviewers' passes): the images
    a reviewer has decided on, which the grid shows as reviewed and suggests nothing for.

    >>> pager = Pager(200); pager.flip_to(450), pager.flip_to(10), Pager(None).flip_to(10_000)
    (2, 2, 0)
    >>> pager = Pager(4); [pager.decision(0, 3), pager.decision(3, 4), pager.decision(5, 6), pager.decision(6, 10)]
    [2, 1, 3, 5]
    """

    def __init__(self, page: int | None = PAGE, n: int = 0):
        self.page, self.shown, self.focus = page, 0, 0
        self.reviewed = np.zeros(n, dtype=bool)

    def flip_to(self, position: int) -> int:
        if self.page is None:
            return 0
        target = position // self.page
        flips, self.shown = abs(target - self.shown), target
        if flips:
            self.focus = target * self.page
        return flips

    def decision(self, start: int, stop: int) -> int:
        """Flips to ``start``'s page, a click on ``start`` unless focused, ``r`` or a shift-click on the
        last image when there are several, the key; each further page: ``n``, a shift-click, the key."""
        cost = self.flip_to(start) + (start != self.focus) + (stop - start > 1) + 1
        more_pages = 0 if self.page is None else (stop - 1) // self.page - start // self.page
        cost += 3 * more_pages
        if more_pages:
            self.shown = (stop - 1) // self.page
        self.focus = stop
        return cost


def label_runs(order: np.ndarray, run_ids: np.ndarray, truth: np.ndarray, current: np.ndarray,
               curve: Curve, pager: Pager | None = None) -> list[tuple[int, int, int, int]]:
    """Phase 1: each span of runs (:func:`spans_of_runs`) labelled with its majority class, in grid
    order (``current`` changed in place), one :meth:`Pager.decision` each. Returns the spans."""
    pager = pager or Pager(None, len(current))
    spans = spans_of_runs(run_ids, truth[order])
    for start, stop, cls, _ in spans:
        rows = order[start:stop]
        if (current[rows] == cls).all():
            continue
        current[rows], pager.reviewed[rows] = cls, True
        curve.add(pager.decision(start, stop), int((current == truth).sum()))
    return spans


def fix_odd_ones(order: np.ndarray, truth: np.ndarray, current: np.ndarray, curve: Curve,
                 pager: Pager | None = None) -> None:
    """Last phase: every image still wrong, one by one in grid order: the class key (1 press) when it
    is focused (right after the last one fixed: the focus moves on by itself), else a click on it
    first (2 presses); plus the page flips to reach it.

    >>> curve = Curve([0], [0]); fix_odd_ones(np.arange(5), np.zeros(5, int), np.array([1, 1, 0, 1, 0]), curve)
    >>> curve.presses, curve.correct
    ([0, 1, 2, 4], [0, 3, 4, 5])
    """
    pager = pager or Pager(None, len(current))
    right = int((current == truth).sum())
    for position in np.flatnonzero(current[order] != truth[order]):
        row = order[position]
        current[row], pager.reviewed[row] = truth[row], True
        right += 1
        curve.add(pager.decision(int(position), int(position) + 1), right)


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
    """The spans reviewer's pass (module docstring), page by page, ``current`` changed in place: one
    :meth:`Pager.decision` per stretch, plus a click per image inside it already labelled right."""
    t, n = truth[order], len(order)
    size = pager.page or max(n, 1)
    for first in range(0, n, size):
        stop, position = min(first + size, n), first
        while position < stop:
            end = span_end(t, position, stop, tolerance)
            cls, rows = t[position], order[position:end]
            kept = (truth[rows] != cls) & (current[rows] == truth[rows])  # right already: clicked out
            take = rows[~kept]
            if int((truth[take] == cls).sum() - (current[take] == truth[take]).sum()) > 0:
                current[take], pager.reviewed[take] = cls, True
                curve.add(pager.decision(position, end) + int(kept.sum()), int((current == truth).sum()))
            position = end


def reviewed(order: np.ndarray, truth: np.ndarray, labels: np.ndarray, page: int | None,
             first_pass: Callable[[np.ndarray, Curve, Pager], None]) -> Curve:
    """The curve of a reviewer who starts from ``labels`` (codes, -1 unlabeled), makes
    ``first_pass(current, curve, pager)`` (changing ``current`` in place, adding its steps to
    ``curve``), then fixes the odd ones (:func:`fix_odd_ones`) on the same pages."""
    current = labels.copy()
    curve = Curve([0], [int((current == truth).sum())])
    pager = Pager(page, len(labels))
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


def suggestion_codes(x: np.ndarray, current: np.ndarray, reviewed: np.ndarray, k: int) -> np.ndarray:
    """Each image's suggested class as the Review page gets it (``Project.suggest``'s kNN vote of the
    current labels, reviewed ones counting twice, ``scope="all"``): for the images no reviewer
    decided on, never their own label back; -1 where none."""
    from mlfix.scoring.suggest import suggest_labels

    table = suggest_labels(x, np.where(current >= 0, current, None), np.arange(len(current)), method="knn",
                           scope="all", k=k, trusted=reviewed)
    out = np.full(len(current), -1, dtype=np.int64)
    out[table["sample_id"].to_numpy(dtype=np.int64)] = table["suggested_label"].to_numpy(dtype=np.int64)
    return out


def simulate_runs_and_suggestions(x: np.ndarray, order: np.ndarray, run_ids: np.ndarray, truth: np.ndarray,
                                  labels: np.ndarray, k: int = 10, page: int | None = PAGE) -> Curve:
    """The run reviewer, plus one pass of suggestions (:func:`take_suggestions`) between the runs and
    the odd ones."""
    def runs_then_suggestions(current: np.ndarray, curve: Curve, pager: Pager) -> None:
        spans = label_runs(order, run_ids, truth, current, curve, pager)
        take_suggestions(x, order, spans, truth, current, curve, k, pager)

    return reviewed(order, truth, labels, page, runs_then_suggestions)


def take_suggestions(x: np.ndarray, order: np.ndarray, spans: list, truth: np.ndarray, current: np.ndarray,
                     curve: Curve, k: int, pager: Pager) -> None:
    """One pass of suggestions: the **Suggest labels** button (1 press), then on each span of the grid
    where taking the suggestions of the images nobody decided on yet (the only ones the grid shows a
    suggestion on) fixes more than it breaks, select the span and press Enter (a :meth:`Pager.decision`)."""
    suggested = suggestion_codes(x, current, pager.reviewed, k)
    curve.add(1, int((current == truth).sum()))
    for start, stop, _, _ in spans:
        rows = order[start:stop]
        take = rows[(suggested[rows] >= 0) & (suggested[rows] != current[rows]) & ~pager.reviewed[rows]]
        if int((suggested[take] == truth[take]).sum() - (current[take] == truth[take]).sum()) > 0:
            current[take], pager.reviewed[take] = suggested[take], True
            curve.add(pager.decision(start, stop), int((current == truth).sum()))


def simulate_clusters(x: np.ndarray, order: np.ndarray, run_ids: np.ndarray, truth: np.ndarray,
                      labels: np.ndarray, k: int = 10, page: int | None = PAGE) -> Curve:
    """The Clusters page first: each cluster (:func:`mlfix.pipeline.clusters.cluster_embeddings`,
    ``choose_k``) named with its majority class, :data:`NAME_CLUSTER` presses (none when the cluster
    is right already); then, as :func:`simulate_runs_and_suggestions`, the suggestions pass over the
    grid's spans and the odd ones one by one."""
    from mlfix.pipeline.clusters import cluster_embeddings

    found = cluster_embeddings(x, seed=0)

    def clusters_then_suggestions(current: np.ndarray, curve: Curve, pager: Pager) -> None:
        for cluster in range(found.k):
            rows = np.flatnonzero(found.assign == cluster)
            cls = majority(truth[rows])
            if not (current[rows] == cls).all():
                current[rows], pager.reviewed[rows] = cls, True
                curve.add(NAME_CLUSTER, int((current == truth).sum()))
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
