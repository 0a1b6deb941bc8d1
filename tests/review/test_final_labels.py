"""Final labels when reviewers disagree: latest, majority, admin_wins; ties (pure, no database).

The store's final_labels/final_state over a real database: tests/review/test_store.py.
"""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlfix.review import export
from mlfix.review.log import FLAG_VERDICT, derive_state, final_labels, final_state, reviewer_verdicts
from tests.review.test_log import make_log

SAMPLES = pd.DataFrame({"sample_id": ["a", "b", "c"], "label": ["cat", "cat", "dog"]})


def row(frame: pd.DataFrame, sample_id: str) -> pd.Series:
    return frame.set_index("sample_id").loc[sample_id]


DISPUTE = [("ann", "a", "relabel", "dog"), ("bob", "a", "relabel", "fox"), ("cy", "a", "relabel", "fox"),
           ("ann", "b", "relabel", "dog")]


def test_each_rule_on_a_two_to_one_dispute():
    log = make_log(DISPUTE)
    majority = final_labels(log, SAMPLES, "majority")
    assert row(majority, "a")[["label", "basis", "conflict", "tie", "n_reviewers"]].tolist() == \
        ["fox", "majority", True, False, 3]
    assert row(majority, "a")["votes"] == {"dog": 1, "fox": 2}
    admin = final_labels(log, SAMPLES, "admin_wins", admins=["ann"])
    assert row(admin, "a")[["label", "basis"]].tolist() == ["dog", "admin"]
    assert row(final_labels(make_log(DISPUTE[1:3] + DISPUTE[:1]), SAMPLES, "latest"), "a")["label"] == "dog"
    latest = final_labels(log, SAMPLES, "latest")
    assert row(latest, "a")[["label", "basis"]].tolist() == ["fox", "latest"]  # cy decided last
    for frame in (majority, admin, latest):
        assert row(frame, "b")[["label", "basis", "conflict", "changed"]].tolist() == ["dog", "agreed", False, True]
        assert row(frame, "c")[["label", "basis", "n_reviewers", "changed"]].tolist() == ["dog", "unreviewed", 0, False]
        assert frame["sample_id"].tolist() == ["a", "b", "c"]


def test_majority_tie_goes_to_the_most_recent_verdict():
    log = make_log([("ann", "a", "relabel", "dog"), ("bob", "a", "relabel", "fox")])
    result = row(final_labels(log, SAMPLES, "majority"), "a")
    assert result[["label", "basis", "tie"]].tolist() == ["fox", "tie", True]
    # ann confirms her label again later: her verdict is now the most recent of the tied ones
    log = make_log([("ann", "a", "relabel", "dog"), ("bob", "a", "relabel", "fox"), ("ann", "a", "relabel", "dog")])
    assert row(final_labels(log, SAMPLES, "majority"), "a")[["label", "tie"]].tolist() == ["dog", True]


def test_ok_votes_for_the_label_it_confirmed_and_flags_do_not_vote():
    log = make_log([("ann", "a", "relabel", "dog"), ("bob", "a", "ok", None), ("cy", "a", "relabel", "fox"),
                    ("dan", "a", "flag", None), ("eve", "a", "flag", None)])
    result = row(final_labels(log, SAMPLES, "majority"), "a")
    assert result["votes"] == {"dog": 2, "fox": 1} and result["label"] == "dog" and result["n_reviewers"] == 5
    flags = make_log([("ann", "b", "flag", None), ("bob", "b", "flag", None)])
    only = row(final_labels(flags, SAMPLES, "majority"), "b")
    assert only[["label", "basis", "conflict"]].tolist() == ["cat", "flagged", False]


def test_admin_flag_cannot_win_and_later_admin_wins():
    log = make_log([("ann", "a", "flag", None), ("bob", "a", "relabel", "fox")])
    result = row(final_labels(log, SAMPLES, "admin_wins", admins=["ann"]), "a")
    assert result[["label", "basis", "conflict"]].tolist() == ["fox", "majority", True]
    two_admins = make_log([("ann", "a", "relabel", "dog"), ("zed", "a", "relabel", "fox"), ("bob", "a", "relabel", "dog")])
    result = row(final_labels(two_admins, SAMPLES, "admin_wins", admins=["ann", "zed"]), "a")
    assert result[["label", "basis"]].tolist() == ["fox", "admin"]  # zed decided after ann
    no_admin = final_labels(two_admins, SAMPLES, "admin_wins", admins=["nobody"])
    assert no_admin.equals(final_labels(two_admins, SAMPLES, "majority"))


def test_undo_takes_a_verdict_back():
    log = make_log([("ann", "a", "relabel", "dog"), ("bob", "a", "relabel", "fox"), ("bob", "a", "undo", 2)])
    result = row(final_labels(log, SAMPLES, "majority"), "a")
    assert result[["label", "basis", "n_reviewers", "conflict"]].tolist() == ["dog", "agreed", 1, False]


def test_final_state_feeds_the_export():
    log = make_log(DISPUTE + [("ann", "c", "relabel", "cat"), ("bob", "c", "relabel", "dog"), ("cy", "c", "ok", None)])
    state = final_state(log, SAMPLES, "majority")
    assert state.set_index("sample_id")["label"].to_dict() == {"a": "fox", "b": "dog", "c": "dog"}
    assert state.set_index("sample_id")["status"].to_dict() == {"a": "relabeled", "b": "relabeled", "c": "ok"}
    table = export.export_table(SAMPLES, state)
    assert table.set_index("sample_id")["corrected_label"].to_dict() == {"a": "fox", "b": "dog", "c": "dog"}
    assert final_state(log, SAMPLES, "latest").equals(derive_state(log, SAMPLES))


def test_unknown_rule_and_bad_samples():
    with pytest.raises(ValueError, match="unknown final-label rule 'vote'"):
        final_labels(make_log([]), SAMPLES, "vote")
    with pytest.raises(ValueError, match="sample_id and label"):
        final_labels(make_log([]), SAMPLES[["sample_id"]], "majority")
    empty = final_labels(make_log([]), SAMPLES, "majority")
    assert empty["label"].tolist() == ["cat", "cat", "dog"] and set(empty["basis"]) == {"unreviewed"}


REVIEWERS, LABELS = ["ann", "bob", "cy"], ["cat", "dog", "fox"]
operation = st.tuples(st.sampled_from(REVIEWERS), st.sampled_from(["a", "b"]),
                      st.sampled_from(["relabel", "ok", "flag", "undo"]), st.sampled_from(LABELS), st.integers(0, 50))


def build(ops) -> pd.DataFrame:
    rows = []
    for reviewer, sample_id, kind, label, pick in ops:
        if kind == "undo":
            earlier = [i for i, r in enumerate(rows, start=1) if r[1] == sample_id]
            if not earlier:
                continue
            rows.append((reviewer, sample_id, "undo", earlier[pick % len(earlier)]))
        else:
            rows.append((reviewer, sample_id, kind, label if kind == "relabel" else None))
    return make_log(rows)


@settings(max_examples=20, deadline=None)
@given(st.lists(operation, max_size=14))
def test_rules_agree_with_the_votes(ops):
    log = build(ops)
    verdicts = reviewer_verdicts(log, SAMPLES)
    majority = final_labels(log, SAMPLES, "majority").set_index("sample_id")
    latest = derive_state(log, SAMPLES).set_index("sample_id")
    for sample_id, result in majority.iterrows():
        mine = verdicts[verdicts["sample_id"] == sample_id]
        named = mine[mine["verdict"] != FLAG_VERDICT]["verdict"].value_counts()
        assert result["n_reviewers"] == len(mine)
        assert result["conflict"] == (mine["verdict"].nunique() > 1)
        if named.empty:  # nobody named a label: what the log says
            assert result["label"] == latest.loc[sample_id, "label"]
        else:
            assert named.get(result["label"], 0) == named.max()
            assert result["tie"] == ((named == named.max()).sum() > 1)
        if not result["conflict"] and not named.empty:  # all agree on a label: that label
            assert result["label"] == named.index[0] and result["basis"] == "agreed"
    for admin in REVIEWERS[:2]:
        by_admin = final_labels(log, SAMPLES, "admin_wins", admins=[admin]).set_index("sample_id")
        for sample_id, result in by_admin.iterrows():
            mine = verdicts[(verdicts["sample_id"] == sample_id) & (verdicts["reviewer"] == admin)
                            & (verdicts["verdict"] != FLAG_VERDICT)]
            if len(mine):
                assert result["label"] == mine["verdict"].iloc[-1]
            else:
                assert result["label"] == majority.loc[sample_id, "label"]


@settings(max_examples=15, deadline=None)
@given(st.lists(operation, max_size=10))
def test_a_single_reviewer_gets_the_same_label_under_every_rule(ops):
    log = build([("ann", *op[1:]) for op in ops])
    latest = derive_state(log, SAMPLES)["label"].tolist()
    for rule in ("majority", "admin_wins", "latest"):
        assert final_labels(log, SAMPLES, rule, admins=["ann"])["label"].tolist() == latest


@pytest.mark.parametrize("missing", [pd.NA, None, float("nan")])
def test_images_that_came_without_a_label_in_a_string_column(missing):
    """A project made from unlabeled images: its labels are a string column with NA (the Export page's
    conflicts table crashed with "boolean value of NA is ambiguous")."""
    samples = pd.DataFrame({"sample_id": ["a", "b", "c"],
                            "label": pd.array(["cat", missing, missing], dtype="string")})
    log = make_log([("ann", "b", "relabel", "dog")])
    for rule in ("latest", "majority", "admin_wins"):
        final = final_labels(log, samples, rule, admins=["ann"]).set_index("sample_id")
        assert final["label"].tolist() == ["cat", "dog", None]
        assert final["changed"].tolist() == [False, True, False]
        assert final["original_label"].tolist() == ["cat", None, None]
    state = derive_state(log, samples)["label"]
    assert state[:2].tolist() == ["cat", "dog"] and state.isna().tolist() == [False, False, True]
