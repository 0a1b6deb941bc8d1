"""bench/label_effort_sim.py: the simulated reviewers' accounting (pure functions of class codes)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import label_effort_sim as le

grids = st.integers(2, 120).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, 4), min_size=n, max_size=n),          # true classes
    st.lists(st.integers(-1, 4), min_size=n, max_size=n),         # starting labels (-1: none)
    st.permutations(list(range(n))),                              # the grid's order
    st.sampled_from([None, 7, 200]),                              # page size
    st.integers(0, 3)))                                           # tolerance


@settings(max_examples=150, deadline=None)
@given(grids)
def test_every_reviewer_ends_with_every_label_right_and_pays_for_each_step(grid):
    truth, labels, order, page, tolerance = (np.array(grid[0]), np.array(grid[1]), np.array(grid[2]), grid[3],
                                             grid[4])
    runs = np.arange(len(truth)) // 3  # runs of three
    for curve in (le.simulate_spans(order, truth, labels, page=page, tolerance=tolerance),
                  le.simulate_runs(order, runs, truth, labels, page=page)):
        presses, correct = np.array(curve.presses), np.array(curve.correct)
        assert correct[-1] == len(truth) and correct[0] == (labels == truth).sum()
        assert (np.diff(presses) >= 1).all()  # no step is free
        assert presses[-1] <= 3 * len(truth) + (len(truth) // page * 4 if page else 0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=1, max_size=12))
def test_a_grid_sorted_by_class_costs_two_presses_per_class_and_one_per_single_image(lengths):
    truth = np.repeat(np.arange(len(lengths)), lengths)
    curve = le.simulate_spans(np.arange(len(truth)), truth, np.full(len(truth), -1), page=None)
    assert curve.presses[-1] == sum(2 if length > 1 else 1 for length in lengths)
    assert curve.correct[-1] == len(truth)


def test_a_stretch_passes_over_odd_images_and_pays_for_them_later():
    truth = np.array([0, 0, 1, 0, 0, 0, 2, 2, 2])
    curve = le.simulate_spans(np.arange(9), truth, np.full(9, -1), page=None, tolerance=1)
    # shift-click + key (0..5, the 1 labelled 0 for now), shift-click + key (the 2s), click + key (the 1)
    assert curve.presses == [0, 2, 4, 6] and curve.correct == [0, 5, 8, 9]
    strict = le.simulate_spans(np.arange(9), truth, np.full(9, -1), page=None, tolerance=0)
    assert strict.presses == [0, 2, 3, 5, 7]  # 0 0 | 1 (its key) | 0 0 0 | 2 2 2


def test_a_right_label_inside_a_stretch_is_clicked_out_not_overwritten():
    truth, labels = np.array([0, 0, 1, 0, 0]), np.array([-1, -1, 1, -1, -1])
    curve = le.simulate_spans(np.arange(5), truth, labels, page=None, tolerance=1)
    assert curve.presses == [0, 3] and curve.correct == [1, 5]  # shift-click, click out the 1, key


def test_page_flips_cost_a_press_each():
    truth = np.zeros(10, int)
    one_page = le.simulate_spans(np.arange(10), truth, np.full(10, -1), page=None)
    pages = le.simulate_spans(np.arange(10), truth, np.full(10, -1), page=4)
    assert one_page.presses[-1] == 2 and pages.presses[-1] == 2 + (1 + 2) + (1 + 2)


def test_a_run_over_page_breaks_pays_a_flip_a_shift_click_and_a_key_per_further_page():
    truth = np.zeros(10, int)
    curve = le.simulate_runs(np.arange(10), np.zeros(10, int), truth, np.full(10, -1), page=4)
    assert curve.presses == [0, 2 + 3 + 3]  # r + key, then (n, shift-click, key) on each of two pages


def test_a_run_away_from_the_focus_needs_a_click_first():
    truth = np.array([0, 0, 0, 1, 1, 1])
    labels = np.array([0, 0, 0, -1, -1, -1])  # the first run is right already: the focus stays on it
    curve = le.simulate_runs(np.arange(6), np.array([0, 0, 0, 1, 1, 1]), truth, labels, page=None)
    assert curve.presses == [0, 3] and curve.correct == [3, 6]


def test_suggestions_reach_only_the_images_nobody_decided_on():
    rng = np.random.default_rng(0)
    x = np.repeat(np.eye(2, 8) * 5, 20, axis=0) + rng.normal(0, 0.3, (40, 8))
    truth = np.repeat([0, 1], 20)
    labels = np.full(40, -1)
    pager = le.Pager(None, 40)
    current, curve = labels.copy(), le.Curve([0], [0])
    current[[0, 1, 20, 21]], pager.reviewed[[0, 1, 20, 21]] = truth[[0, 1, 20, 21]], True
    le.take_suggestions(x, np.arange(40), [(0, 20, 0, 1), (20, 40, 1, 1)], truth, current, curve, k=3, pager=pager)
    assert (current == truth).all() and pager.reviewed.all()
    assert curve.presses == [0, 1, 3, 5]  # the button; shift-click + Enter on each span (the focus moves on)
    pager.reviewed[:] = True  # all decided: the grid shows no suggestion, the button gives nothing to take
    current[5] = 1
    le.take_suggestions(x, np.arange(40), [(0, 20, 0, 1)], truth, current, curve, k=3, pager=pager)
    assert current[5] == 1 and curve.presses[-1] == 6
