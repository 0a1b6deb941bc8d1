"""Approximate neighbours (IVF, mlfix.scoring.ann): recall against exact search, determinism, self
excluded, float16 memmaps read in chunks, small inputs served exactly, words counted exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlfix.scoring import ann, neighbours


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 40) -> np.ndarray:
    """Gaussian clusters in 8 latent dimensions, lifted to ``dim`` and jittered: (n, dim) float32."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, 8)) * 2.0
    z = centres[rng.integers(0, clusters, n)] + rng.normal(size=(n, 8))
    return (z @ rng.normal(size=(8, dim)) + 0.2 * rng.normal(size=(n, dim))).astype(np.float32)


@pytest.fixture(scope="module")
def x20k() -> np.ndarray:
    return clustered(20_000, 64)


@pytest.fixture(scope="module")
def near20k(x20k) -> neighbours.Neighbours:
    return neighbours.embedding_neighbours(x20k, 50, approximate=True, seed=0)


def exact_for(x: np.ndarray, rows: np.ndarray, k: int):
    read = neighbours.unit_reader(x)
    sim, found = ann.exact_top(read, len(x), read(rows), k + 1)
    return ann.drop_self(sim, found, rows, k)


def test_approximate_recall_at_50_is_at_least_095_against_exact(x20k, near20k):
    rows = np.sort(np.random.default_rng(1).choice(len(x20k), 500, replace=False))
    exact_sim, exact_rows = exact_for(x20k, rows, 50)
    hits = [len(set(a) & set(b)) for a, b in zip(near20k.index[rows], exact_rows)]
    assert np.mean(hits) / 50 >= 0.95
    assert neighbours.neighbour_recall(x20k, k=50, sample=500, seed=0) >= 0.95


def test_approximate_similarities_are_cosines_up_to_8bit_codes(x20k, near20k):
    unit = neighbours.unit_reader(x20k)(slice(0, len(x20k)))
    rows = np.arange(0, len(x20k), 97)
    true = np.einsum("qd,qkd->qk", unit[rows], unit[near20k.index[rows]])
    assert np.abs(true - near20k.similarity[rows]).max() < 2e-3
    assert (np.diff(near20k.similarity, axis=1) <= 1e-6).all()  # best first, as the exact path


def test_approximate_graph_excludes_self_and_is_complete(near20k):
    n = near20k.index.shape[0]
    assert near20k.index.shape == (n, 50) and near20k.index.dtype == np.int64
    assert near20k.similarity.dtype == np.float32
    assert (near20k.index >= 0).all() and (near20k.index < n).all()
    assert not (near20k.index == np.arange(n)[:, None]).any()


def test_same_seed_same_graph_and_the_seed_is_used():
    x = clustered(4_000, 32, seed=3)
    a = neighbours.embedding_neighbours(x, 10, approximate=True, seed=7)
    b = neighbours.embedding_neighbours(x, 10, approximate=True, seed=7)
    np.testing.assert_array_equal(a.index, b.index)
    np.testing.assert_array_equal(a.similarity, b.similarity)
    c = neighbours.embedding_neighbours(x, 10, approximate=True, seed=8)
    assert not np.array_equal(a.similarity, c.similarity)  # other training sample, other codes


def test_float16_memmap_is_read_in_chunks_with_the_same_result(tmp_path, monkeypatch):
    x = clustered(3_000, 24, seed=4).astype(np.float16)
    np.save(tmp_path / "pooled.npy", x)
    memmap = np.load(tmp_path / "pooled.npy", mmap_mode="r")
    whole = neighbours.embedding_neighbours(x, 8, approximate=True)
    monkeypatch.setattr(ann, "CHUNK_ROWS", 700)  # 5 chunks to add and to search
    read = []
    original = neighbours.unit_reader

    def spy(array):
        inner = original(array)
        def counted(rows):
            out = inner(rows)
            if isinstance(rows, slice):  # a chunk of the whole (not a sample of rows)
                read.append(len(out))
            return out

        return counted

    monkeypatch.setattr(neighbours, "unit_reader", spy)
    chunked = neighbours.embedding_neighbours(memmap, 8, approximate=True)
    np.testing.assert_array_equal(whole.index, chunked.index)
    np.testing.assert_array_equal(whole.similarity, chunked.similarity)
    assert max(read) <= 700 + 19 and sum(read) >= 3 * 3_000  # adding, tuning's exact scan, searching


def test_small_inputs_are_served_exactly_even_when_approximate_is_asked():
    x = clustered(300, 16, seed=5)
    assert ann.MIN_ROWS > 300
    forced = neighbours.embedding_neighbours(x, 5, approximate=True)
    exact = neighbours.embedding_neighbours(x, 5)
    np.testing.assert_array_equal(forced.index, exact.index)
    np.testing.assert_array_equal(forced.similarity, exact.similarity)


def test_threshold_chooses_the_path(monkeypatch):
    x = clustered(1_200, 8, seed=6)
    calls = []
    monkeypatch.setattr(ann, "build_ivf", lambda *a, **kw: calls.append(1) or pytest.fail("approximate"))
    neighbours.embedding_neighbours(x, 5)  # 1,200 < APPROXIMATE_MIN: exact, build_ivf never called
    monkeypatch.setattr(neighbours, "APPROXIMATE_MIN", 1_000)
    with pytest.raises(pytest.fail.Exception):
        neighbours.embedding_neighbours(x, 5)
    assert calls == [1]


@pytest.mark.parametrize("bad, k, message", [
    (np.zeros((1, 4)), 5, "at least 2 samples"),
    (np.zeros((2_000, 4)), 0, "k must be >= 1"),
    (np.zeros(2_000), 5, "2-D array"),
])
def test_bad_input_says_what_to_fix(bad, k, message):
    with pytest.raises(ValueError, match=message):
        neighbours.embedding_neighbours(bad, k, approximate=True)


def test_nan_in_a_memmap_chunk_is_refused(tmp_path):
    x = clustered(2_000, 8).astype(np.float16)
    x[1_500, 3] = np.nan
    np.save(tmp_path / "pooled.npy", x)
    with pytest.raises(ValueError, match="NaN"):
        neighbours.embedding_neighbours(np.load(tmp_path / "pooled.npy", mmap_mode="r"), 5, approximate=True)


def test_approximate_word_neighbours_count_shared_words_exactly():
    rng = np.random.default_rng(2)
    topics = rng.random((20, 128)) < 0.15  # images of one topic share most words
    bags = topics[rng.integers(0, 20, 3_000)] & (rng.random((3_000, 128)) < 0.8)
    packed = np.packbits(bags, axis=1, bitorder="little")
    near = neighbours.word_neighbours(packed, 20, n_words=128, approximate=True)
    shared = (bags[:, None, :] & bags[near.index]).sum(axis=2)
    np.testing.assert_array_equal(near.similarity, shared.astype(np.float32))
    assert not (near.index == np.arange(3_000)[:, None]).any()
    exact = neighbours.word_neighbours(packed, 20, n_words=128)
    kth = exact.similarity[:, -1]
    assert ann.recall_at(near.index, near.similarity, kth) >= 0.95  # tie-aware: counts tie a lot


def test_exact_word_neighbours_unchanged_by_chunking(monkeypatch):
    import faiss

    bags = np.random.default_rng(3).random((2_000, 64)) < 0.3
    whole = faiss.IndexFlatIP(64)  # the pre-chunking implementation: one index, one search
    whole.add(bags.astype(np.float32))
    sim, found = whole.search(bags.astype(np.float32), 11)
    before = ann.drop_self(sim, found, np.arange(2_000), 10)
    monkeypatch.setattr(ann, "CHUNK_ROWS", 300)
    after = neighbours.word_neighbours(bags, 10)
    np.testing.assert_array_equal(after.index, before[1])
    np.testing.assert_array_equal(after.similarity, before[0])


def test_search_index_answers_like_the_exact_one():
    x = clustered(3_000, 16, seed=9)
    unit = neighbours.unit_reader(x)(np.arange(0, 3_000, 300))
    exact = neighbours.search_index(x).search(unit, 5)[1]
    approx = neighbours.search_index(x, approximate=True).search(unit, 5)[1]
    assert np.mean([len(set(a) & set(b)) for a, b in zip(exact, approx)]) >= 4.5


@settings(max_examples=8, deadline=None)
@given(st.integers(1_000, 1_600), st.integers(2, 8), st.integers(1, 60), st.integers(1, 400),
       st.integers(0, 2**16))
def test_approximate_rows_are_valid_distinct_and_never_self(n, dim, k, distinct, seed):
    pool = np.random.default_rng(seed).normal(size=(distinct, dim))  # few distinct rows: many ties
    x = pool[np.random.default_rng(seed + 1).integers(0, distinct, n)]
    near = neighbours.embedding_neighbours(x, k, approximate=True, seed=seed)
    assert near.index.shape == (n, min(k, n - 1))
    assert ((near.index >= 0) & (near.index < n)).all()
    assert not (near.index == np.arange(n)[:, None]).any()
    ordered = np.sort(near.index, axis=1)
    assert (np.diff(ordered, axis=1) > 0).all()  # no neighbour twice


def test_two_level_kmeans_lists_are_seeded_and_keep_recall(monkeypatch):
    monkeypatch.setattr(ann, "TWO_LEVEL_MIN", 32)  # the route of >= 1,024 lists (~65k rows) on 5k rows
    x = clustered(5_000, 32, seed=11)
    sample = neighbours.unit_reader(x)(slice(0, 2_000))
    a, b = ann.coarse_centroids(sample, 40, seed=1), ann.coarse_centroids(sample, 40, seed=1)
    assert a.shape == (40, 32) and np.array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)  # spherical
    assert neighbours.neighbour_recall(x, k=20, sample=300, seed=1) >= 0.95


def test_rows_whose_probed_lists_are_short_are_searched_again(monkeypatch):
    monkeypatch.setattr(ann, "tune_nprobe", lambda *args: 1)  # one list of ~75 rows for k = 100
    x = clustered(1_200, 8, seed=12)
    near = neighbours.embedding_neighbours(x, 100, approximate=True)
    assert (near.index >= 0).all() and not (near.index == np.arange(1_200)[:, None]).any()
    assert (np.diff(np.sort(near.index, axis=1), axis=1) > 0).all()
