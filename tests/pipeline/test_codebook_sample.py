"""The KMeans sample shared by every engine and route: a plan of images, then cells chosen per image."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mlfix.pipeline.codebook import sample_cells, sample_plan


def test_the_plan_is_sorted_distinct_seeded_and_enough_for_the_sample():
    rows, keep = sample_plan(10_000, 196, 262_144, seed=3)
    assert rows.dtype == np.int64 and (np.diff(rows) > 0).all() and 0 <= rows[0] and rows[-1] < 10_000
    assert len(rows) == 1672 and keep == 157  # 1.25 x the sample in images, a margin for failures
    assert len(rows) * keep >= 262_144
    again, _ = sample_plan(10_000, 196, 262_144, seed=3)
    other, _ = sample_plan(10_000, 196, 262_144, seed=4)
    assert np.array_equal(rows, again) and not np.array_equal(rows, other)


def test_a_small_set_is_sampled_whole():
    rows, keep = sample_plan(40, 16, 4096, seed=0)
    assert np.array_equal(rows, np.arange(40)) and keep == 16  # never more cells than an image has


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_the_sample_does_not_depend_on_how_the_rows_are_batched(data):
    n, per_image, channels = data.draw(st.integers(1, 30)), data.draw(st.integers(1, 12)), 3
    keep, seed = data.draw(st.integers(1, 14)), data.draw(st.integers(0, 2**63))
    rows = np.sort(np.random.default_rng(seed % 1000).choice(1000, n, replace=False))
    cells = np.random.default_rng(1).normal(size=(n, per_image, channels)).astype(np.float32)
    whole = sample_cells(rows, cells, keep, seed)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, n - 1)), max_size=5)))
    parts = [(r, c) for r, c in zip(np.split(rows, cuts), np.split(cells, cuts)) if len(r)]
    order = data.draw(st.permutations(range(len(parts))))  # batches may arrive in any order
    results = {int(parts[i][0][0]): sample_cells(parts[i][0], parts[i][1], keep, seed) for i in order}
    batched = np.concatenate([results[first] for first in sorted(results)])
    assert np.array_equal(whole, batched)
    assert whole.shape == (n * min(keep, per_image), channels)


def test_each_image_keeps_distinct_cells_of_its_own():
    cells = np.arange(5 * 16, dtype=np.float32).reshape(5, 4, 4, 1)  # (B, h, w, C): cell value = its id
    chosen = sample_cells(np.arange(5), cells, 6, seed=0).reshape(5, 6)
    for image, picked in enumerate(chosen):
        assert len(set(picked)) == 6 and all(image * 16 <= v < image * 16 + 16 for v in picked)
    assert not np.array_equal(chosen[0] % 16, chosen[1] % 16)  # each image draws its own cells


def test_the_choice_follows_seed_and_row_only():
    cells = np.random.default_rng(0).normal(size=(1, 50, 2))
    same = [sample_cells(np.array([7]), cells, 5, seed=1) for _ in range(2)]
    assert np.array_equal(*same)
    assert not np.array_equal(same[0], sample_cells(np.array([8]), cells, 5, seed=1))
    assert not np.array_equal(same[0], sample_cells(np.array([7]), cells, 5, seed=2))
