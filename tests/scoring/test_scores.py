"""Every score method finds planted errors and keeps the contract; the wide table; bad inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from mlfix.scoring import combine, neighbours, probe, registry
from mlfix.scoring import contract as score_contract


def _run(method: str, data: dict, labels=None, ids=None, trusted=None) -> pd.DataFrame:
    labels = data["labels"] if labels is None else labels
    ids = data["ids"] if ids is None else ids
    if method == "knn":
        return neighbours.knn_vote(data["x"], labels, ids, k=10, trusted=trusted)
    if method == "words":
        return neighbours.word_vote(data["bags"], labels, ids, k=10, trusted=trusted)
    if method == "cleanlab":
        return probe.confident_learning(data["x"], labels, ids, folds=4, trusted=trusted)
    if method == "loss":
        return probe.probe_loss(data["x"], labels, ids, folds=4, trusted=trusted)
    if method == "combined":
        return combine.combined([probe.probe_loss(data["x"], labels, ids, folds=4, trusted=trusted),
                                neighbours.knn_vote(data["x"], labels, ids, k=10, trusted=trusted)])
    raise AssertionError(method)


METHODS = ["knn", "words", "cleanlab", "loss", "combined"]


@pytest.mark.parametrize("method", METHODS)
def test_method_ranks_planted_errors_first(blobs, method):
    table = _run(method, blobs)
    assert roc_auc_score(blobs["is_error"], table["score"]) > 0.95
    top = table["score"].rank(ascending=False, method="first") <= blobs["is_error"].sum()
    assert (top & blobs["is_error"]).sum() >= 0.7 * blobs["is_error"].sum()
    # The suggestion for a planted error is mostly its true class.
    hits = table["suggested_label"].to_numpy()[blobs["is_error"]] == blobs["truth"][blobs["is_error"]]
    assert hits.mean() >= 0.7


@pytest.mark.parametrize("method", METHODS)
def test_contract_columns_dtypes_alignment_and_unlabeled(blobs, method):
    labels = blobs["labels"].copy()
    labels[[3, 50, 200]] = None
    labels[77] = np.nan
    table = _run(method, blobs, labels=labels)
    assert list(table.columns[:3]) == score_contract.SCORE_COLUMNS
    assert isinstance(table.index, pd.RangeIndex) and len(table) == len(labels)
    assert table["sample_id"].tolist() == blobs["ids"]
    assert table["score"].dtype == np.float64
    unlabeled = np.zeros(len(labels), dtype=bool)
    unlabeled[[3, 50, 77, 200]] = True
    assert table["score"][unlabeled].isna().all()
    assert table["score"][~unlabeled].notna().all()
    assert (table["score"][~unlabeled] >= 0).all()
    # Unlabeled samples still get a suggestion, and it is one of the known classes.
    assert set(table["suggested_label"][unlabeled]) <= set(blobs["truth"])


@pytest.mark.parametrize("method", METHODS)
def test_trusted_samples_leave_the_queue(blobs, method):
    trusted = blobs["is_error"].copy()
    trusted[:5] = True
    labels = np.where(blobs["is_error"], blobs["truth"], blobs["labels"])  # the reviewer fixed them
    table = _run(method, blobs, labels=labels, trusted=trusted)
    assert (table["score"][trusted] == score_contract.TRUSTED_SCORE).all()
    assert (table["score"][~trusted] >= score_contract.TRUSTED_SCORE).all()


def test_scores_are_deterministic_for_a_seed(blobs):
    a = registry.compute_scores(blobs["x"], blobs["labels"], blobs["ids"], bags=blobs["bags"], seed=3, k=10)
    b = registry.compute_scores(blobs["x"], blobs["labels"], blobs["ids"], bags=blobs["bags"], seed=3, k=10)
    pd.testing.assert_frame_equal(a, b)
    c = probe.out_of_fold_probabilities(blobs["x"], blobs["labels"], folds=5, seed=4)
    assert not np.array_equal(c.fold, blobs["oof"].fold)  # the seed really picks the folds


def test_compute_scores_columns(blobs):
    table = registry.compute_scores(blobs["x"], blobs["labels"], blobs["ids"], bags=blobs["bags"], k=10,
                                  probabilities=blobs["oof"])
    ran = [name for name in registry.METHODS if name not in table.attrs["skipped"]]
    assert ran == ["knn", "words", "cleanlab", "loss", "combined", "duplicates", "outlier", "class_outlier"]
    assert set(table.attrs["skipped"]) == set(registry.METHODS) - set(ran)  # no meta: no leak, no quality
    expected = ["sample_id", "label", "score", "suggested_label"]
    for method in ran:
        expected += [f"score_{method}", f"suggested_{method}"]
    assert list(table.columns[:len(expected) + 1]) == expected + ["flag_cleanlab"]
    assert {"flag_duplicates", "reason_duplicates", "group_duplicates", "flag_outlier"} <= set(table.columns)
    assert table["flag_cleanlab"].dtype == bool
    conflict = table["conflict_duplicates"].to_numpy()  # copies under two labels come first
    np.testing.assert_array_equal(table["score"][~conflict], table["score_combined"][~conflict])
    assert table["label"].tolist() == list(blobs["labels"])
    assert roc_auc_score(blobs["is_error"], table["score"]) > 0.95
    without_bags = registry.compute_scores(blobs["x"], blobs["labels"], blobs["ids"], k=10,
                                         probabilities=blobs["oof"], methods=["knn", "loss"])
    assert list(without_bags.columns) == ["sample_id", "label", "score", "suggested_label",
                                          "score_knn", "suggested_knn", "score_loss", "suggested_loss"]


def test_one_class_and_tiny_inputs():
    x = np.random.default_rng(0).normal(size=(4, 3))
    assert (probe.probe_loss(x, list("aaaa"), range(4))["score"] == 0).all()
    table = neighbours.knn_vote(x[:2], ["a", "b"], [0, 1], k=50)  # k is capped at N - 1
    assert table["score"].tolist() == [1.0, 1.0] and table["suggested_label"].tolist() == ["b", "a"]
    unlabeled = neighbours.knn_vote(x, [None] * 4, range(4), k=2)
    assert unlabeled["score"].isna().all() and unlabeled["suggested_label"].isna().all()


@pytest.mark.parametrize("call, message", [
    (lambda d: neighbours.knn_vote(d["x"], d["labels"][:-1], d["ids"]), "labels has 399"),
    (lambda d: neighbours.knn_vote(d["x"], d["labels"], d["ids"][:-1]), "sample_ids has 399"),
    (lambda d: neighbours.knn_vote(d["x"][0], d["labels"], d["ids"]), "2-D array"),
    (lambda d: neighbours.knn_vote(d["x"], d["labels"], d["ids"], k=0), "k must be >= 1"),
    (lambda d: neighbours.knn_vote(d["x"] * np.nan, d["labels"], d["ids"]), "NaN"),
    (lambda d: neighbours.knn_vote(d["x"], d["labels"], d["ids"], trusted=[True]), "trusted must be"),
    (lambda d: probe.out_of_fold_probabilities(d["x"], d["labels"], folds=1), "folds must be >= 2"),
    (lambda d: registry.compute_scores(d["x"], d["labels"], d["ids"], methods=["words"]), "needs bags"),
    (lambda d: registry.compute_scores(d["x"], d["labels"], d["ids"], methods=["vibes"]), "unknown score"),
    (lambda d: probe.probe_loss(None, d["labels"], d["ids"]), "give embeddings"),
    (lambda d: neighbours.word_vote(np.full((400, 4), 7, np.int64), d["labels"], d["ids"]), "packed uint8"),
])
def test_invalid_inputs_say_what_to_do(blobs, call, message):
    with pytest.raises(ValueError, match=message):
        call(blobs)


@pytest.mark.parametrize("labels, found", [([None] * 12, "no labels"), (["cat"] * 11 + [None], r"one class only \('cat'\)")])
def test_fewer_than_two_classes_is_a_message_not_a_crash(labels, found):
    """Label checks asked for: a clear error. By default: the checks that need no labels run, and the
    others are skipped with the reason."""
    x = np.random.default_rng(0).normal(size=(12, 4))
    with pytest.raises(ValueError, match=f"^{found}: label-error scores need labels of at least two classes"):
        registry.compute_scores(x, labels, range(12), k=3, folds=3, methods=["knn", "loss"])
    table = registry.compute_scores(x, labels, range(12), k=3, folds=3)
    assert [c for c in table.columns if c.startswith("score_")] == ["score_duplicates", "score_outlier"]
    assert table.attrs["skipped"]["knn"] == f"{found}: it needs labels of at least two classes".replace("\\", "")


def test_a_method_of_weight_zero_leaves_the_combined_score_as_the_others_make_it():
    """After fine-tuning the vote may weigh 0: its NaN (no labeled neighbour) must not blank a score."""
    import pandas as pd

    loss = pd.DataFrame({"sample_id": [1, 2, 3], "score": [0.1, 0.9, 0.5], "suggested_label": list("xyz")})
    vote = loss.assign(score=[0.2, np.nan, 0.8])
    alone = combine.combined([loss])["score"]
    np.testing.assert_allclose(combine.combined([loss, vote], (2.0, 0.0))["score"], alone)
    assert combine.combined([loss, vote], (2.0, 1.0))["score"].isna().tolist() == [False, True, False]
    with pytest.raises(ValueError, match="not all zero"):
        combine.combined([loss, vote], (0.0, 0.0))
