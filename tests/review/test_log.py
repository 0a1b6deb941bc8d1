"""The decision log's pure derivations: what undo means, the derived state, conflicts (no database).

The final-label rules are in tests/review/test_final_labels.py; the store that holds the log, and that its
reading methods apply these functions to what it stored, in tests/review/test_store.py.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlfix.review.log import DECISION_COLUMNS, STATUS_OF_KIND, derive_state, effective_mask, find_conflicts

SAMPLES = pd.DataFrame({"sample_id": ["a", "b", "c", "d"], "label": ["cat", "cat", "dog", "dog"]})
T0 = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.timezone.utc)


def make_log(rows: list[tuple]) -> pd.DataFrame:
    """rows: (reviewer, sample_id, kind, label_or_undone_id); ids 1, 2, ... in order."""
    records = []
    for i, (reviewer, sample_id, kind, arg) in enumerate(rows, start=1):
        records.append({"id": i, "client_id": f"c{i}", "sample_id": sample_id, "kind": kind,
                        "label": arg if kind == "relabel" else None, "reviewer": reviewer,
                        "created_at": T0 + dt.timedelta(seconds=i), "undoes": arg if kind == "undo" else None,
                        "note": None, "view": None})
    log = pd.DataFrame.from_records(records, columns=DECISION_COLUMNS)
    log["id"] = log["id"].astype("int64")
    log["undoes"] = log["undoes"].astype("Int64")
    log["created_at"] = pd.to_datetime(log["created_at"], utc=True)
    return log


def state_of(log: pd.DataFrame, sample_id: str) -> tuple:
    row = derive_state(log, SAMPLES).set_index("sample_id").loc[sample_id]
    return row["label"], row["status"], row["reviewer"]


def test_undo_of_an_undo_puts_the_decision_back_in_force():
    log = make_log([("al", "a", "relabel", "dog"), ("al", "a", "undo", 1), ("al", "a", "undo", 2)])
    assert effective_mask(log).tolist() == [True, False, True]
    assert state_of(log, "a") == ("dog", "relabeled", "al")
    assert state_of(log.iloc[:2], "a") == ("cat", "unreviewed", None)


def test_relabel_then_ok_keeps_the_new_label():
    log = make_log([("alice", "a", "relabel", "dog"), ("bob", "a", "ok", None)])
    assert state_of(log, "a") == ("dog", "ok", "bob")
    log = make_log([("alice", "a", "relabel", "dog"), ("bob", "a", "ok", None), ("carol", "a", "flag", None)])
    assert state_of(log, "a") == ("dog", "flagged", "carol")


def test_conflicts_compare_each_reviewers_latest_effective_verdict():
    log = make_log([("alice", "a", "relabel", "dog"),
                    ("bob", "a", "ok", None),  # bob confirms dog: agreement
                    ("alice", "b", "ok", None),  # alice says cat ...
                    ("bob", "b", "relabel", "dog"),  # ... bob says dog: conflict
                    ("alice", "c", "flag", None),
                    ("bob", "c", "relabel", "bird"),  # conflict, until bob undoes it
                    ("bob", "c", "undo", 6),
                    ("alice", "d", "relabel", "cat"),
                    ("alice", "d", "relabel", "bird")])  # one reviewer changing their mind
    found = find_conflicts(log, SAMPLES)
    assert found["sample_id"].tolist() == ["b"]
    assert found.iloc[0]["verdicts"] == {"alice": "cat", "bob": "dog"}
    assert found.iloc[0]["label"] == "dog" and found.iloc[0]["n_reviewers"] == 2


def test_samples_table_is_checked():
    with pytest.raises(ValueError, match="missing"):
        derive_state(make_log([]), SAMPLES[["sample_id"]])
    with pytest.raises(ValueError, match="duplicate sample_id"):
        derive_state(make_log([]), pd.concat([SAMPLES, SAMPLES]))


# -- property: the derived state equals a plain replay of the log ---------------------------------

def replay(log: pd.DataFrame, samples: pd.DataFrame) -> dict[str, tuple]:
    """Reference semantics, written as plainly as possible: sample_id -> (label, status, reviewer)."""
    rows = sorted(log.to_dict("records"), key=lambda r: r["id"])
    undone_by = defaultdict(list)
    for r in rows:
        if r["kind"] == "undo":
            undone_by[int(r["undoes"])].append(r["id"])
    effective = {}
    for r in reversed(rows):  # undos point backwards, so the undos of r are already decided
        effective[r["id"]] = not any(effective[u] for u in undone_by[r["id"]])
    state = {s: (label, "unreviewed", None) for s, label in zip(samples["sample_id"], samples["label"])}
    for r in rows:
        if effective[r["id"]] and r["kind"] != "undo" and r["sample_id"] in state:
            label = r["label"] if r["kind"] == "relabel" else state[r["sample_id"]][0]
            state[r["sample_id"]] = (label, STATUS_OF_KIND[r["kind"]], r["reviewer"])
    return state


def as_dict(state: pd.DataFrame) -> dict[str, tuple]:
    return {r.sample_id: (r.label, r.status, r.reviewer) for r in state.itertuples()}


PROPERTY_SAMPLES = pd.DataFrame({"sample_id": ["s0", "s1", "s2", "s3"], "label": ["x", "x", "y", "y"]})
ops = st.lists(st.one_of(
    st.tuples(st.just("decide"), st.sampled_from(["s0", "s1", "s2", "s3", "other"]),
              st.sampled_from(["relabel", "flag", "ok"]), st.sampled_from(["x", "y", "z"]),
              st.sampled_from(["ann", "ben"])),
    st.tuples(st.just("undo"), st.integers(0, 10_000), st.sampled_from(["ann", "ben"]))), max_size=40)


def synthetic_log(operations) -> pd.DataFrame:
    """A log as the store would hold it: ids with gaps, undos pointing back at the same sample."""
    rows, next_id = [], 1
    for op in operations:
        if op[0] == "decide":
            _, sample, kind, label, reviewer = op
            rows.append({"id": next_id, "sample_id": sample, "kind": kind,
                         "label": label if kind == "relabel" else None, "reviewer": reviewer, "undoes": None})
        elif rows:
            target = rows[op[1] % len(rows)]
            rows.append({"id": next_id, "sample_id": target["sample_id"], "kind": "undo", "label": None,
                         "reviewer": op[2], "undoes": target["id"]})
        next_id += 1 + len(rows) % 3
    log = pd.DataFrame(rows, columns=["id", "sample_id", "kind", "label", "reviewer", "undoes"])
    log["client_id"] = log["id"].astype(str)
    log["created_at"] = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(log["id"], unit="s")
    log["undoes"] = log["undoes"].astype("Int64")
    return log


@settings(max_examples=100, deadline=None)
@given(ops)
def test_derived_state_equals_plain_replay(operations):
    log = synthetic_log(operations)
    assert as_dict(derive_state(log, PROPERTY_SAMPLES)) == replay(log, PROPERTY_SAMPLES)
