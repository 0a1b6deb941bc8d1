"""The Python side of the review grid: batches of actions applied exactly once.

Palette keys and thumbnail URLs: tests/ui/test_grid_palette.py."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlfix.review.actions import BatchApplier, BatchError, action_records, parse_batch

LABELS = ["cat", "dog", "fox"]


class ListStore:
    """Records what it is given, in order (the real store is tested further down)."""

    def __init__(self):
        self.rows: list[dict] = []
        self.calls = 0

    def record(self, rows):
        self.calls += 1
        self.rows.extend(rows)


def act(seq, kind="relabel", ids=("a",), label="dog", client=None, **extra):
    item = {"seq": seq, "client_id": client or f"c{seq}", "kind": kind, **extra}
    if kind != "page":
        item["ids"] = list(ids)
    if kind == "relabel":
        item["label"] = label
    return item


def batch(*actions, session="s1"):
    return {"session": session, "actions": list(actions)}


def test_a_batch_is_stored_in_one_call_with_one_row_per_sample():
    store, applier = ListStore(), BatchApplier()
    result = applier.apply(batch(act(1, ids=["a", "b", "c"], label="fox"), act(2, "flag", ids=["d"])),
                           store, LABELS, "ann")
    assert store.calls == 1
    assert [(r["sample_id"], r["kind"], r["label"]) for r in store.rows] == [
        ("a", "relabel", "fox"), ("b", "relabel", "fox"), ("c", "relabel", "fox"), ("d", "flag", None)]
    assert {r["reviewer"] for r in store.rows} == {"ann"}
    assert result.ack == 2 and result.changed and not result.errors


def test_a_resent_batch_is_applied_once():
    store, applier = ListStore(), BatchApplier()
    first = batch(act(1), act(2, "ok", ids=["b"]))
    applier.apply(first, store, LABELS, "ann")
    again = applier.apply(batch(act(1), act(2, "ok", ids=["b"]), act(3, "flag", ids=["c"])),
                          store, LABELS, "ann")
    assert again.skipped == [1, 2]
    assert [r["sample_id"] for r in store.rows] == ["a", "b", "c"]
    assert again.ack == 3


def test_sequence_numbers_are_per_browser_session():
    store, applier = ListStore(), BatchApplier()
    applier.apply(batch(act(1, ids=["a"]), session="tab1"), store, LABELS, "ann")
    applier.apply(batch(act(1, ids=["b"]), session="tab2"), store, LABELS, "bob")
    assert [r["sample_id"] for r in store.rows] == ["a", "b"]


def test_actions_are_applied_in_sequence_order():
    store, applier = ListStore(), BatchApplier()
    applier.apply(batch(act(2, "flag", ids=["a"]), act(1, ids=["a"])), store, LABELS, "ann")
    assert [r["kind"] for r in store.rows] == ["relabel", "flag"]


def test_unknown_label_is_a_clear_error_and_not_stored():
    store, applier = ListStore(), BatchApplier()
    result = applier.apply(batch(act(1, label="wolf"), act(2, label="cat", ids=["b"])), store,
                           LABELS, "ann")
    assert [r["label"] for r in store.rows] == ["cat"]
    assert len(result.errors) == 1 and "'wolf' is not a label of this project" in result.errors[0]
    assert result.ack == 2  # acknowledged, so the grid stops resending it


def test_unknown_sample_is_refused_when_known_ids_are_given():
    store, applier = ListStore(), BatchApplier()
    result = applier.apply(batch(act(1, "ok", ids=["a", "zzz"])), store, LABELS, "ann",
                           known_ids={"a", "b"})
    assert store.rows == [] and "not in this project" in result.errors[0]


@pytest.fixture
def store(tmp_path):
    from mlfix.review.store import ReviewStore

    with ReviewStore.for_project(tmp_path) as review_store:
        yield review_store


SAMPLES = pd.DataFrame({"sample_id": ["a", "b", "c"], "label": ["cat", "cat", "cat"]})


def status(store):
    state = store.current_state(SAMPLES).set_index("sample_id")
    return {s: (state.loc[s, "status"], state.loc[s, "label"]) for s in state.index}


def test_undo_reverts_exactly_the_decisions_of_that_action(store):
    applier = BatchApplier()
    applier.apply(batch(act(1, ids=["a", "b"], label="dog", client="c1"), act(2, "ok", ids=["c"])),
                  store, LABELS, "ann")
    applier.apply(batch(act(3, "undo", ids=["a", "b"], undoes="c1")), store, LABELS, "ann")
    assert status(store) == {"a": ("unreviewed", "cat"), "b": ("unreviewed", "cat"), "c": ("ok", "cat")}


def test_undo_in_the_same_batch_as_its_action(store):
    result = BatchApplier().apply(batch(act(1, ids=["a"], label="fox", client="c1"), act(2, "flag", ids=["b"]),
                                        act(3, "undo", ids=["a"], undoes="c1")), store, LABELS, "ann")
    assert not result.errors
    assert status(store)["a"] == ("unreviewed", "cat") and status(store)["b"] == ("flagged", "cat")
    assert list(store.decisions()["kind"]) == ["relabel", "flag", "undo"]


def test_undo_without_an_action_reverts_the_reviewers_latest_decision(store):
    store.decide(["a"], "relabel", "dog", reviewer="ann")
    store.decide(["a"], "ok", reviewer="bob")
    result = BatchApplier().apply(batch(act(1, "undo", ids=["a", "b"])), store, LABELS, "ann")
    assert status(store)["a"] == ("ok", "cat")  # ann's relabel is undone, bob's ok stays
    assert len(result.errors) == 1 and "nothing of yours to undo" in result.errors[0]


def test_undo_of_an_action_that_was_not_stored_is_an_error(store):
    result = BatchApplier().apply(batch(act(1, label="wolf", client="c1"), act(2, "undo", undoes="c1")),
                                  store, LABELS, "ann")
    assert store.decisions().empty
    assert any("nothing to undo" in e for e in result.errors)


def test_a_resent_undo_after_restart_is_stored_once(store):
    payload = batch(act(1, ids=["a"], client="c1"), act(2, "undo", ids=["a"], undoes="c1"))
    BatchApplier().apply(payload, store, LABELS, "ann")
    BatchApplier().apply(payload, store, LABELS, "ann")
    assert list(store.decisions()["kind"]) == ["relabel", "undo"]


def test_page_actions_move_pages_and_store_nothing():
    store, applier = ListStore(), BatchApplier()
    result = applier.apply(batch(act(1, "page", delta=1), act(2, "page", delta=1), act(3, "page", delta=-1)),
                           store, LABELS, "ann")
    assert store.rows == [] and result.page_delta == 1 and result.ack == 3


def test_a_failed_store_write_is_retried_not_lost():
    class FailingOnce(ListStore):
        def record(self, rows):
            if self.calls == 0:
                self.calls += 1
                raise RuntimeError("database is locked")
            super().record(rows)

    store, applier = FailingOnce(), BatchApplier()
    with pytest.raises(RuntimeError):
        applier.apply(batch(act(1)), store, LABELS, "ann")
    result = applier.apply(batch(act(1)), store, LABELS, "ann")
    assert [r["sample_id"] for r in store.rows] == ["a"] and result.ack == 1


@pytest.mark.parametrize("payload, message", [
    ("nope", "JSON object"),
    ({"actions": []}, "session"),
    ({"session": "s", "actions": {}}, "list"),
])
def test_malformed_batches_raise_batch_error(payload, message):
    with pytest.raises(BatchError, match=message):
        parse_batch(payload)


@pytest.mark.parametrize("item, message", [
    ({"seq": 0, "client_id": "c", "kind": "ok", "ids": ["a"]}, "seq"),
    ({"seq": 1, "client_id": "c", "kind": "delete", "ids": ["a"]}, "unknown kind"),
    ({"seq": 1, "client_id": "", "kind": "ok", "ids": ["a"]}, "client_id"),
    ({"seq": 1, "client_id": "c", "kind": "ok", "ids": []}, "ids"),
    ({"seq": 1, "client_id": "c", "kind": "relabel", "ids": ["a"]}, "needs a 'label'"),
])
def test_malformed_actions_are_reported_and_skipped(item, message):
    _, actions, errors = parse_batch({"session": "s", "actions": [item]})
    assert actions == [] and message in errors[0]


def test_blank_reviewer_is_refused():
    with pytest.raises(ValueError, match="reviewer"):
        BatchApplier().apply(batch(act(1)), ListStore(), LABELS, "  ")


def test_the_view_on_screen_is_stored_with_the_decision(store):
    BatchApplier().apply(batch(act(1, "flag", ids=["a"])), store, LABELS, "ann", view="suspects")
    assert store.decisions()["view"].tolist() == ["suspects"]


def test_record_client_ids_are_unique_per_sample():
    _, [action], _ = parse_batch(batch(act(1, ids=["a", "b", "a"])))
    rows = action_records(action, "ann")
    assert [r["client_id"] for r in rows] == ["c1:a", "c1:b"]


# The grid resends every unacknowledged action; whatever subset of messages arrives, in whatever
# overlap, each action is stored exactly once and in order.
@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 12), data=st.data())
def test_any_resend_pattern_stores_each_action_once(n, data):
    actions = [act(i, "ok", ids=[f"s{i}"]) for i in range(1, n + 1)]
    store, applier = ListStore(), BatchApplier()
    acked = 0
    sent_upto = 0
    while acked < n:
        # the grid made some more actions, then a message with everything not yet acknowledged
        sent_upto = data.draw(st.integers(max(sent_upto, acked + 1), n))
        pending = actions[acked:sent_upto]
        if data.draw(st.booleans()):  # a duplicate delivery of the same message
            applier.apply(batch(*pending), store, LABELS, "ann")
        result = applier.apply(batch(*pending), store, LABELS, "ann")
        acked = result.ack
    assert [r["sample_id"] for r in store.rows] == [f"s{i}" for i in range(1, n + 1)]


def test_with_the_real_store_a_resend_after_restart_is_stored_once(store):
    payload = batch(act(1, ids=["a", "b"], label="fox"))
    BatchApplier().apply(payload, store, LABELS, "ann")
    BatchApplier().apply(payload, store, LABELS, "ann")  # a fresh applier: the server restarted
    decisions = store.decisions()
    assert sorted(decisions["sample_id"]) == ["a", "b"] and len(decisions) == 2


# ---- hardening (#15): long ids, one bad action, limits, what the tab was shown, whose batch ------

from mlfix.limits import Limits  # noqa: E402
from mlfix.review.actions import row_client_id  # noqa: E402
from mlfix.review.guard import RateLimiter, reviewer_tag  # noqa: E402

LONG = "data/" + "deep/" * 199 + "cat.png"  # a real long path: 1,007 characters


def test_a_sample_id_of_a_thousand_characters_is_stored_once_and_undone(store):
    payload = batch(act(1, ids=[LONG, "b"], label="fox", client="c1"), act(2, "flag", ids=["c"]))
    first = BatchApplier().apply(payload, store, LABELS, "ann")
    again = BatchApplier().apply(payload, store, LABELS, "ann")  # resent after a restart
    assert not first.errors and not again.errors and again.ack == 2
    log = store.decisions()
    assert list(zip(log["sample_id"], log["kind"])) == [(LONG, "relabel"), ("b", "relabel"), ("c", "flag")]
    assert log["client_id"].tolist() == [row_client_id("c1", LONG), "c1:b", "c2:c"]
    BatchApplier().apply(batch(act(3, "undo", ids=[LONG], undoes="c1")), store, LABELS, "ann")
    assert store.decisions()["kind"].tolist()[-1] == "undo"
    samples = pd.DataFrame({"sample_id": [LONG], "label": ["cat"]})
    assert store.current_state(samples)["status"].tolist() == ["unreviewed"]


def test_row_client_ids_keep_their_old_form_and_never_collide():
    assert row_client_id("c1", "a/b.png") == "c1:a/b.png"  # rows stored before still dedupe
    long_row = row_client_id("c1", LONG)
    assert len(long_row) <= 200 and long_row != row_client_id("c1", LONG + "x")
    assert row_client_id("c1", long_row.split(":", 1)[1]) != long_row  # a crafted id is not a digest


def test_one_action_the_store_refuses_does_not_block_the_others(store):
    store.record({"client_id": "dup:a", "sample_id": "a", "kind": "ok", "reviewer": "ann"})
    applier = BatchApplier()
    result = applier.apply(batch(act(1, "flag", ids=["b"]), act(2, "flag", ids=["a"], client="dup"),
                                 act(3, "ok", ids=["c"])), store, LABELS, "ann")
    assert result.ack == 3 and result.refused == [2]
    assert len(result.errors) == 1 and result.errors[0].startswith(
        "action 2 (flag on 1 image(s)) was refused by the store, so nothing of it was stored: client_id 'dup:a'")
    assert store.decisions()["client_id"].tolist() == ["dup:a", "c1:b", "c3:c"]
    later = applier.apply(batch(act(4, "ok", ids=["b"])), store, LABELS, "ann")  # the next batch goes through
    assert later.ack == 4 and not later.errors and len(store.decisions()) == 4


def test_an_unavailable_store_still_leaves_the_whole_batch_to_be_resent():
    from mlfix.errors import StoreUnavailable

    class Down(ListStore):
        def record(self, rows):
            raise StoreUnavailable("the decisions database is unavailable")

    applier = BatchApplier()
    with pytest.raises(StoreUnavailable):
        applier.apply(batch(act(1), act(2, "ok", ids=["b"])), Down(), LABELS, "ann")
    assert applier.last_seq.get("s1", 0) == 0  # nothing acknowledged: the grid resends both


def test_ids_off_the_pages_shown_to_the_tab_are_refused(caplog):
    store, applier = ListStore(), BatchApplier()
    with caplog.at_level("WARNING", logger="mlfix.review"):
        result = applier.apply(batch(act(1, "ok", ids=["a", "other-class/9.png"]), act(2, "ok", ids=["b"])),
                               store, LABELS, "ann", shown={"a", "b"})
    assert [r["sample_id"] for r in store.rows] == ["b"] and result.ack == 2 and result.refused == [1]
    assert result.errors == ["1 image(s) were not on a page shown to you in this tab ('other-class/9.png'...), "
                             "so nothing of that ok was stored; reload the page and decide on the images it shows"]
    assert "refused a grid action of 'ann'" in caplog.text and "other-class/9.png" in caplog.text


def test_too_many_ids_in_one_action_is_refused_with_the_limit():
    store, applier = ListStore(), BatchApplier()
    result = applier.apply(batch(act(1, "ok", ids=[f"s{i}" for i in range(6)]), act(2, "ok", ids=["a"])),
                           store, LABELS, "ann", limits=Limits(ids_per_action=5))
    assert [r["sample_id"] for r in store.rows] == ["a"] and result.ack == 2
    assert result.errors == ["action 1: 6 images in one action; at most 5 (MLFIX_MAX_IDS_PER_ACTION), so "
                             "nothing of it was stored: select fewer"]


def test_a_batch_over_the_cap_is_handled_in_parts_and_nothing_is_lost():
    store, applier = ListStore(), BatchApplier()
    actions = [act(i, "ok", ids=[f"s{i}"]) for i in range(1, 8)]
    first = applier.apply(batch(*actions), store, LABELS, "ann", limits=Limits(actions_per_batch=3))
    assert first.ack == 3 and first.deferred == [4, 5, 6, 7]
    assert first.errors == ["7 actions in one batch; at most 3 are handled at a time (MLFIX_MAX_ACTIONS_PER_BATCH): "
                            "4 action(s) are kept in this tab and sent again shortly"]
    while applier.last_seq["s1"] < 7:  # the grid resends what is not acknowledged
        applier.apply(batch(*actions[applier.last_seq["s1"]:]), store, LABELS, "ann",
                      limits=Limits(actions_per_batch=3))
    assert [r["sample_id"] for r in store.rows] == [f"s{i}" for i in range(1, 8)]


def test_decisions_per_minute_are_capped_per_reviewer_and_the_rest_waits():
    now = [0.0]
    rate = RateLimiter(per_minute=4, clock=lambda: now[0])
    store, applier = ListStore(), BatchApplier()
    payload = batch(act(1, "ok", ids=["a", "b", "c"]), act(2, "ok", ids=["d", "e"]), act(3, "page", delta=1))
    first = applier.apply(payload, store, LABELS, "ann", rate=rate)
    assert [r["sample_id"] for r in store.rows] == ["a", "b", "c"] and first.ack == 1 and first.deferred == [2, 3]
    assert first.errors == ["Slow down: more than 4 decisions a minute (MLFIX_MAX_DECISIONS_PER_MINUTE); try again "
                            "in about 15 s: 2 action(s) are kept in this tab and sent again shortly"]
    bobs = BatchApplier().apply(batch(act(1, "ok", ids=list("wxyz")), session="bobs-tab"), ListStore(), LABELS,
                                "bob", rate=rate)
    assert bobs.ack == 1 and not bobs.errors  # per reviewer: ann's pace does not slow bob
    now[0] = 7.0  # 7 s later: 1.47 decisions allowed, 2 needed
    assert applier.apply(payload, store, LABELS, "ann", rate=rate).ack == 1
    now[0] = 30.0
    last = applier.apply(payload, store, LABELS, "ann", rate=rate)
    assert last.ack == 3 and [r["sample_id"] for r in store.rows] == list("abcde") and last.page_delta == 1


def test_a_batch_made_by_another_reviewer_is_not_stored_under_the_one_signed_in_now():
    store, applier = ListStore(), BatchApplier()
    made_by_ann = batch(act(1, "ok", ids=["a"], by=reviewer_tag("ann")),
                        act(2, "ok", ids=["b"], by=reviewer_tag("bob")), act(3, "ok", ids=["c"]))
    result = applier.apply(made_by_ann, store, LABELS, "bob")
    assert [(r["sample_id"], r["reviewer"]) for r in store.rows] == [("b", "bob"), ("c", "bob")]
    assert result.ack == 3 and result.errors == [
        "action 1 (ok) was made in this tab by another reviewer, before you signed in, so it was not stored "
        "under your name"]


def test_an_undo_naming_another_reviewers_action_undoes_nothing_of_theirs(store):
    BatchApplier().apply(batch(act(1, ids=["a"], label="dog", client="anns")), store, LABELS, "ann")
    result = BatchApplier().apply(batch(act(1, "undo", ids=["a"], undoes="anns"), session="bobs-tab"),
                                  store, LABELS, "bob")
    assert store.decisions()["kind"].tolist() == ["relabel"] and "nothing to undo" in result.errors[0]
