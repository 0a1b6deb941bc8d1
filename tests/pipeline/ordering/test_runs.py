"""Runs of a similarity order (mlfix.pipeline.ordering.runs): the run ids' invariants, the gap and
depth scores against plain loops, planted drops found exactly, scale invariance, input checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from mlfix.pipeline.ordering.runs import (NOISE, boundaries, depth_scores, gap_similarity, run_ids,
                                          run_ids_from_similarity, run_starts)
from tests.pipeline.ordering.bags_for_tests import FAST


@st.composite
def orders(draw, max_n: int = 50, max_d: int = 6):
    """(embeddings, order): gaussian, clustered or float16 rows; the order a permutation or a subset."""
    n = draw(st.integers(0, max_n))
    d = draw(st.integers(1, max_d))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.normal(size=(n, d))
    kind = draw(st.sampled_from(["gaussian", "clustered", "float16"]))
    if kind == "clustered" and n:
        x = rng.normal(size=(3, d))[rng.integers(0, 3, n)] * 4 + x
    elif kind == "float16":
        x = x.astype(np.float16)
    order = rng.permutation(n) if draw(st.booleans()) else rng.integers(0, max(n, 1), rng.integers(0, n + 1))
    return x, order.astype(np.int64)


def segments(lengths: list[int], d: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Rows of segment k point along basis vector k % d (consecutive segments are orthogonal), with a
    little noise: similarity about 1 inside a segment, about 0 across."""
    labels = np.repeat(np.arange(len(lengths)) % d, lengths)
    return np.eye(d)[labels] + noise * rng.normal(size=(len(labels), d))


def brute_gaps(x: np.ndarray, order: np.ndarray, width: int, condition: bool = False):
    """The gaps in float64; with ``condition``, also how much float32 rounding each may carry: the
    window sums of unit rows can nearly cancel, and the cosine of a near-zero sum is ill-conditioned."""
    u = x.astype(np.float64)
    u = u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
    u = u[order]
    out, spread = [], []
    for p in range(1, len(order)):
        rows_a, rows_b = u[max(0, p - width):p], u[p:p + width]
        a, b = rows_a.sum(0), rows_b.sum(0)
        out.append(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
        spread.append(len(rows_a) / max(np.linalg.norm(a), 1e-12) + len(rows_b) / max(np.linalg.norm(b), 1e-12))
    return (np.array(out), np.array(spread)) if condition else np.array(out)


def brute_depth(s: np.ndarray) -> np.ndarray:
    out = []
    for i in range(len(s)):
        left = i
        while left > 0 and s[left - 1] >= s[left]:
            left -= 1
        right = i
        while right < len(s) - 1 and s[right + 1] >= s[right]:
            right += 1
        out.append(s[left] + s[right] - 2 * s[i])
    return np.array(out)


@FAST
@given(orders(), st.integers(1, 3), st.integers(1, 5))
def test_run_ids_start_at_zero_rise_by_one_and_cover_every_position(case, width, min_run):
    x, order = case
    ids = run_ids(x, order, width=width, min_run=min_run)
    assert ids.dtype == np.int64 and ids.shape == (len(order),)
    if len(order):
        assert ids[0] == 0
        assert set(np.diff(ids).tolist()) <= {0, 1}
        lengths = np.bincount(ids)
        assert (lengths >= min(max(min_run, width), len(order))).all()
        assert run_starts(ids).tolist() == [0] + (np.flatnonzero(np.diff(ids)) + 1).tolist()


@FAST
@given(orders(), st.integers(1, 4), st.integers(1, 9))
def test_gap_scores_equal_the_plain_loop_whatever_the_block(case, width, block):
    x, order = case
    got = gap_similarity(x, order, width=width, block=block)
    assert got.dtype == np.float32 and got.shape == (max(len(order) - 1, 0),)
    expected, spread = brute_gaps(x, order, width, condition=True)
    assert (np.abs(got - expected) <= 2e-5 + 2e-6 * spread).all()


@FAST
@given(st.lists(st.floats(-1, 1, width=32), max_size=40))
def test_depth_scores_equal_the_climbing_loop(values):
    s = np.array(values, dtype=np.float32)
    np.testing.assert_allclose(depth_scores(s), brute_depth(s), atol=1e-6)
    assert (depth_scores(s) >= 0).all()


@FAST
@given(st.integers(0, 60), st.floats(-1, 1), st.integers(1, 6))
def test_a_constant_similarity_is_one_run(n, value, min_run):
    assert run_ids_from_similarity(np.full(n, value), min_run).tolist() == [0] * (n + 1)


@FAST
@given(st.integers(2, 80), st.floats(0.01, 3.0), st.integers(1, 3), st.floats(1e-3, 1e3))
def test_a_walk_at_a_constant_angle_is_one_run(n, angle, width, scale):
    # consecutive images a constant angle apart (a walk around a circle): the same similarity at
    # every interior gap, whatever the step and the scale
    t = angle * np.arange(n)
    x = scale * np.stack([np.cos(t), np.sin(t)], axis=1).astype(np.float32)
    assert run_ids(x, width=width, min_run=max(width, 2)).tolist() == [0] * n


@FAST
@given(st.lists(st.integers(3, 12), min_size=1, max_size=8), st.integers(1, 3), st.integers(2, 5),
       st.integers(0, 2**32 - 1))
def test_planted_drops_are_exactly_the_boundaries(lengths, width, d, seed):
    # every run at least min_run long; the first and the last longer than the window, so that a
    # full window on either side of their end sees the drop
    assume(lengths[0] > width and lengths[-1] > width)
    min_run = 3
    rng = np.random.default_rng(seed)
    x = segments(lengths, d, noise=1e-4, rng=rng)
    expected = np.repeat(np.arange(len(lengths)), lengths)
    assert run_ids(x, width=width, min_run=min_run).tolist() == expected.tolist()
    # the same through an order: shuffle the rows, pass the order that puts them back
    perm = rng.permutation(len(x))
    shuffled = np.empty_like(x)
    shuffled[perm] = x
    assert run_ids(shuffled, order=perm, width=width, min_run=min_run).tolist() == expected.tolist()


@FAST
@given(st.integers(3, 30), st.integers(0, 40), st.floats(-1, 0.9))
def test_one_planted_drop_in_a_constant_similarity_is_a_boundary(before, after, drop):
    s = np.array([1.0] * before + [drop] + [0.95] * after)
    cuts = boundaries(s, min_run=1)
    assert np.flatnonzero(cuts).tolist() == [before]


@FAST
@given(orders(), st.lists(st.integers(-6, 6), min_size=1, max_size=50), st.integers(1, 3))
def test_run_ids_ignore_the_scale_of_each_embedding(case, exponents, width):
    x, order = case
    x = x.astype(np.float32)
    scales = np.float32(2.0) ** np.resize(np.array(exponents), len(x)).astype(np.float32)
    scaled = x * scales[:, None]
    assert run_ids(scaled, order, width=width).tolist() == run_ids(x, order, width=width).tolist()
    half = x.astype(np.float16)
    assert run_ids(half, order).tolist() == run_ids(half.astype(np.float32), order).tolist()


def test_unit_and_raw_embeddings_give_the_same_runs():
    rng = np.random.default_rng(3)
    x = segments([5, 7, 4, 9, 6], 4, noise=0.05, rng=rng) * rng.uniform(0.1, 50, size=(31, 1))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert run_ids(x).tolist() == run_ids(unit).tolist() == np.repeat(np.arange(5), [5, 7, 4, 9, 6]).tolist()


def test_drops_below_the_noise_floor_are_never_boundaries():
    s = np.ones(30)
    s[10] = 1 - NOISE / 4
    assert not boundaries(s, min_run=1).any()
    s[10] = 1 - NOISE
    assert np.flatnonzero(boundaries(s, min_run=1)).tolist() == [10]


def test_boundaries_keep_the_deepest_drop_within_min_run():
    s = np.array([0.9, 0.9, 0.9, 0.5, 0.9, 0.2, 0.9, 0.9, 0.9, 0.9])
    assert np.flatnonzero(boundaries(s, min_run=1)).tolist() == [3, 5]
    assert np.flatnonzero(boundaries(s, min_run=3)).tolist() == [5]
    # the first and the last run are min_run long too: a drop at the edge is not a boundary
    assert not boundaries(np.array([0.1, 0.9, 0.9, 0.9, 0.9]), min_run=2).any()


def test_a_memory_map_of_float16_vectors_works(tmp_path):
    x = segments([4, 4, 4], 3, noise=0.01, rng=np.random.default_rng(0)).astype(np.float16)
    np.save(tmp_path / "pooled.npy", x)
    mapped = np.load(tmp_path / "pooled.npy", mmap_mode="r")
    assert run_ids(mapped, np.arange(12)[::-1]).tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_empty_and_single_orders():
    x = np.ones((3, 2), np.float32)
    assert run_ids(x, []).tolist() == []
    assert run_ids(x, [2]).tolist() == [0]
    assert gap_similarity(x, [1]).shape == (0,)
    assert run_starts(np.array([], np.int64)).tolist() == []


@pytest.mark.parametrize("order, error, words", [
    ([0, 3], ValueError, "outside 0..2"),
    ([-1], ValueError, "outside 0..2"),
    ([0.5, 1.0], TypeError, "integer row indices"),
    ([[0, 1]], ValueError, "1-D"),
])
def test_bad_orders_say_what_to_pass(order, error, words):
    with pytest.raises(error, match=words):
        run_ids(np.ones((3, 2)), order)


def test_bad_options_and_embeddings_say_what_to_pass():
    with pytest.raises(ValueError, match="min_run must be an integer >= 1"):
        run_ids(np.ones((3, 2)), min_run=0)
    with pytest.raises(ValueError, match="width must be an integer >= 1"):
        gap_similarity(np.ones((3, 2)), width=0)
    with pytest.raises(TypeError, match="dtype int64"):
        run_ids(np.ones((3, 2), np.int64))
    with pytest.raises(ValueError, match="NaN or infinite"):
        run_ids(np.array([[1.0, 0.0], [np.nan, 1.0]]))


def test_project_runs_are_the_runs_of_its_order(unlabeled_project):
    project = unlabeled_project
    expected = run_ids(project.pooled(), project.order_rows())
    got = project.runs()
    assert got.tolist() == expected.tolist() and len(got) == len(project.order())
