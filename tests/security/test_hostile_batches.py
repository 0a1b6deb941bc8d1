"""Hostile grid batches against the action applier and the decisions store (#15).

A reviewer's browser is not trusted: whatever it sends as a grid batch (wrong types, unicode, HTML,
huge numbers, missing keys, nested junk, images of another class, too many ids, another reviewer's
actions), each action ends in exactly one of two outcomes: *stored once* (resending it after a
server restart stores nothing new), or *refused with this message* and nothing of it stored. No
action blocks another, and nothing else (no traceback) comes back.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlfix.errors import BatchError
from mlfix.limits import Limits
from mlfix.review.actions import BatchApplier, row_client_id
from mlfix.review.guard import reviewer_tag
from mlfix.review.store import ReviewStore, sqlite_url

LABELS = ["cat", "dog", "<b>fox</b>"]
REVIEWER = "ann"
LIMITS = Limits(ids_per_action=8, actions_per_batch=50)
ID_TEXT = st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=40)
# what a page can show: unicode, HTML, markdown, a 1,000-character path
SHOWN = ["a.png", "dir/ünïcödé 猫.jpg", "<img src=x onerror=alert(1)>.png", "[x](http://evil.example)",
         "data/" + "deep/" * 199 + "cat.png", "=HYPERLINK(\"http://e\")", "sha256=deadbeef", "a:b"]
JUNK = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | ID_TEXT,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ID_TEXT, inner, max_size=3),
                    max_leaves=8)

# defect -> the message its action is refused with (None: stored)
MESSAGES = {
    None: None,
    "not_an_object": "an action must be an object",
    "seq": "an action needs an integer 'seq' >= 1",
    "kind": "unknown kind",
    "client_id": "'client_id' must be a non-empty string (a uuid)",
    "ids": "'ids' must be a non-empty list of sample ids",
    "too_many_ids": "images in one action; at most 8 (MLFIX_MAX_IDS_PER_ACTION)",
    "off_page": "were not on a page shown to you in this tab",
    "label": "is not a label of this project, so nothing was stored",
    "no_label": "a relabel needs a 'label'",
    "by": "was made in this tab by another reviewer, before you signed in",
}


@st.composite
def hostile_action(draw, seq: int) -> tuple[object, str | None]:
    """An action with at most one defect, and that defect (None for a valid action)."""
    defect = draw(st.sampled_from(list(MESSAGES)))
    kind = draw(st.sampled_from(["relabel", "flag", "ok"]))
    action = {"seq": seq, "client_id": f"c{seq}-{draw(st.text('abc-', max_size=8))}", "kind": kind,
              "ids": draw(st.lists(st.sampled_from(SHOWN), min_size=1, max_size=4)),
              **draw(st.dictionaries(st.sampled_from(["note", "extra", "__proto__", "x"]), JUNK, max_size=2))}
    if kind == "relabel":
        action["label"] = draw(st.sampled_from(LABELS))
    if draw(st.booleans()):
        action["by"] = reviewer_tag(REVIEWER)
    if defect == "not_an_object":
        return draw(JUNK.filter(lambda v: not isinstance(v, dict))), defect
    if defect == "seq":
        action["seq"] = draw(st.sampled_from([0, -1, 2**53, 1.5, True, "1", None, [1]]))
    elif defect == "kind":
        action["kind"] = draw(JUNK.filter(lambda v: v not in ("relabel", "flag", "ok", "undo", "page")))
    elif defect == "client_id":
        action["client_id"] = draw(st.sampled_from(["", None, 7, ["c"], "c" * 101]))
    elif defect == "ids":
        action["ids"] = draw(st.sampled_from([[], None, "a.png", [""], ["a.png", 3], [["a.png"]], {"a": 1}]))
    elif defect == "too_many_ids":
        action["ids"] = [f"s{i}" for i in range(9)]
    elif defect == "off_page":
        action["ids"] = action["ids"] + [draw(ID_TEXT.filter(lambda s: s not in SHOWN))]
    elif defect == "label":
        action.update(kind="relabel", label=draw(ID_TEXT.filter(lambda s: s not in LABELS)))
    elif defect == "no_label":
        action.update(kind="relabel", label=draw(st.sampled_from([None, "", 3, ["cat"]])))
    elif defect == "by":
        action["by"] = reviewer_tag("mallory")
    return action, defect


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data(), n=st.integers(1, 8))
def test_every_hostile_action_is_stored_once_or_refused_with_its_message(tmp_path_factory, data, n):
    drawn = [data.draw(hostile_action(seq)) for seq in range(1, n + 1)]
    payload = {"session": "tab", "actions": [a for a, _ in drawn]}
    with ReviewStore(sqlite_url(tmp_path_factory.mktemp("hostile") / "reviews.db")) as store:
        result = BatchApplier().apply(payload, store, LABELS, REVIEWER, shown=set(SHOWN), limits=LIMITS)
        again = BatchApplier().apply(payload, store, LABELS, REVIEWER, shown=set(SHOWN), limits=LIMITS)
        log = store.decisions()
    expected_rows = []
    for (action, defect) in drawn:
        if defect is None:
            ids = list(dict.fromkeys(action["ids"]))
            expected_rows += [(row_client_id(action["client_id"], s), s, action["kind"], action.get("label"))
                              for s in ids]
    stored = list(zip(log["client_id"], log["sample_id"], log["kind"], log["label"].where(log["label"].notna(), None)))
    assert stored == expected_rows  # each valid action stored once, in order; nothing of the others
    assert set(log["reviewer"]) <= {REVIEWER}
    wanted = sorted(MESSAGES[d] for _, d in drawn if d is not None)
    assert len(result.errors) == len(wanted)
    for message in wanted:
        assert sum(message in e for e in result.errors) >= wanted.count(message)
    valid_seqs = [a["seq"] for a, d in drawn if d not in ("not_an_object", "seq")]
    assert result.ack == max(valid_seqs, default=0) and result.deferred == []
    assert again.ack == result.ack and len(again.errors) == len(result.errors)


@settings(max_examples=150, deadline=None)
@given(payload=JUNK | st.fixed_dictionaries({"session": JUNK, "actions": JUNK}))
def test_a_payload_that_is_not_a_batch_is_one_clear_error(payload):
    try:
        result = BatchApplier().apply(payload, None, LABELS, REVIEWER, shown=set(SHOWN), limits=LIMITS)
    except BatchError as error:
        assert str(error) in ("the batch has no 'session' id (a non-empty string made by the grid)",
                              "the batch's 'actions' must be a list") or str(error).startswith(
            "a batch must be a JSON object with 'session' and 'actions', got ")
        return
    assert result.records == [] or all(r["sample_id"] in SHOWN for r in result.records)


@settings(max_examples=100, deadline=None)
@given(deltas=st.lists(st.integers(-2**80, 2**80), min_size=1, max_size=5))
def test_huge_page_deltas_are_bounded(deltas):
    actions = [{"seq": i + 1, "client_id": f"p{i}", "kind": "page", "delta": d} for i, d in enumerate(deltas)]
    result = BatchApplier().apply({"session": "s", "actions": actions}, None, LABELS, REVIEWER, limits=LIMITS)
    assert result.page_delta == sum(max(-10**6, min(10**6, d)) for d in deltas)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.fixed_dictionaries(
    {"sample_id": ID_TEXT | st.text(min_size=300, max_size=2000) | JUNK,
     "kind": st.sampled_from(["ok", "flag", "relabel", "x"]),
     "reviewer": st.sampled_from([REVIEWER, "", "  "]) | JUNK},
    optional={"label": JUNK, "undoes": JUNK, "client_id": ID_TEXT | JUNK}), min_size=1, max_size=4))
def test_the_store_stores_a_hostile_row_once_or_refuses_the_call_with_its_message(tmp_path_factory, rows):
    with ReviewStore(sqlite_url(tmp_path_factory.mktemp("store") / "reviews.db")) as store:
        try:
            ids = store.record(rows)
        except ValueError as error:
            assert str(error).startswith("decision ") or "already used for a different decision" in str(error) \
                or "points at decision" in str(error)
            assert store.decisions().empty  # one transaction: nothing of the call is stored
            return
        assert store.record([r for r in rows if "client_id" in r]) == [
            i for i, r in zip(ids, rows) if "client_id" in r]  # a retry stores nothing new
        assert len(store.decisions()) == len(set(ids))
