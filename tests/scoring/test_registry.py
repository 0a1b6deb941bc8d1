"""The registry of checks: every check keeps the contract, shared work is done once, names are checked."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pandas as pd
import pytest

from mlfix.scoring import combine, contract, neighbours, probe, registry

N, CLASSES = 60, ["cat", "dog", "fox"]


def _small(seed: int = 0) -> dict:
    """60 random samples in 3 loose clusters, a few unlabeled and a few trusted, with bags of words."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 3, N)
    x = (np.eye(3, 6)[codes] * 2 + rng.normal(0, 1, (N, 6))).astype(np.float32)
    labels = np.array(CLASSES, dtype=object)[codes]
    labels[[4, 17]] = None
    trusted = np.zeros(N, dtype=bool)
    trusted[[1, 2, 30]] = True
    bags = np.packbits(rng.random((N, 32)) < 0.3, axis=1, bitorder="little")
    return {"x": x, "labels": labels, "ids": [f"s{i}" for i in range(N)], "trusted": trusted, "bags": bags}


def _run(data: dict, **kwargs) -> pd.DataFrame:
    return registry.compute_scores(data["x"], data["labels"], data["ids"], bags=data["bags"],
                                   trusted=data["trusted"], k=5, folds=3, **kwargs)


@pytest.mark.parametrize("name", registry.LABEL_METHODS)
def test_every_label_check_follows_the_contract(name):
    """(The health checks' contract: tests/scoring/test_registry_health.py.)"""
    data = _small()
    inputs = registry.Inputs(data["x"], data["labels"], data["ids"], bags=data["bags"], trusted=data["trusted"],
                             k=5, folds=3)
    table = inputs.scores(name)
    assert list(table.columns[:3]) == contract.SCORE_COLUMNS
    assert isinstance(table.index, pd.RangeIndex) and table["sample_id"].tolist() == data["ids"]
    assert table["score"].dtype == np.float64
    unlabeled = pd.isna(data["labels"])
    assert table["score"][unlabeled].isna().all()
    assert table["score"][~unlabeled].notna().all() and (table["score"][~unlabeled] >= 0).all()
    assert (table["score"][data["trusted"]] == contract.TRUSTED_SCORE).all()
    assert set(table["suggested_label"].dropna()) <= set(CLASSES)
    assert registry.REGISTRY[name].description  # the review page can say what each score is
    wide = _run(data, methods=[name])
    np.testing.assert_array_equal(wide[f"score_{name}"], table["score"])


def test_the_wide_table_holds_each_checks_own_table():
    """compute_scores runs the same functions a caller would, with the same shared inputs."""
    data = _small(1)
    wide = _run(data)
    oof = probe.out_of_fold_probabilities(data["x"], data["labels"], folds=3, trusted=data["trusted"])
    args = (data["labels"], data["ids"])
    knn = neighbours.knn_vote(data["x"], *args, k=5, trusted=data["trusted"])
    loss = probe.probe_loss(None, *args, trusted=data["trusted"], probabilities=oof)
    expected = {
        "knn": knn, "words": neighbours.word_vote(data["bags"], *args, k=5, trusted=data["trusted"]),
        "cleanlab": probe.confident_learning(None, *args, trusted=data["trusted"], probabilities=oof),
        "loss": loss, "combined": combine.combined([loss, knn], combine.COMBINED_WEIGHTS),
    }
    for name, table in expected.items():
        pd.testing.assert_series_equal(wide[f"score_{name}"], table["score"], check_names=False)
        pd.testing.assert_series_equal(wide[f"suggested_{name}"], table["suggested_label"], check_names=False)
    np.testing.assert_array_equal(wide["flag_cleanlab"], expected["cleanlab"]["flag"])
    assert list(wide.columns[:4]) == ["sample_id", "label", "score", "suggested_label"]
    # the default queue is the combined score, but for copies whose label their group disagrees with
    odd = (wide["conflict_duplicates"] & (wide["label"] != wide["suggested_duplicates"])).to_numpy() \
        & ~data["trusted"] & ~pd.isna(data["labels"])
    np.testing.assert_array_equal(wide["score"][~odd], wide["score_combined"][~odd])
    assert odd.any() and (wide["score"][odd] > wide["score"][~odd].max()).all()


class _Counter:
    """Wraps a function and counts its calls."""

    def __init__(self, function):
        self.function, self.calls = function, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.function(*args, **kwargs)


@pytest.fixture
def counted(monkeypatch) -> dict[str, _Counter]:
    """The shared resources (probe fit, neighbour graph) and each check's run, counted."""
    counters = {"probe": _Counter(registry.out_of_fold_probabilities),
                "neighbours": _Counter(registry.embedding_neighbours)}
    monkeypatch.setattr(registry, "out_of_fold_probabilities", counters["probe"])
    monkeypatch.setattr(registry, "embedding_neighbours", counters["neighbours"])
    for name, check in list(registry.REGISTRY.items()):
        counters[name] = _Counter(check.run)
        monkeypatch.setitem(registry.REGISTRY, name, dataclasses.replace(check, run=counters[name]))
    return counters


def test_shared_resources_and_checks_run_once(counted):
    _run(_small())
    quality = {name: 0 for name in registry.METHODS[registry.METHODS.index("dark"):]}  # no meta: skipped
    assert {name: c.calls for name, c in counted.items()} == \
        {"probe": 1, "neighbours": 1, "knn": 1, "words": 1, "cleanlab": 1, "loss": 1, "combined": 1,
         "duplicates": 1, "leak": 0, "outlier": 1, "class_outlier": 1, **quality}


@pytest.mark.parametrize("methods, probe_fits, searches", [
    (["knn"], 0, 1),           # the vote alone never fits the probe
    (["loss", "cleanlab"], 1, 0),  # one fit for both, no neighbour search
    (["words"], 0, 0),         # the words vote has its own graph over the bags
    (["combined"], 1, 1),      # loss + knn, run for the combination only
])
def test_shared_resources_are_computed_only_when_a_check_needs_them(counted, methods, probe_fits, searches):
    _run(_small(), methods=methods)
    assert (counted["probe"].calls, counted["neighbours"].calls) == (probe_fits, searches)


def test_precomputed_resources_are_used_as_given(counted):
    data = _small()
    oof = probe.out_of_fold_probabilities(data["x"], data["labels"], folds=3, trusted=data["trusted"])
    near = neighbours.embedding_neighbours(data["x"], 5)
    calls = (counted["probe"].calls, counted["neighbours"].calls)
    given = _run(data, probabilities=oof, neighbours=near)
    assert (counted["probe"].calls, counted["neighbours"].calls) == calls
    pd.testing.assert_frame_equal(given, _run(data))


def test_an_unknown_method_lists_the_known_ones():
    data = _small()
    known = re.escape(f"choose from {list(registry.METHODS)}")
    assert registry.METHODS[:5] == ("knn", "words", "cleanlab", "loss", "combined")
    with pytest.raises(ValueError, match=r"unknown score methods \['vibes'\]; " + known):
        _run(data, methods=["knn", "vibes"])
    with pytest.raises(ValueError, match=r"unknown score method 'vibes'; " + known):
        registry.get_check("vibes")


@pytest.mark.parametrize("kwargs, message", [
    ({"methods": []}, "methods is empty; choose from"),
    ({"methods": ["words"], "bags": None}, r"the 'words' method needs bags of visual words \(bags=...\)"),
    ({"combine": ("words", "knn"), "bags": None}, "the combined score uses 'words', which needs bags"),
    ({"combine": ("combined",)}, r"combine must name methods from \['knn', 'words', 'cleanlab', 'loss'\]"),
    ({"combine": ()}, "combine must name methods from"),
    ({"bags": np.zeros((3, 4), np.uint8)}, "bags has 3 rows but there are 60 samples"),
])
def test_bad_requests_say_what_to_do(kwargs, message):
    data = _small()
    data.update({key: value for key, value in kwargs.items() if key == "bags"})
    with pytest.raises(ValueError, match=message):
        _run(data, **{key: value for key, value in kwargs.items() if key != "bags"})


def test_without_bags_the_default_leaves_the_words_check_out():
    data = dict(_small(), bags=None)
    assert "score_words" not in _run(data) and "score_knn" in _run(data, methods=["knn"])


def test_a_registered_check_joins_the_table_with_its_extra_columns(monkeypatch):
    monkeypatch.setattr(registry, "REGISTRY", dict(registry.REGISTRY))

    @registry.register("far", needs=("neighbours",))
    def _far(inputs: registry.Inputs) -> pd.DataFrame:
        """Distance to the nearest neighbour (an outlier score)."""
        score = 1.0 - inputs.neighbours.similarity[:, 0]
        table = contract.score_frame(inputs.sample_ids, score, np.full(inputs.n, None, dtype=object))
        return table.assign(reason="far from everything")

    table = _run(_small(), methods=["knn", "far"])
    assert list(table.columns[-3:]) == ["score_far", "suggested_far", "reason_far"]
    assert registry.REGISTRY["far"].description.startswith("Distance")


def test_register_refuses_unknown_resources_duplicates_and_broken_tables(monkeypatch):
    monkeypatch.setattr(registry, "REGISTRY", dict(registry.REGISTRY))
    with pytest.raises(ValueError, match=r"needs unknown resources \['gpu'\]; choose from"):
        registry.register("x", needs=("gpu",))
    with pytest.raises(ValueError, match="'knn' is already registered"):
        registry.register("knn")(lambda inputs: None)
    registry.register("broken")(lambda inputs: pd.DataFrame({"score": [1.0]}))
    with pytest.raises(TypeError, match="build it with mlfix.scoring.contract.score_frame"):
        _run(_small(), methods=["broken"])
