"""Suspected-label-error scores: each method finds planted errors; the shared contract; edge cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from mlfix.scoring import contract as score_contract
from mlfix.scoring import probe, scores

N_CLASSES, PER_CLASS, DIM, WORDS = 10, 40, 32, 256


def _blobs(seed: int = 0, flip: float = 0.05):
    """10 classes x 40 samples in distinct directions, 5% labels flipped to another class."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (N_CLASSES, DIM)) * 3
    truth = np.repeat(np.arange(N_CLASSES), PER_CLASS)
    x = centers[truth] + rng.normal(0, 1, (len(truth), DIM))
    given_codes = truth.copy()
    planted = rng.choice(len(truth), int(flip * len(truth)), replace=False)
    given_codes[planted] = (truth[planted] + rng.integers(1, N_CLASSES, len(planted))) % N_CLASSES
    names = np.array([f"class{c}" for c in range(N_CLASSES)], dtype=object)
    bags = _bags(truth, rng)
    is_error = np.zeros(len(truth), dtype=bool)
    is_error[planted] = True
    return {"x": x.astype(np.float32), "labels": names[given_codes], "truth": names[truth],
            "ids": [f"img{i:03d}" for i in range(len(truth))], "bags": bags, "is_error": is_error}


def _bags(truth: np.ndarray, rng) -> np.ndarray:
    """Packed bags of words: each class owns 24 words; an image holds 12 of them and 6 random words."""
    own = rng.permutation(WORDS)[: N_CLASSES * 24].reshape(N_CLASSES, 24)
    bags = np.zeros((len(truth), WORDS), dtype=bool)
    for i, c in enumerate(truth):
        bags[i, rng.choice(own[c], 12, replace=False)] = True
        bags[i, rng.choice(WORDS, 6, replace=False)] = True
    return np.packbits(bags, axis=1, bitorder="little")


@pytest.fixture(scope="module")
def blobs():
    data = _blobs()
    data["oof"] = probe.out_of_fold_probabilities(data["x"], data["labels"], folds=5, seed=0)
    return data


def _run(method: str, data: dict, labels=None, ids=None, trusted=None) -> pd.DataFrame:
    labels = data["labels"] if labels is None else labels
    ids = data["ids"] if ids is None else ids
    if method == "knn":
        return scores.knn_vote(data["x"], labels, ids, k=10, trusted=trusted)
    if method == "words":
        return scores.word_vote(data["bags"], labels, ids, k=10, trusted=trusted)
    if method == "cleanlab":
        return probe.confident_learning(data["x"], labels, ids, folds=4, trusted=trusted)
    if method == "loss":
        return probe.probe_loss(data["x"], labels, ids, folds=4, trusted=trusted)
    if method == "combined":
        return scores.combined([probe.probe_loss(data["x"], labels, ids, folds=4, trusted=trusted),
                                scores.knn_vote(data["x"], labels, ids, k=10, trusted=trusted)])
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


def test_trusted_samples_are_in_every_training_fold(blobs):
    trusted = np.zeros(len(blobs["ids"]), dtype=bool)
    trusted[::7] = True
    for refit in (False, True):
        oof = probe.out_of_fold_probabilities(blobs["x"], blobs["labels"], folds=5, trusted=trusted,
                                              refit_without_suspects=refit)
        assert (oof.fold[trusted] == -1).all()
        assert set(oof.fold[~trusted]) - {-1} == set(range(5))  # -1 there: suspects left out of the refit
        np.testing.assert_allclose(oof.probs.sum(axis=1), 1.0, atol=1e-9)


def _noisy_blobs(flip: float, seed: int = 1):
    """Blobs that overlap (noise 2.5x) with many flipped labels: the first fit learns from the noise."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (4, DIM)) * 1.2
    truth = np.repeat(np.arange(4), 100)
    x = (centers[truth] + rng.normal(0, 1, (len(truth), DIM))).astype(np.float32)
    given = truth.copy()
    planted = rng.choice(len(truth), int(flip * len(truth)), replace=False)
    given[planted] = (truth[planted] + rng.integers(1, 4, len(planted))) % 4
    return x, given.astype(str).astype(object), truth.astype(str).astype(object), given != truth


def test_the_refit_leaves_the_suspects_out_and_learns_cleaner_labels():
    x, labels, truth, is_error = _noisy_blobs(flip=0.3)
    first = probe.out_of_fold_probabilities(x, labels, refit_without_suspects=False)
    refit = probe.out_of_fold_probabilities(x, labels)
    flagged = probe.confident_learning(None, labels, range(len(labels)), probabilities=first)["flag"].to_numpy()
    assert flagged.any()
    np.testing.assert_array_equal(refit.fold == -1, flagged)  # exactly the flagged ones were left out
    assert (first.fold >= 0).all()
    assert (refit.predicted() == truth).mean() > (first.predicted() == truth).mean()
    assert roc_auc_score(is_error, -np.log(refit.probs[np.arange(400), [refit.classes.index(v) for v in labels]])) \
        > roc_auc_score(is_error, -np.log(first.probs[np.arange(400), [first.classes.index(v) for v in labels]]))


def test_the_refit_keeps_a_class_that_would_lose_half_its_samples():
    x, labels, _, _ = _noisy_blobs(flip=0.0)
    labels = labels.copy()
    rare = np.flatnonzero(labels == "0")[:4]  # 4 samples of another class called "rare"
    labels[rare] = "rare"
    oof = probe.out_of_fold_probabilities(x, labels)
    assert (oof.fold[rare] >= 0).all()  # all 4 look wrong, but leaving them out would unlearn the class
    assert "rare" in oof.classes


def test_scores_are_deterministic_for_a_seed(blobs):
    a = scores.compute_scores(blobs["x"], blobs["labels"], blobs["ids"], bags=blobs["bags"], seed=3, k=10)
    b = scores.compute_scores(blobs["x"], blobs["labels"], blobs["ids"], bags=blobs["bags"], seed=3, k=10)
    pd.testing.assert_frame_equal(a, b)
    c = probe.out_of_fold_probabilities(blobs["x"], blobs["labels"], folds=5, seed=4)
    assert not np.array_equal(c.fold, blobs["oof"].fold)  # the seed really picks the folds


def test_compute_scores_columns(blobs):
    table = scores.compute_scores(blobs["x"], blobs["labels"], blobs["ids"], bags=blobs["bags"], k=10,
                                  probabilities=blobs["oof"])
    expected = ["sample_id", "label", "score", "suggested_label"]
    for method in scores.METHODS:
        expected += [f"score_{method}", f"suggested_{method}"]
    assert list(table.columns) == expected + ["flag_cleanlab"]
    assert table["flag_cleanlab"].dtype == bool
    np.testing.assert_array_equal(table["score"], table["score_combined"])
    assert table["label"].tolist() == list(blobs["labels"])
    assert roc_auc_score(blobs["is_error"], table["score"]) > 0.95
    without_bags = scores.compute_scores(blobs["x"], blobs["labels"], blobs["ids"], k=10,
                                         probabilities=blobs["oof"], methods=["knn", "loss"])
    assert list(without_bags.columns) == ["sample_id", "label", "score", "suggested_label",
                                          "score_knn", "suggested_knn", "score_loss", "suggested_loss"]


def test_precomputed_probabilities_are_the_same_probe(blobs):
    direct = probe.probe_loss(blobs["x"], blobs["labels"], blobs["ids"], folds=5, seed=0)
    reused = probe.probe_loss(None, blobs["labels"], blobs["ids"], probabilities=blobs["oof"])
    pd.testing.assert_frame_equal(direct, reused)


def test_self_confidence_ranks_like_the_loss(blobs):
    cl = probe.confident_learning(None, blobs["labels"], blobs["ids"], probabilities=blobs["oof"])
    loss = probe.probe_loss(None, blobs["labels"], blobs["ids"], probabilities=blobs["oof"])
    assert cl["score"].rank().corr(loss["score"].rank()) > 0.999
    assert cl["flag"].sum() >= 0.5 * blobs["is_error"].sum()


def test_single_sample_class_does_not_break_cross_validation(blobs):
    x = np.vstack([blobs["x"], blobs["x"][:1] + 5.0])
    labels = np.append(blobs["labels"], "lonely")
    ids = blobs["ids"] + ["lonely0"]
    oof = probe.out_of_fold_probabilities(x, labels, folds=5)
    assert oof.classes[-1] == "lonely" and oof.probs.shape == (len(ids), N_CLASSES + 1)
    # Held out, the lonely sample was unseen by its fold model: probability 0 for its own class.
    assert oof.probs[-1, -1] == 0.0
    table = scores.compute_scores(x, labels, ids, k=10)
    assert np.isfinite(table["score"]).all()


def test_every_class_smaller_than_the_folds_uses_plain_kfold():
    x = np.random.default_rng(0).normal(size=(6, 4))
    oof = probe.out_of_fold_probabilities(x, list("aabbcc"), folds=5)
    assert oof.probs.shape == (6, 3) and set(oof.fold) == set(range(5))
    np.testing.assert_allclose(oof.probs.sum(axis=1), 1.0)


def test_one_class_and_tiny_inputs():
    x = np.random.default_rng(0).normal(size=(4, 3))
    assert (probe.probe_loss(x, list("aaaa"), range(4))["score"] == 0).all()
    table = scores.knn_vote(x[:2], ["a", "b"], [0, 1], k=50)  # k is capped at N - 1
    assert table["score"].tolist() == [1.0, 1.0] and table["suggested_label"].tolist() == ["b", "a"]
    unlabeled = scores.knn_vote(x, [None] * 4, range(4), k=2)
    assert unlabeled["score"].isna().all() and unlabeled["suggested_label"].isna().all()


def test_sklearn_probe_agrees_with_lbfgs_probe(blobs):
    sk = probe.out_of_fold_probabilities(blobs["x"], blobs["labels"], folds=5, probe="sklearn")
    assert (sk.probs.argmax(1) == blobs["oof"].probs.argmax(1)).mean() > 0.95
    np.testing.assert_array_equal(sk.fold, blobs["oof"].fold)


def test_word_vote_accepts_bool_bags_and_counts_shared_words():
    bags = np.zeros((5, 12), dtype=bool)
    bags[0, :6] = bags[1, :5] = bags[2, :4] = True  # 0 shares 5 words with 1, 4 with 2
    bags[3, 6:] = bags[4, 7:] = True
    near = scores.word_neighbours(bags, k=2, n_words=12)
    assert near.index[0].tolist() == [1, 2] and near.similarity[0].tolist() == [5.0, 4.0]
    packed = np.packbits(bags, axis=1, bitorder="little")  # as mlfix.pipeline.codebook.pack_bags; 2 bytes
    table_bool = scores.word_vote(bags, list("aabbb"), range(5), k=2)
    table_packed = scores.word_vote(packed, list("aabbb"), range(5), k=2, n_words=12)
    pd.testing.assert_frame_equal(table_bool, table_packed)
    assert table_bool["score"].idxmax() == 2  # its neighbours 0 and 1 say "a"


def test_duplicate_embeddings_still_exclude_one_self_match():
    x = np.ones((4, 3), dtype=np.float32)  # all identical: faiss may return self anywhere
    near = scores.embedding_neighbours(x, k=3)
    assert all(sorted(row) == sorted(set(range(4)) - {i}) for i, row in enumerate(near.index.tolist()))


def test_confusion_counts_and_cell_samples():
    labels = ["cat", "cat", "dog", "dog", None, "bird"]
    predicted = ["cat", "dog", "dog", "cat", "dog", "dog"]
    table = scores.confusion(labels, predicted)
    assert list(table.columns) == ["given", "predicted", "count"]
    assert len(table) == 9 and table["count"].sum() == 5  # unlabeled left out, every cell listed
    matrix = table.pivot(index="given", columns="predicted", values="count")
    assert matrix.loc["cat", "dog"] == 1 and matrix.loc["bird", "dog"] == 1 and matrix.loc["dog", "dog"] == 1
    ids = list("abcdef")
    assert scores.confusion_samples(labels, predicted, ids, "dog", "cat") == ["d"]
    assert scores.confusion_samples(labels, predicted, ids, "cat", "cat") == ["a"]
    assert scores.confusion_samples(labels, predicted, ids, "bird", "cat") == []


def test_confusion_of_probe_predictions(blobs):
    table = scores.confusion(blobs["labels"], blobs["oof"].predicted())
    assert table["count"].sum() == len(blobs["ids"])
    diagonal = table[table["given"] == table["predicted"]]["count"].sum()
    assert diagonal >= 0.9 * len(blobs["ids"])


@pytest.mark.parametrize("call, message", [
    (lambda d: scores.knn_vote(d["x"], d["labels"][:-1], d["ids"]), "labels has 399"),
    (lambda d: scores.knn_vote(d["x"], d["labels"], d["ids"][:-1]), "sample_ids has 399"),
    (lambda d: scores.knn_vote(d["x"][0], d["labels"], d["ids"]), "2-D array"),
    (lambda d: scores.knn_vote(d["x"], d["labels"], d["ids"], k=0), "k must be >= 1"),
    (lambda d: scores.knn_vote(d["x"] * np.nan, d["labels"], d["ids"]), "NaN"),
    (lambda d: scores.knn_vote(d["x"], d["labels"], d["ids"], trusted=[True]), "trusted must be"),
    (lambda d: probe.out_of_fold_probabilities(d["x"], d["labels"], folds=1), "folds must be >= 2"),
    (lambda d: scores.compute_scores(d["x"], d["labels"], d["ids"], methods=["words"]), "needs bags"),
    (lambda d: scores.compute_scores(d["x"], d["labels"], d["ids"], methods=["vibes"]), "unknown score"),
    (lambda d: probe.probe_loss(None, d["labels"], d["ids"]), "give embeddings"),
    (lambda d: scores.word_vote(np.full((400, 4), 7, np.int64), d["labels"], d["ids"]), "packed uint8"),
])
def test_invalid_inputs_say_what_to_do(blobs, call, message):
    with pytest.raises(ValueError, match=message):
        call(blobs)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", None]), min_size=3, max_size=30), st.integers(1, 6),
       st.integers(0, 2**16))
def test_vote_shares_are_distributions_and_scores_in_unit_interval(labels, k, seed):
    x = np.random.default_rng(seed).normal(size=(len(labels), 4))
    near = scores.embedding_neighbours(x, k)
    coded = score_contract.encode_labels(labels)
    shares = scores.vote_shares(near, coded)
    total = shares.sum(axis=1)
    assert np.all(np.isclose(total, 1.0) | (total == 0))
    table = scores.knn_vote(x, labels, range(len(labels)), k=k)
    score = table["score"].dropna()
    assert ((score >= 0) & (score <= 1)).all()
    assert table["score"].isna().sum() >= sum(v is None for v in labels)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", None]), st.sampled_from(["a", "b", "c"])),
                min_size=1, max_size=20))
def test_confusion_counts_every_labeled_sample_once(pairs):
    labels, predicted = zip(*pairs)
    table = scores.confusion(labels, predicted)
    assert table["count"].sum() == sum(v is not None for v in labels)
    assert not table.duplicated(["given", "predicted"]).any()


def test_packed_bags_unpack_like_the_codebook():
    from mlfix.pipeline.codebook import pack_bags, unpack_bags

    words = np.random.default_rng(0).integers(0, 64, size=(20, 3, 3))
    packed = pack_bags(words, 64)
    np.testing.assert_array_equal(scores.unpack(packed), unpack_bags(packed, 64))
