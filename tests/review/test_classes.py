"""The class list: adding, renaming and merging classes through the store (SQLite and PostgreSQL),
what renames and merges do to decisions and given labels, and the list's invariants (hypothesis)."""

from __future__ import annotations

import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from mlfix.errors import ClassListError, MlfixError
from mlfix.review.classes import (ProjectClasses, apply_event, check_name, class_list, effective_inputs,
                                  effective_state, export_record, fold)
from mlfix.review.store import ReviewStore
from tests.pg import postgres_server  # noqa: F401  (session fixture: a throwaway PostgreSQL server)
from tests.review.test_store import url  # noqa: F401  (fixture: a new store URL on SQLite and on PostgreSQL)

SAMPLES = pd.DataFrame({"sample_id": ["a", "b", "c", "d", "e"], "label": ["cat", "cat", None, None, "dog"]})


@pytest.fixture
def store(url):  # noqa: F811
    with ReviewStore(url, labels=["cat", "dog"]) as s:
        yield s


def corrected(store) -> dict:
    labels = store.current_state(SAMPLES)["label"]
    return dict(zip(SAMPLES["sample_id"], labels.astype(object).where(labels.notna(), None)))


# -- the rules of one event ----------------------------------------------------------------------

@pytest.mark.parametrize("kind, name, target, message", [
    ("add", "cat", None, "'cat' is already a class"),
    ("add", "  ", None, "must be a non-empty text"),
    ("add", "a\nb", None, "cannot hold control characters"),
    ("add", "x" * 201, None, "at most 200 characters"),
    ("add", "cow", "cat", "adding a class takes a name only"),
    ("rename", "cat", "dog", "'dog' is already a class: merge 'cat' into 'dog' instead"),
    ("rename", "cow", "bull", "'cow' is not a class; the classes are ['cat', 'dog']"),
    ("rename", "cat", "cat", "'cat' would rename into itself"),
    ("merge", "cat", "cow", "cannot merge into 'cow': it is not a class; rename 'cat' to it instead"),
    ("merge", "cow", "cat", "'cow' is not a class"),
    ("split", "cat", None, "unknown class event 'split'"),
])
def test_an_event_that_does_not_apply_says_what_to_do(kind, name, target, message):
    with pytest.raises(ClassListError, match=message.replace("[", r"\[").replace("]", r"\]")) as info:
        apply_event(["cat", "dog"], kind, name, target)
    assert isinstance(info.value, MlfixError) and isinstance(info.value, ValueError)


def test_the_list_is_the_given_labels_sorted_then_added_with_renames_in_place():
    events = [{"kind": "add", "name": "ant"}, {"kind": "rename", "name": "cat", "target": "kitty"},
              {"kind": "add", "name": "bee"}, {"kind": "merge", "name": "ant", "target": "bee"}]
    assert class_list(["dog", "cat", None], events) == ["kitty", "dog", "bee"]
    assert check_name("  zebra ") == "zebra"


def test_the_fold_skips_events_that_no_longer_apply_and_a_rename_onto_a_class_is_a_merge():
    classes, applied = fold(["cat", "dog"], [{"kind": "add", "name": "dog"}, {"kind": "merge", "name": "x", "target": "dog"},
                                             {"kind": "rename", "name": "cat", "target": "dog", "after_decision": 5}])
    assert classes == ["dog"]
    assert applied == [{"kind": "merge", "name": "cat", "target": "dog", "after_decision": 5}]


# -- through the store ---------------------------------------------------------------------------

def test_adding_renaming_and_merging_through_the_store_records_who_and_when(store):
    classes = ProjectClasses(store, ["cat", "dog"])
    assert classes.names == ["cat", "dog"] and classes.events.empty
    assert classes.add("ant", reviewer="ann") == ["cat", "dog", "ant"]
    assert classes.rename("ant", "bee", reviewer="bob") == ["cat", "dog", "bee"]
    assert classes.merge("dog", "cat", reviewer="ann") == ["cat", "bee"]
    events = classes.events
    assert events[["kind", "name", "target", "reviewer"]].to_dict("records") == [
        {"kind": "add", "name": "ant", "target": None, "reviewer": "ann"},
        {"kind": "rename", "name": "ant", "target": "bee", "reviewer": "bob"},
        {"kind": "merge", "name": "dog", "target": "cat", "reviewer": "ann"}]
    assert str(events["created_at"].dt.tz) == "UTC" and events["created_at"].is_monotonic_increasing
    with pytest.raises(ClassListError, match="'bee' is already a class"):
        classes.add("bee", reviewer="ann")
    assert len(classes.events) == 3  # a refused change stores nothing


def test_a_retried_class_change_is_stored_once_and_a_reused_client_id_is_refused(store):
    classes = ProjectClasses(store, ["cat", "dog"])
    classes.add("ant", reviewer="ann", client_id="c1")
    assert classes.add("ant", reviewer="ann", client_id="c1") == ["cat", "dog", "ant"]
    with pytest.raises(ClassListError, match="already used for another class change"):
        classes.add("bee", reviewer="ann", client_id="c1")
    assert len(classes.events) == 1


def test_relabels_follow_the_class_list_added_classes_in_renamed_names_out(store):
    classes = ProjectClasses(store, ["cat", "dog"])
    with pytest.raises(ValueError, match="label 'ant' is not one of"):
        store.decide("c", "relabel", "ant", reviewer="ann")
    classes.add("ant", reviewer="ann")
    store.decide("c", "relabel", "ant", reviewer="ann")
    classes.rename("ant", "bee", reviewer="ann")
    with pytest.raises(ValueError, match="label 'ant' is not one of"):
        store.decide("d", "relabel", "ant", reviewer="ann")
    store.decide("d", "relabel", "bee", reviewer="ann")
    assert corrected(store) == {"a": "cat", "b": "cat", "c": "bee", "d": "bee", "e": "dog"}


def test_a_rename_relabels_the_effective_view_and_rewrites_no_history(store):
    classes = ProjectClasses(store, ["cat", "dog"])
    store.decide(["c", "d"], "relabel", "cat", reviewer="ann")
    classes.rename("cat", "feline", reviewer="ann")
    assert corrected(store) == {"a": "feline", "b": "feline", "c": "feline", "d": "feline", "e": "dog"}
    assert store.decisions()["label"].tolist() == ["cat", "cat"]  # the log as written
    table = store.corrected_labels(SAMPLES.assign(path=SAMPLES["sample_id"]))
    assert table["original_label"].fillna("-").tolist() == ["cat", "cat", "-", "-", "dog"]
    assert table["changed"].tolist() == [True, True, True, True, False]


def test_a_merge_keeps_every_decision_and_a_name_added_again_is_a_new_class(store):
    classes = ProjectClasses(store, ["cat", "dog"])
    store.decide("c", "relabel", "dog", reviewer="ann")
    classes.merge("dog", "cat", reviewer="ann")
    assert corrected(store) == {"a": "cat", "b": "cat", "c": "cat", "d": None, "e": "cat"}
    classes.add("dog", reviewer="ann")  # a new class "dog": only decisions from now on mean it
    store.decide("d", "relabel", "dog", reviewer="ann")
    assert corrected(store) == {"a": "cat", "b": "cat", "c": "cat", "d": "dog", "e": "cat"}
    assert classes.names == ["cat", "dog"]


def test_conflicts_and_final_labels_read_labels_through_the_class_events(store):
    classes = ProjectClasses(store, ["cat", "dog"])
    store.decide("c", "relabel", "cat", reviewer="ann")
    store.decide("c", "relabel", "dog", reviewer="bob")
    classes.merge("dog", "cat", reviewer="ann")
    assert store.conflicts(SAMPLES).empty  # both now say "cat"
    assert store.final_labels(SAMPLES, "majority").set_index("sample_id").loc["c", "label"] == "cat"
    assert store.final_state(SAMPLES, "majority").set_index("sample_id").loc["c", "label"] == "cat"


def test_the_database_refuses_update_and_delete_of_class_events(store):
    ProjectClasses(store, ["cat"]).add("ant", reviewer="ann")
    for statement in ("UPDATE class_events SET name = 'cow'", "DELETE FROM class_events"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            with store.engine.begin() as conn:
                conn.exec_driver_sql(statement)
    assert ProjectClasses(store, ["cat"]).names == ["cat", "ant"]


def test_the_export_record_names_the_classes_and_every_event(store):
    classes = ProjectClasses(store, ["cat"])
    classes.add("ant", reviewer="ann")
    record = export_record(classes.events, classes.names)
    assert record["classes"] == ["cat", "ant"]
    [event] = record["class_events"]
    assert {k: event[k] for k in ("kind", "name", "target", "reviewer")} == \
        {"kind": "add", "name": "ant", "target": None, "reviewer": "ann"}
    assert event["created_at"].endswith("+00:00")


# -- invariants ----------------------------------------------------------------------------------

NAMES = st.sampled_from(["a", "b", "c", "d", "e"])
STEPS = st.lists(st.one_of(
    st.tuples(st.just("add"), NAMES, st.none()),
    st.tuples(st.sampled_from(["rename", "merge"]), NAMES, NAMES),
    st.tuples(st.just("relabel"), st.integers(0, 5), st.integers(0, 10))), max_size=30)


def replay(base: list[str], steps) -> tuple[list[str], pd.DataFrame, pd.DataFrame, list[dict]]:
    """Play the steps as the store would: events checked strictly (refused ones dropped), relabels
    only to a class of the list at that moment. Returns (classes, log, samples, events)."""
    classes, events, rows = sorted(set(base)), [], []
    for kind, first, second in steps:
        if kind == "relabel":
            if classes:
                rows.append({"id": len(rows) + 1, "sample_id": f"s{first}", "kind": "relabel",
                             "label": classes[second % len(classes)]})
            continue
        try:
            classes = apply_event(classes, kind, first, second)
        except ClassListError:
            continue
        events.append({"kind": kind, "name": first, "target": second, "after_decision": len(rows)})
    log = pd.DataFrame(rows, columns=["id", "sample_id", "kind", "label"]).assign(
        reviewer="r", undoes=pd.array([None] * len(rows), dtype="Int64"),
        created_at=pd.Timestamp("2026-12-01", tz="UTC"))
    labels = (base * 6)[:6] if base else [None] * 6
    samples = pd.DataFrame({"sample_id": [f"s{i}" for i in range(6)], "label": labels})
    return classes, log, samples, events


@settings(max_examples=60, deadline=None)
@given(st.lists(NAMES, max_size=3, unique=True), STEPS)
def test_any_event_sequence_gives_a_list_without_duplicates_and_merges_lose_no_decision(base, steps):
    classes, log, samples, events = replay(base, steps)
    assert class_list(base, events) == classes
    assert len(set(classes)) == len(classes)
    state = effective_state(log, samples, events, base)
    decided = set(log["sample_id"])
    for sample_id, label in zip(state["sample_id"], state["label"]):
        if sample_id in decided or not pd.isna(label):
            assert label in classes  # every decision and given label names a class of the list
    assert (state["status"] == "relabeled").sum() == len(decided)  # no decision lost
    assert state["original_label"].tolist() == samples["label"].tolist()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "rename", "merge", "zap"]), NAMES, st.one_of(st.none(), NAMES)),
                max_size=20), st.lists(NAMES, max_size=3))
def test_any_stored_events_even_ones_that_no_longer_apply_fold_into_a_list_without_duplicates(raw, base):
    events = [{"kind": k, "name": n, "target": t} for k, n, t in raw]
    classes = class_list(base, events)
    assert len(set(classes)) == len(classes)
    assert set(classes) <= set(base) | {n for _, n, _ in raw} | {t for _, _, t in raw}


def test_without_renames_or_merges_the_inputs_come_back_as_they_are():
    log = pd.DataFrame({"id": [1], "sample_id": ["a"], "kind": ["relabel"], "label": ["cat"]})
    mapped_log, mapped_samples = effective_inputs(log, SAMPLES, [{"kind": "add", "name": "ant"}])
    assert mapped_log is log and mapped_samples is SAMPLES
