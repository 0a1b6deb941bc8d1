"""The duplicates and class-outlier checks read the embeddings as given (a float16 memory map stays
one, read in row chunks or one class at a time) and give exactly what the whole-array float32
implementation gave; a class over REFERENCE_MAX samples is compared with a fixed subset of its members;
class outliers search few classes per flagged sample from APPROXIMATE_MIN rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlfix.scoring import contract, neighbours, outliers
from mlfix.scoring.duplicates import duplicates_check
from mlfix.scoring.neighbours import cosine_index, embedding_neighbours
from mlfix.scoring.outliers import (CLASS_K, CLOSEST_CANDIDATES, MIN_CLASS, THRESHOLDS, TRUSTED_SCORE,
                                    _rank, _table, check_ids, check_trusted, class_outlier_check,
                                    encode_labels, robust_z)


# ---- the implementation before row chunks (whole-array float32 copy), kept as the reference ----------

def reference_class_outliers(embeddings, labels, sample_ids, trusted=None, k: int = CLASS_K) -> pd.DataFrame:
    x = contract.check_embeddings(embeddings, convert=True)
    n = x.shape[0]
    ids, mask = check_ids(sample_ids, n), check_trusted(trusted, n)
    coded = encode_labels(labels, n)
    distance = np.full(n, np.nan)
    for code in np.unique(coded.codes[coded.codes >= 0]):
        rows = np.flatnonzero(coded.codes == code)
        if len(rows) >= MIN_CLASS:
            distance[rows] = 1.0 - embedding_neighbours(x[rows], k).similarity.mean(axis=1)
    score, median = robust_z(distance, coded.codes)
    score = np.where(mask & ~np.isnan(score), TRUSTED_SCORE, score)
    flag = (score >= THRESHOLDS["class_outlier"]) & ~mask
    rank, of = _rank(distance, coded.codes)
    names = coded.decode(coded.codes)
    near = coded.decode(reference_closest(x, coded.codes, np.flatnonzero(flag), distance[flag], k))
    text = pd.Series([f"mean cosine distance {d:.3f} to the {k} closest of class {name} (rank {r:.0f} of "
                      f"{o:.0f}; median {m:.3f})" + (f"; closest class: {other}" if other != name else "")
                      for d, name, r, o, m, other in zip(distance[flag], names[flag], rank[flag], of[flag],
                                                         median[flag], near)], dtype=object)
    return _table(ids, score, flag, text, distance)


def reference_closest(x, codes, rows, own, k):
    classes = np.unique(codes[codes >= 0])
    if len(rows) == 0:
        return np.zeros(0, np.int64)
    distance = np.full((len(rows), classes.max() + 1), np.inf)
    _, queries = cosine_index(x[rows])
    for code in classes:
        index, _ = cosine_index(x[codes == code])
        similarity, _ = index.search(queries, min(k, index.ntotal))
        distance[:, code] = 1.0 - similarity.mean(axis=1)
    distance[np.arange(len(rows)), codes[rows]] = own
    return distance.argmin(axis=1)


# ---- data ---------------------------------------------------------------------------------------------

def clustered(n: int, classes: int, dim: int = 16, flipped: float = 0.05, seed: int = 0):
    """(n, dim) float64 rows around ``classes`` random centres, labels with ``flipped`` of them wrong."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, classes, n)
    labels = np.where(rng.random(n) < flipped, rng.integers(0, classes, n), truth)
    x = rng.normal(0, 1, (classes, dim))[truth] * 2 + rng.normal(0, 1, (n, dim))
    return x, np.char.add("c", labels.astype(str)).astype(object)


def as_memmap(x: np.ndarray, folder) -> np.ndarray:
    """``x`` as a float16 memory map on disk, read-only, as ``features/pooled.npy`` is."""
    path = folder / "pooled.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=x.shape)
    out[:] = x
    out.flush()
    return np.load(path, mmap_mode="r")


class Watched(np.ndarray):
    """An array that records the largest block of rows read from it and whether it was copied whole."""

    def __array_finalize__(self, obj):
        self.log = getattr(obj, "log", None)

    def __getitem__(self, item):
        part = np.ndarray.__getitem__(self, item)
        if self.log is not None and isinstance(part, np.ndarray) and part.ndim == 2:
            self.log["rows"] = max(self.log["rows"], part.shape[0])
        return part

    def astype(self, *args, **kwargs):
        if self.log is not None and self.ndim == 2:
            self.log["whole copies"] += 1
        return np.ndarray.astype(self, *args, **kwargs)


def watched(x: np.ndarray) -> Watched:
    view = np.asarray(x).view(Watched)
    view.log = {"rows": 0, "whole copies": 0}
    return view


# ---- class outliers -------------------------------------------------------------------------------------

def test_class_outliers_on_a_float16_memmap_equal_the_whole_array_implementation(tmp_path):
    x, labels = clustered(600, 6)
    labels[[5, 70]] = None
    labels[[80, 81]] = "tiny"  # too few to judge, but a class the flagged may be closest to
    trusted = np.zeros(len(x), bool)
    trusted[[3, 9]] = True
    pooled = as_memmap(x, tmp_path)
    table = class_outlier_check(pooled, labels, range(len(x)), trusted=trusted)
    assert table["flag"].sum() >= 10 and table["reason"].str.contains("closest class").sum() >= 10
    pd.testing.assert_frame_equal(table, reference_class_outliers(pooled, labels, range(len(x)), trusted))
    pd.testing.assert_frame_equal(class_outlier_check(x, labels, range(len(x)), trusted=trusted, k=3),
                                  reference_class_outliers(x, labels, range(len(x)), trusted, k=3))


def test_class_outliers_read_one_class_at_a_time_and_never_copy_the_whole_array(monkeypatch):
    x, labels = clustered(500, 5)
    monkeypatch.setattr(contract, "CHECK_CHUNK", 64)  # the finiteness check's blocks
    rows = watched(x)
    class_outlier_check(rows, labels, range(len(x)))
    largest = pd.Series(labels).value_counts().max()
    assert rows.log["whole copies"] == 0 and 0 < rows.log["rows"] <= largest < len(x)


def subset_distance(x, labels, k: int = CLASS_K) -> np.ndarray:  # sample ids: range(len(x))
    """Brute force in numpy: each labeled row's mean cosine distance to the k most similar members of
    its class's reference (outliers._reference), itself left out."""
    unit = np.asarray(x, np.float64) / np.linalg.norm(np.asarray(x, np.float64), axis=1, keepdims=True)
    codes = encode_labels(labels).codes
    distance = np.full(len(x), np.nan)
    for code in np.unique(codes[codes >= 0]):
        rows = np.flatnonzero(codes == code)
        if len(rows) < MIN_CLASS:
            continue
        reference = outliers._reference(rows, np.arange(len(x)))
        similarity = unit[rows] @ unit[reference].T
        similarity[rows[:, None] == reference[None, :]] = -np.inf  # not itself
        top = -np.sort(-similarity, axis=1)[:, :min(k, len(reference) - 1)]
        distance[rows] = 1.0 - top.mean(axis=1)
    return distance


def test_a_class_over_reference_max_is_compared_with_a_fixed_subset_of_its_members(monkeypatch):
    x, labels = clustered(1200, 4, flipped=0.03)
    monkeypatch.setattr(outliers, "REFERENCE_MAX", 120)  # every class (~300 rows) is subsampled
    table = class_outlier_check(x, labels, range(len(x)))
    assert table["distance"].notna().all()  # every member is still scored
    np.testing.assert_allclose(table["distance"], subset_distance(x, labels), atol=2e-6)
    pd.testing.assert_frame_equal(class_outlier_check(x, labels, range(len(x))), table)  # a rerun: the same
    exact = reference_class_outliers(x, labels, range(len(x)))
    flagged, exact_flagged = set(np.flatnonzero(table["flag"])), set(np.flatnonzero(exact["flag"]))
    assert len(exact_flagged) >= 10 and len(flagged & exact_flagged) >= 0.9 * len(exact_flagged | flagged)
    both = sorted(flagged & exact_flagged)
    assert table["reason"][both].str.contains("closest class").sum() >= 10
    assert table["reason"][both].str.extract("closest class: (c\\d+)")[0].tolist() == \
        exact["reason"][both].str.extract("closest class: (c\\d+)")[0].tolist()


def test_the_reference_is_a_sorted_subset_that_one_relabel_changes_by_one_member_at_most(monkeypatch):
    monkeypatch.setattr(outliers, "REFERENCE_MAX", 50)
    ids = np.array([f"img-{i:05d}" for i in range(3000)], dtype=object)
    rows = np.arange(0, 3000, 7)
    picked = outliers._reference(rows, ids)
    assert len(picked) == 50 and np.all(np.diff(picked) > 0) and np.isin(picked, rows).all()
    assert np.array_equal(picked, outliers._reference(rows, ids))
    assert np.array_equal(outliers._reference(rows[:50], ids), rows[:50])  # a class within the limit: all of it
    for changed in (np.union1d(rows, [1]), np.setdiff1d(rows, picked[:1]), np.setdiff1d(rows, rows[:1])):
        assert len(np.setdiff1d(picked, outliers._reference(changed, ids))) <= 1  # one sample in or out
    other_ids = np.array([f"photo-{i:05d}" for i in range(3000)], dtype=object)
    assert not np.array_equal(picked, outliers._reference(rows, other_ids))  # chosen by id, not by position


def test_a_new_class_or_a_relabel_elsewhere_keeps_a_large_class_s_scores(monkeypatch):
    x, labels = clustered(900, 3, flipped=0.0)
    monkeypatch.setattr(outliers, "REFERENCE_MAX", 100)
    before = class_outlier_check(x, labels, range(len(x)))
    changed = labels.copy()
    changed[np.flatnonzero(labels == "c2")[:5]] = "a-new-class"  # sorts first: every class's code moves
    after = class_outlier_check(x, changed, range(len(x)))
    same = np.flatnonzero(np.isin(labels, ["c0", "c1"]))
    np.testing.assert_array_equal(after["distance"].to_numpy()[same], before["distance"].to_numpy()[same])


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**16), st.integers(1, 4), st.integers(12, 120), st.integers(1, 6), st.integers(3, 30))
def test_class_distances_are_the_mean_over_the_k_closest_of_the_reference(seed, classes, n, k, most):
    rng = np.random.default_rng(seed)
    x = (rng.normal(0, 1, (n, 8)) + 0.05).astype(np.float16)  # no zero rows: a cosine needs a direction
    labels = rng.choice(np.array([f"c{i}" for i in range(classes)] + [None], dtype=object), n)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(outliers, "REFERENCE_MAX", most)
        distance = class_outlier_check(x, labels, range(n), k=k)["distance"].to_numpy()
        np.testing.assert_allclose(distance, subset_distance(x, labels, k), atol=1e-5)


def test_from_approximate_min_rows_the_closest_class_is_sought_among_the_nearest_classes(monkeypatch):
    x, labels = clustered(1500, 3 * CLOSEST_CANDIDATES, flipped=0.08)
    monkeypatch.setattr(neighbours, "APPROXIMATE_MIN", 1000)  # pruned, but each class (~50 rows) exact
    asked = []
    original = outliers._asked
    monkeypatch.setattr(outliers, "_asked", lambda *a: asked.append(original(*a)) or asked[-1])
    table = class_outlier_check(x, labels, range(len(x)))
    reference = reference_class_outliers(x, labels, range(len(x)))
    pairs = sorted((int(query), code) for code, queries in asked[0].items() for query in queries)
    flagged = np.flatnonzero(table["flag"])
    assert len(flagged) >= 50 and len(pairs) == len(flagged) * CLOSEST_CANDIDATES
    assert all(encode_labels(labels).codes[flagged[query]] != code for query, code in pairs)  # never its own
    pd.testing.assert_frame_equal(table, reference)  # well-separated classes: the same closest class


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**16), st.integers(2, 6), st.integers(12, 90), st.integers(1, 7))
def test_class_outliers_equal_the_reference_for_any_labels(seed, classes, n, k):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, 8)).astype(np.float16)  # float16 rows as the memory map holds them
    labels = rng.choice(np.array([f"c{i}" for i in range(classes)] + [None], dtype=object), n)
    trusted = rng.random(n) < 0.1
    pd.testing.assert_frame_equal(class_outlier_check(x, labels, range(n), trusted=trusted, k=k),
                                  reference_class_outliers(x, labels, range(n), trusted, k=k))


# ---- duplicates --------------------------------------------------------------------------------------

def copies(n: int = 300, seed: int = 0):
    """Rows of which every tenth has a near copy, labels (some copies mislabeled), digests, splits."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, 32))
    x[1::10] = x[::10] + rng.normal(0, 0.05, x[::10].shape)
    labels = rng.choice(np.array(["a", "b", "c"], dtype=object), n)
    content_hash = np.where(rng.random(n) < 0.05, rng.integers(1, 4, n), 0)
    return x, labels, content_hash, pd.Series(rng.choice(["train", "test"], n))


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 400), st.integers(1, 400), st.integers(0, 2**10))
def test_duplicates_do_not_depend_on_how_the_rows_are_checked(large_rows, chunk, seed):
    x, labels, content_hash, splits = copies(seed=seed)
    x = x.astype(np.float16)
    expected = duplicates_check(x.astype(np.float32), labels, range(len(x)), content_hash=content_hash,
                                splits=splits)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(contract, "LARGE_ROWS", large_rows)
        patch.setattr(contract, "CHECK_CHUNK", chunk)
        table = duplicates_check(x, labels, range(len(x)), content_hash=content_hash, splits=splits)
    assert table["group"].max() >= 20
    pd.testing.assert_frame_equal(table, expected)


def test_duplicates_given_the_graph_do_not_read_the_embeddings(tmp_path):
    x, labels, content_hash, splits = copies()
    graph = embedding_neighbours(x)
    rows = watched(as_memmap(x, tmp_path))
    table = duplicates_check(rows, labels, range(len(x)), content_hash=content_hash, splits=splits,
                             neighbours=graph)
    assert rows.log == {"rows": 0, "whole copies": 0}
    pd.testing.assert_frame_equal(table, duplicates_check(x, labels, range(len(x)), content_hash=content_hash,
                                                          splits=splits, neighbours=graph))
    assert table["group"].max() >= 20 and table["conflict"].any()
    with pytest.raises(ValueError, match=r"non-empty 2-D array .* got shape \(300,\)"):
        duplicates_check(x[:, 0], labels, range(len(x)), neighbours=graph)
