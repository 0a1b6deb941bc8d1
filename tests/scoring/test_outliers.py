"""Outliers: far from the nearest neighbours, far from the own class."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlfix.scoring.neighbours import Neighbours, embedding_neighbours
from mlfix.scoring.outliers import CLASS_K, OUTLIER_K, THRESHOLDS, class_outlier_check, outlier_check, robust_z


def three_blobs(seed: int = 0, per: int = 30) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.eye(3, 16) * 5
    truth = np.repeat(np.arange(3), per)
    return centres[truth] + rng.normal(0, 1, (len(truth), 16)), np.array(["a", "b", "c"])[truth].astype(object)


def test_a_far_planted_outlier_ranks_first_and_alone_is_flagged():
    x, _ = three_blobs()
    x[17] = np.random.default_rng(1).normal(0, 1, 16) * 0.3 - np.eye(1, 16, 5)[0] * 5  # nowhere near a blob
    ids = [f"img{i:02d}" for i in range(len(x))]
    table = outlier_check(embedding_neighbours(x), ids)
    assert list(table.columns) == ["sample_id", "score", "suggested_label", "flag", "reason", "distance"]
    assert table["score"].idxmax() == 17 and table["flag"].tolist() == [i == 17 for i in range(len(x))]
    assert table["reason"][17].startswith(f"mean cosine distance {table['distance'][17]:.3f} to its "
                                          f"{OUTLIER_K} nearest neighbours (rank 1 of 90; median ")
    assert table["suggested_label"].isna().all() and table["reason"].drop(17).isna().all()


def test_outlier_distance_is_the_mean_over_the_k_closest_valid_neighbours():
    near = Neighbours(np.array([[1, 2, -1], [0, 2, -1], [0, 1, -1]]),
                      np.array([[0.9, 0.5, 0.0], [0.9, 0.7, 0.0], [0.5, 0.7, 0.0]], np.float32))
    table = outlier_check(near, list("abc"), k=2)
    assert np.allclose(table["distance"], [0.3, 0.2, 0.4])
    assert np.allclose(outlier_check(near, list("abc"), k=1)["distance"], [0.1, 0.1, 0.5])


def test_a_sample_of_class_a_inside_class_b_ranks_first_in_its_class():
    x, labels = three_blobs()
    labels[40] = "a"  # a "b" image labeled a: far from the a's, close to the b's
    table = class_outlier_check(x, labels, range(len(x)))
    assert table["score"].idxmax() == 40 and table["flag"][40]
    assert table["flag"].sum() == 1
    assert table["reason"][40].startswith(f"mean cosine distance {table['distance'][40]:.3f} to the "
                                          f"{CLASS_K} closest of class a (rank 1 of 31; median ")
    assert table["reason"][40].endswith("; closest class: b")


def test_class_distance_is_the_mean_over_the_k_closest_others_of_the_class():
    angles = np.array([0.0, 0.1, 0.3, 0.6, 2.0, 2.1, 2.2])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    table = class_outlier_check(x, list("aaaabbb"), range(7), k=2)
    expected_first = 1 - (np.cos(0.1) + np.cos(0.3)) / 2  # its two closest a's: at 0.1 and 0.3
    assert abs(table["distance"][0] - expected_first) < 1e-6
    assert abs(table["distance"][4] - (1 - (np.cos(0.1) + np.cos(0.2)) / 2)) < 1e-6


def test_unlabeled_samples_and_tiny_classes_have_no_class_outlier_score():
    x, labels = three_blobs()
    labels[[3, 50]] = None
    labels[[60, 61]] = "lonely"  # two of a class: too few to judge
    table = class_outlier_check(x, labels, range(len(x)))
    assert table["score"][[3, 50, 60, 61]].isna().all() and not table["flag"][[3, 50, 60, 61]].any()
    assert table["score"].drop([3, 50, 60, 61]).notna().all()


def test_a_trusted_sample_is_no_class_outlier():
    x, labels = three_blobs()
    labels[40] = "a"
    trusted = np.zeros(len(x), bool)
    trusted[40] = True  # a reviewer says it is an "a" after all
    table = class_outlier_check(x, labels, range(len(x)), trusted=trusted)
    assert table["score"][40] == 0.0 and not table["flag"][40] and table["reason"][40] is None
    assert table["distance"][40] > 0.5


def test_robust_z_is_per_group_and_ignores_nan():
    values = np.array([1.0, 2.0, 3.0, 10.0, 20.0, 30.0, np.nan])
    z, median = robust_z(values, np.array([0, 0, 0, 1, 1, 1, 1]))
    assert median.tolist()[:6] == [2.0, 2.0, 2.0, 20.0, 20.0, 20.0]
    assert np.allclose(z[:6], np.array([-1, 0, 1, -1, 0, 1]) / 1.4826) and np.isnan(z[6])


def test_the_spread_floor_keeps_near_identical_distances_from_exploding():
    z, _ = robust_z(np.array([0.1, 0.1, 0.1, 0.1, 0.101]))
    assert z.max() < THRESHOLDS["outlier"]


def test_wrong_lengths_are_refused():
    x, labels = three_blobs()
    with pytest.raises(ValueError, match="sample_ids has"):
        outlier_check(embedding_neighbours(x), range(3))
    with pytest.raises(ValueError, match="labels has"):
        class_outlier_check(x, labels[:5], range(len(x)))


def test_the_tables_keep_the_input_order():
    x, labels = three_blobs()
    ids = pd.Series([f"s{i}" for i in range(len(x))])
    table = class_outlier_check(x, labels, ids)
    assert table["sample_id"].tolist() == ids.tolist() and isinstance(table.index, pd.RangeIndex)
