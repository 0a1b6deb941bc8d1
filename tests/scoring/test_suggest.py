"""Suggested labels from a few labels (labelling from scratch), and the trust verdict of label-based scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlfix.scoring import probe
from mlfix.scoring.registry import compute_scores
from mlfix.scoring.suggest import (SUGGEST_COLUMNS, cached_suggestions, labelled_neighbours, labels_to_learn,
                                   suggest_labels)
from mlfix.scoring.trust import TRUST_FILE, label_trust, read_trust, verdict_of, write_trust
from tests.scoring.synthetic import blobs_data


def few_labels(data: dict, per_class: int, seed: int = 0) -> np.ndarray:
    """The true labels of ``per_class`` random samples per class; None elsewhere."""
    rng = np.random.default_rng(seed)
    truth = np.asarray(data["truth"], dtype=object)
    labels = np.full(len(truth), None, dtype=object)
    for name in np.unique(truth):
        rows = rng.choice(np.flatnonzero(truth == name), per_class, replace=False)
        labels[rows] = name
    return labels


@pytest.mark.parametrize("method", ["knn", "probe"])
def test_a_few_labels_per_cluster_get_the_rest_right(method):
    data = blobs_data(seed=3, flip=0.0)
    labels = few_labels(data, per_class=3)
    table = suggest_labels(data["x"], labels, data["ids"], method=method, k=5)
    assert list(table.columns) == SUGGEST_COLUMNS
    unlabeled = [i for i, v in zip(data["ids"], labels) if v is None]
    assert sorted(table["sample_id"]) == sorted(unlabeled)  # every unlabeled sample, no labelled one
    truth = dict(zip(data["ids"], data["truth"]))
    right = np.mean([truth[s] == v for s, v in zip(table["sample_id"], table["suggested_label"])])
    assert right >= 0.98
    assert set(table["source"]) == {method}
    assert ((table["confidence"] > 0) & (table["confidence"] <= 1)).all()
    assert table["confidence"].is_monotonic_decreasing  # most confident first


def test_no_labels_or_one_class_suggest_nothing_and_say_why():
    data = blobs_data(seed=3, flip=0.0)
    none = suggest_labels(data["x"], [None] * len(data["ids"]), data["ids"])
    assert none.empty and list(none.columns) == SUGGEST_COLUMNS
    assert none.attrs["reason"].startswith("no labels yet: suggestions need labels of at least two classes")
    one = suggest_labels(data["x"], ["cat"] + [None] * (len(data["ids"]) - 1), data["ids"])
    assert one.empty and one.attrs["reason"].startswith("one class only ('cat') yet")


def test_scope_all_suggests_for_labelled_samples_from_the_others():
    data = blobs_data(seed=3, flip=0.2)
    table = suggest_labels(data["x"], data["labels"], data["ids"], method="knn", scope="all", k=10)
    assert len(table) == len(data["ids"])
    by_id = table.set_index("sample_id")["suggested_label"]
    wrong = [i for i, e in zip(data["ids"], data["is_error"]) if e]
    truth = dict(zip(data["ids"], data["truth"]))
    assert np.mean([by_id[i] == truth[i] for i in wrong]) >= 0.95  # not the wrong label handed back


def test_reviewed_samples_are_never_suggested_for():
    data = blobs_data(seed=3, flip=0.0)
    trusted = np.zeros(len(data["ids"]), dtype=bool)
    trusted[:7] = True
    table = suggest_labels(data["x"], data["labels"], data["ids"], scope="all", trusted=trusted)
    assert not set(data["ids"][:7]) & set(table["sample_id"])
    assert len(table) == len(data["ids"]) - 7


def test_auto_takes_the_probe_once_every_class_has_enough_labels():
    data = blobs_data(seed=3, flip=0.0)
    assert suggest_labels(data["x"], few_labels(data, 3), data["ids"]).source.iloc[0] == "knn"
    assert suggest_labels(data["x"], few_labels(data, 20), data["ids"]).source.iloc[0] == "probe"


def test_bad_options_are_refused():
    data = blobs_data(seed=3, flip=0.0)
    with pytest.raises(ValueError, match="scope must be one of"):
        suggest_labels(data["x"], data["labels"], data["ids"], scope="some")
    with pytest.raises(ValueError, match="method must be one of"):
        suggest_labels(data["x"], data["labels"], data["ids"], method="vote")


@settings(max_examples=30, deadline=None)
@given(st.lists(st.booleans(), min_size=3, max_size=30), st.integers(1, 6), st.integers(0, 5))
def test_labelled_neighbours_are_labelled_never_self_nearest_first(labelled, k, seed):
    labelled = np.array(labelled)
    x = np.random.default_rng(seed).normal(size=(len(labelled), 4))
    near = labelled_neighbours(x, labelled, k)
    assert near.index.shape[0] == len(labelled)
    valid = near.index >= 0
    assert labelled[near.index[valid]].all()
    assert not (near.index == np.arange(len(labelled))[:, None]).any()
    assert (np.diff(np.where(valid, near.similarity, -np.inf), axis=1) <= 1e-6).all()
    others = labelled.sum() - labelled  # a labelled sample has one labelled neighbour fewer: not itself
    assert valid.sum(axis=1).tolist() == np.minimum(k, others).tolist()


def test_labels_to_learn_drops_given_labels_when_untrusted():
    table = pd.DataFrame({"corrected_label": ["a", "b", "c", None],
                          "status": ["unreviewed", "ok", "flagged", "unreviewed"]})
    labels, reviewed, scope = labels_to_learn(table, untrusted=False)
    assert labels.tolist() == ["a", "b", None, None] and scope == "unlabeled"
    assert reviewed.tolist() == [False, True, False, False]
    labels, _, scope = labels_to_learn(table, untrusted=True)
    assert labels.tolist() == [None, "b", None, None] and scope == "all"


def test_cached_suggestions_recompute_when_the_key_changes(tmp_path):
    data = blobs_data(seed=3, flip=0.0)
    labels = few_labels(data, 3)
    corrected = pd.DataFrame({"sample_id": data["ids"], "corrected_label": labels,
                              "status": np.where(pd.isna(labels), "unreviewed", "relabeled")})
    rows = np.arange(len(labels))
    first = cached_suggestions(tmp_path, data["x"], rows, corrected, {"decisions": 1}, k=5)
    assert first.attrs["scope"] == "unlabeled" and len(first) == len(labels) - 30
    stamp = (tmp_path / "suggestions.parquet").stat().st_mtime_ns
    again = cached_suggestions(tmp_path, data["x"], rows, corrected, {"decisions": 1}, k=5)
    assert (tmp_path / "suggestions.parquet").stat().st_mtime_ns == stamp  # read, not recomputed
    pd.testing.assert_frame_equal(first, again)
    assert again.attrs["learned_from"] == "given and reviewed labels"
    write_trust(tmp_path / TRUST_FILE, {"verdict": "untrusted", "accuracy": 0.1})
    changed = cached_suggestions(tmp_path, data["x"], rows, corrected, {"decisions": 1}, k=5)
    assert changed.attrs["scope"] == "all"
    assert changed.attrs["learned_from"].startswith("reviewed labels only")


# ---------------------------------------------------------------------------------------------
# trust


def test_trust_is_ok_on_clean_labels_and_untrusted_on_shuffled_ones(blobs):
    clean = label_trust(blobs["oof"], blobs["labels"])
    assert clean.verdict == "ok" and clean.accuracy >= 0.9 and clean.message == ""
    assert clean.chance == pytest.approx(0.1, abs=0.02) and clean.n == len(blobs["labels"])
    shuffled = np.random.default_rng(0).permutation(blobs["labels"])
    fit = probe.out_of_fold_probabilities(blobs["x"], shuffled, refit_without_suspects=False)
    found = label_trust(fit, shuffled)
    assert found.verdict == "untrusted"
    assert found.accuracy < found.chance + 0.15  # near chance
    assert found.message.startswith("Label-based scores are not to be trusted")


def test_trust_is_not_ok_when_80_percent_of_labels_are_random():
    data = blobs_data(seed=5, flip=0.8)
    fit = probe.out_of_fold_probabilities(data["x"], data["labels"])
    assert label_trust(fit, data["labels"]).verdict in ("untrusted", "weak")


def test_trust_leaves_out_reviewed_samples_and_needs_a_measure(blobs):
    trusted = np.ones(len(blobs["labels"]), dtype=bool)
    assert label_trust(blobs["oof"], blobs["labels"], trusted) is None
    trusted[:100] = False
    assert label_trust(blobs["oof"], blobs["labels"], trusted).n == 100


def test_verdict_thresholds():
    assert [verdict_of(s) for s in (-0.1, 0.0, 0.249, 0.25, 0.499, 0.5, 1.0)] == \
        ["untrusted", "untrusted", "untrusted", "weak", "weak", "ok", "ok"]


def test_compute_scores_carries_the_trust_when_the_probe_ran(blobs):
    table = compute_scores(blobs["x"], blobs["labels"], blobs["ids"], probabilities=blobs["oof"])
    assert table.attrs["trust"]["verdict"] == "ok"
    assert "trust" not in compute_scores(blobs["x"], blobs["labels"], blobs["ids"], methods=["knn"]).attrs


def test_trust_file_round_trip(tmp_path):
    assert read_trust(tmp_path / TRUST_FILE) is None
    write_trust(tmp_path / TRUST_FILE, {"verdict": "weak", "accuracy": 0.4})
    assert read_trust(tmp_path / TRUST_FILE) == {"verdict": "weak", "accuracy": 0.4}
    (tmp_path / TRUST_FILE).write_text("{not json")
    assert read_trust(tmp_path / TRUST_FILE) is None
    write_trust(tmp_path / TRUST_FILE, None)
    assert not (tmp_path / TRUST_FILE).exists()


# ---------------------------------------------------------------------------------------------
# through a project


def private_copy(project, tmp_path):
    import shutil

    from mlfix.project import Project

    skip = shutil.ignore_patterns("thumbs", "reviews.db*", "cells.npy", "progress", "scores*", "suggestions*")
    shutil.copytree(project.dir, tmp_path / "project", ignore=skip)
    return Project.open(tmp_path / "project")


def test_an_unlabeled_project_suggests_nothing_and_says_why(unlabeled_project, tmp_path):
    project = private_copy(unlabeled_project, tmp_path)
    table = project.suggest()
    assert table.empty and list(table.columns) == SUGGEST_COLUMNS
    assert table.attrs["reason"].startswith("no labels yet: suggestions need labels of at least two classes")


def test_a_project_suggests_from_reviewer_decisions(unlabeled_project, tmp_path):
    project = private_copy(unlabeled_project, tmp_path)
    ids = project.samples["sample_id"].tolist()
    named = {ids[0]: "red", ids[1]: "green", ids[2]: "red", ids[3]: "green"}
    for sample_id, label in named.items():
        project.reviews.decide([sample_id], "relabel", label, reviewer="ann", labels=["red", "green"])
    table = project.suggest(k=2)
    assert sorted(table["sample_id"]) == sorted(set(ids) - set(named))  # the rest, not the named
    assert set(table["suggested_label"]) <= {"red", "green"} and set(table["source"]) == {"knn"}
    assert table.attrs["scope"] == "unlabeled"


def test_scores_carry_the_trust_and_the_cli_warns_when_untrusted(demo_project, tmp_path, capsys):
    import argparse

    from mlfix.cli import scores as scores_cli

    project = private_copy(demo_project, tmp_path)
    table = project.scores()
    stored = read_trust(project.dir / TRUST_FILE)
    assert stored is not None and table.attrs["trust"] == stored
    assert stored["verdict"] in ("ok", "weak", "untrusted") and 0 <= stored["accuracy"] <= 1
    assert project.scores().attrs["trust"] == stored  # the cached table too
    untrusted = {**stored, "verdict": "untrusted", "message": "Label-based scores are not to be trusted: x"}
    write_trust(project.dir / TRUST_FILE, untrusted)
    assert scores_cli.run(argparse.Namespace(project=str(project.dir), output=None)) == 0
    assert "mlfix scores: warning: Label-based scores are not to be trusted: x" in capsys.readouterr().err
    write_trust(project.dir / TRUST_FILE, {**stored, "verdict": "ok", "message": ""})
    scores_cli.run(argparse.Namespace(project=str(project.dir), output=None))
    assert "warning" not in capsys.readouterr().err
