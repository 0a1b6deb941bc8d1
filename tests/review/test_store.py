"""The decisions store: retries, undo targets, reading methods, storage guarantees, concurrency.

The semantics of the log (what undo means, derived state, conflicts, final labels) are pure functions
tested without a database in tests/review/test_log.py and tests/review/test_final_labels.py; here the store
writes and reads the log on SQLite and PostgreSQL and answers with those functions.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings

from mlfix.review import database
from mlfix.review import log as decision_log
from mlfix.review.store import ReviewStore, sqlite_url
from tests.pg import postgres_server  # noqa: F401  (session fixture: a throwaway PostgreSQL server)
from tests.review.test_log import PROPERTY_SAMPLES, as_dict, ops, replay

SAMPLES = pd.DataFrame({"sample_id": ["a", "b", "c", "d"], "label": ["cat", "cat", "dog", "dog"],
                        "path": ["a.png", "b.png", "c.png", "d.png"]})


BACKENDS = ["sqlite", "postgresql"]


def url_maker(backend: str, request, folder: Path):
    """A function that makes the URL of a new empty store on ``backend`` (skips without PostgreSQL)."""
    if backend == "sqlite":
        names = iter(range(10**9))
        return lambda: sqlite_url(folder / f"reviews{next(names)}.db")
    return request.getfixturevalue("postgres_server").new_schema


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path):
    return url_maker(request.param, request, tmp_path)()


@pytest.fixture
def store(url):
    with ReviewStore(url) as s:
        yield s


@pytest.fixture
def sqlite_store(tmp_path):
    with ReviewStore.for_project(tmp_path) as s:
        yield s


def state_of(store, sample_id):
    row = store.current_state(SAMPLES).set_index("sample_id").loc[sample_id]
    return row["label"], row["status"], row["reviewer"]


# -- round trip, retries, validation -------------------------------------------------------------

def test_round_trip_keeps_every_field(store):
    before = dt.datetime.now(dt.timezone.utc)
    [first] = store.record({"client_id": "c1", "sample_id": "a", "kind": "relabel", "label": "dog",
                            "reviewer": "alice", "note": "ears", "view": "knn"})
    second = store.undo("a", reviewer="bob", client_id="c2")
    log = store.decisions()
    assert list(log.columns) == decision_log.DECISION_COLUMNS
    assert log["id"].tolist() == [first, second] and first < second
    row = log.iloc[0]
    assert (row.client_id, row.sample_id, row.kind, row.label, row.reviewer, row.note, row.view) == \
        ("c1", "a", "relabel", "dog", "alice", "ears", "knn")
    assert pd.isna(row.undoes)
    assert log.iloc[1].undoes == first and log.iloc[1].kind == "undo" and pd.isna(log.iloc[1].label)
    assert str(log["created_at"].dt.tz) == "UTC"
    assert before - dt.timedelta(seconds=1) <= row.created_at <= dt.datetime.now(dt.timezone.utc)
    assert store.decisions(since_id=first)["id"].tolist() == [second]
    assert store.last_id() == second


def test_empty_store_reads(store):
    assert store.decisions().empty and store.last_id() == 0
    state = store.current_state(SAMPLES)
    assert state["status"].tolist() == ["unreviewed"] * 4
    assert state["label"].tolist() == SAMPLES["label"].tolist()
    assert store.per_reviewer().empty and store.conflicts(SAMPLES).empty


def test_retried_batch_is_stored_once(store):
    batch = [{"client_id": f"k{i}", "sample_id": s, "kind": "ok", "reviewer": "alice"}
             for i, s in enumerate("abc")]
    ids = store.record(batch)
    assert store.record(batch) == ids
    assert store.record(batch[::-1]) == ids[::-1]
    mixed = store.record(batch[:1] + [{"client_id": "k9", "sample_id": "d", "kind": "flag", "reviewer": "alice"}])
    assert mixed[0] == ids[0] and mixed[1] > max(ids)
    log = store.decisions()
    assert len(log) == 4 and log["client_id"].is_unique


def test_decide_client_id_makes_retries_idempotent(store):
    ids = store.decide(["a", "b"], "relabel", "dog", reviewer="alice", client_id="act-1")
    assert store.decide(["a", "b"], "relabel", "dog", reviewer="alice", client_id="act-1") == ids
    assert store.decide("c", "ok", reviewer="alice", client_id="act-2") == \
        store.decide(["c"], "ok", reviewer="alice", client_id="act-2")
    assert len(store.decisions()) == 3


def test_client_id_reused_for_another_decision_is_refused_and_nothing_stored(store):
    store.decide("a", "ok", reviewer="alice", client_id="k")
    with pytest.raises(ValueError, match="already used for a different decision"):
        store.record([{"client_id": "new", "sample_id": "b", "kind": "ok", "reviewer": "alice"},
                      {"client_id": "k", "sample_id": "a", "kind": "flag", "reviewer": "alice"}])
    assert store.decisions()["client_id"].tolist() == ["k"]
    with pytest.raises(ValueError, match="different decision"):
        store.record([{"client_id": "z", "sample_id": "a", "kind": "ok", "reviewer": "alice"},
                      {"client_id": "z", "sample_id": "b", "kind": "ok", "reviewer": "alice"}])


@pytest.mark.parametrize("decision, message", [
    ({"sample_id": "a", "kind": "approve", "reviewer": "al"}, "unknown kind 'approve'"),
    ({"sample_id": "a", "kind": "relabel", "reviewer": "al"}, "relabel needs the new label"),
    ({"sample_id": "a", "kind": "relabel", "label": "", "reviewer": "al"}, "relabel needs the new label"),
    ({"sample_id": "a", "kind": "ok", "reviewer": ""}, "reviewer is empty"),
    ({"sample_id": "a", "kind": "ok", "reviewer": "  "}, "reviewer is empty"),
    ({"sample_id": "a", "kind": "ok"}, "reviewer is empty"),
    ({"sample_id": "a", "kind": "ok", "label": "dog", "reviewer": "al"}, "only a relabel carries a label"),
    ({"sample_id": "a", "kind": "undo", "reviewer": "al"}, "an undo needs undoes"),
    ({"sample_id": "a", "kind": "ok", "undoes": 1, "reviewer": "al"}, "only an undo has undoes"),
    ({"sample_id": "", "kind": "ok", "reviewer": "al"}, "sample_id must be a non-empty str"),
    ({"sample_id": "a", "kind": "ok", "reviewer": "al", "lable": "x"}, "unknown keys"),
    ({"sample_id": "a", "kind": "undo", "undoes": 99, "reviewer": "al"}, "does not exist"),
])
def test_invalid_decisions_raise_clear_errors(store, decision, message):
    with pytest.raises(ValueError, match=message):
        store.record(decision)
    assert store.decisions().empty


def test_undo_must_be_about_the_same_sample(store):
    [i] = store.decide("a", "ok", reviewer="al")
    with pytest.raises(ValueError, match="that decision is about 'a'"):
        store.record({"sample_id": "b", "kind": "undo", "undoes": i, "reviewer": "al"})
    [u] = store.record({"kind": "undo", "undoes": i, "reviewer": "al"})  # sample_id from the target
    assert store.decisions().set_index("id").loc[u, "sample_id"] == "a"


def test_label_allow_list_is_optional(url):
    with ReviewStore(url, labels={"cat", "dog"}) as store:
        with pytest.raises(ValueError, match="not one of the project's labels"):
            store.decide("a", "relabel", "cow", reviewer="al")
        store.decide("a", "relabel", "dog", reviewer="al")
        store.decide("b", "relabel", "cow", reviewer="al", labels={"cow"})  # per call overrides
    with ReviewStore(url) as store:  # without a list: caller's business
        store.decide("c", "relabel", "anything", reviewer="al")
        assert store.decisions()["label"].tolist() == ["dog", "cow", "anything"]


def test_decide_rejects_undo_and_undo_rejects_bad_targets(store):
    with pytest.raises(ValueError, match="use undo"):
        store.decide("a", "undo", reviewer="al")
    with pytest.raises(ValueError, match="nothing to undo"):
        store.undo("a", reviewer="al")
    with pytest.raises(ValueError, match="does not exist"):
        store.undo(42, reviewer="al")
    with pytest.raises(ValueError, match="sample id .str. or a decision id"):
        store.undo(1.5, reviewer="al")
    with pytest.raises(ValueError, match="reviewer is empty"):
        store.undo("a", reviewer="")


# -- undo through the store: which decision it reverts, redo, retries, and the state after -------

def test_undo_walks_back_through_the_history(store):
    store.decide("a", "relabel", "dog", reviewer="alice")
    store.decide("a", "relabel", "bird", reviewer="alice")
    assert state_of(store, "a") == ("bird", "relabeled", "alice")
    store.undo("a", reviewer="alice")
    assert state_of(store, "a") == ("dog", "relabeled", "alice")
    store.undo("a", reviewer="alice")
    assert state_of(store, "a") == ("cat", "unreviewed", None)
    with pytest.raises(ValueError, match="nothing to undo"):
        store.undo("a", reviewer="alice")
    assert len(store.decisions()) == 4  # nothing was removed: two decisions, two undos


def test_undo_of_an_undo_restores_the_decision(store):
    [relabel] = store.decide("a", "relabel", "dog", reviewer="alice")
    first_undo = store.undo("a", reviewer="alice")
    assert state_of(store, "a")[1] == "unreviewed"
    with pytest.raises(ValueError, match="already undone"):
        store.undo(relabel, reviewer="alice")
    redo = store.undo(first_undo, reviewer="alice")
    assert state_of(store, "a") == ("dog", "relabeled", "alice")
    store.undo(redo, reviewer="alice")  # undo the redo: the relabel is cancelled again
    assert state_of(store, "a") == ("cat", "unreviewed", None)


def test_undo_by_sample_skips_undos_and_can_be_limited_to_own_decisions(store):
    store.decide("a", "relabel", "dog", reviewer="alice")
    [bobs] = store.decide("a", "flag", reviewer="bob")
    [alices_ok] = store.decide("a", "ok", reviewer="alice")
    undone = store.undo("a", reviewer="bob", own=True)
    assert store.decisions().set_index("id").loc[undone, "undoes"] == bobs
    assert state_of(store, "a") == ("dog", "ok", "alice")
    undone = store.undo("a", reviewer="bob")  # without own: anyone's latest
    assert store.decisions().set_index("id").loc[undone, "undoes"] == alices_ok
    assert state_of(store, "a") == ("dog", "relabeled", "alice")
    with pytest.raises(ValueError, match="nothing to undo for sample 'a' by 'bob'"):
        store.undo("a", reviewer="bob", own=True)


def test_undo_retry_with_same_client_id_is_stored_once(store):
    store.decide("a", "relabel", "dog", reviewer="al")
    store.decide("a", "relabel", "bird", reviewer="al")
    u = store.undo("a", reviewer="al", client_id="u1")
    assert store.undo("a", reviewer="al", client_id="u1") == u
    assert state_of(store, "a")[0] == "dog" and len(store.decisions()) == 3


def test_state_corrected_labels_and_per_reviewer(store):
    store.decide(["a", "b"], "relabel", "dog", reviewer="alice")
    store.decide("c", "flag", reviewer="bob")
    store.decide("d", "relabel", "dog", reviewer="bob")  # relabel to the label it had
    store.undo("b", reviewer="alice")
    store.decide("zz", "ok", reviewer="bob")  # a sample not in the table is ignored
    state = store.current_state(SAMPLES)
    assert list(state.columns) == decision_log.STATE_COLUMNS
    assert state["sample_id"].tolist() == ["a", "b", "c", "d"]
    assert state["label"].tolist() == ["dog", "cat", "dog", "dog"]
    assert state["status"].tolist() == ["relabeled", "unreviewed", "flagged", "relabeled"]
    assert state["reviewer"].tolist() == ["alice", None, "bob", "bob"]
    assert state["decided_at"].notna().tolist() == [True, False, True, True]

    export = store.corrected_labels(SAMPLES.iloc[::-1])
    assert list(export.columns) == ["sample_id", "path", "original_label", "corrected_label", "changed"]
    assert export["sample_id"].tolist() == ["d", "c", "b", "a"]
    assert export["path"].tolist() == ["d.png", "c.png", "b.png", "a.png"]
    assert export["changed"].tolist() == [False, False, False, True]

    summary = store.per_reviewer().set_index("reviewer")
    assert summary.loc["alice", ["decisions", "relabel", "undo", "effective", "samples"]].tolist() == [3, 2, 1, 1, 2]
    assert summary.loc["bob", ["decisions", "flag", "ok", "relabel", "effective"]].tolist() == [3, 1, 1, 1, 3]
    assert summary.loc["bob", "first_at"] <= summary.loc["bob", "last_at"]


def test_store_conflicts_and_final_labels(store):
    store.decide("a", "relabel", "dog", reviewer="ann")
    store.decide("a", "relabel", "fox", reviewer="bob")
    store.decide("a", "relabel", "fox", reviewer="cy")

    def label_of(frame):
        return frame.set_index("sample_id").loc["a", "label"]
    assert label_of(store.final_labels(SAMPLES, "majority")) == "fox"
    assert label_of(store.final_labels(SAMPLES, "admin_wins", admins=["ann"])) == "dog"
    assert label_of(store.final_state(SAMPLES, "admin_wins", admins=["ann"])) == "dog"
    assert store.conflicts(SAMPLES)["sample_id"].tolist() == ["a"]
    assert store.conflicts(SAMPLES).iloc[0]["verdicts"] == {"ann": "dog", "bob": "fox", "cy": "fox"}


# -- storage guarantees ----------------------------------------------------------------------------

def test_file_is_sqlite_in_wal_mode_with_full_sync(sqlite_store, tmp_path):
    store = sqlite_store
    store.decide("a", "ok", reviewer="al")
    path = tmp_path / "reviews.db"
    assert path.read_bytes()[:16] == b"SQLite format 3\x00"
    assert (tmp_path / "reviews.db.lock").exists()  # writers queue on it
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT count(*) FROM decisions").fetchone()[0] == 1
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == database.SQLITE_BUSY_TIMEOUT_MS


def test_for_project_needs_an_existing_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        ReviewStore.for_project(tmp_path / "missing")
    with pytest.raises(ValueError, match="unsupported database"):
        ReviewStore("mysql://u@h/db")


def _write_many(url: str, worker: int, count: int) -> None:
    """One process's share: transactions of 1 to 4 decisions, each 10 also resent once as a batch."""
    with ReviewStore(url) as store:
        for start in range(0, count, 10):
            batch = [{"client_id": f"w{worker}-{i}", "sample_id": f"s{i % 50}", "kind": "relabel",
                      "label": f"l{worker}", "reviewer": f"r{worker}"} for i in range(start, start + 10)]
            for part in (batch[:1], batch[1:4], batch[4:7], batch[7:]):
                store.record(part)
            store.record(batch)  # a retry of everything just acknowledged: stores nothing


def run_processes(target, args_per_process) -> None:
    ctx = multiprocessing.get_context("fork")
    processes = [ctx.Process(target=target, args=args) for args in args_per_process]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=120)
    assert [p.exitcode for p in processes] == [0] * len(processes)


def test_processes_writing_at_once_lose_and_duplicate_nothing(url):
    ReviewStore(url).close()
    workers, per_worker = 4, 200
    run_processes(_write_many, [(url, w, per_worker) for w in range(workers)])
    with ReviewStore(url) as store:
        log = store.decisions()
    expected = {f"w{w}-{i}" for w in range(workers) for i in range(per_worker)}
    assert len(log) == workers * per_worker
    assert set(log["client_id"]) == expected and log["id"].is_unique


def test_threads_sharing_one_store_lose_and_duplicate_nothing(store):
    """The app's case: one store per server process, used by the sessions' threads at once."""
    def write(worker: int) -> None:
        for i in range(25):
            store.decide(f"s{i}", "relabel", f"l{worker}", reviewer=f"r{worker}", client_id=f"{worker}-{i}")
            store.decide(f"s{i}", "relabel", f"l{worker}", reviewer=f"r{worker}", client_id=f"{worker}-{i}")

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log = store.decisions()
    assert sorted(log["client_id"]) == sorted(f"{w}-{i}" for w in range(4) for i in range(25))


def _undo_many(url: str, worker: int, count: int) -> None:
    with ReviewStore(url) as store:
        for _ in range(count):
            store.undo("a", reviewer=f"r{worker}")


def test_concurrent_undos_of_one_sample_revert_different_decisions(url):
    with ReviewStore(url) as store:
        decided = store.record([{"sample_id": "a", "kind": "relabel", "label": f"l{i}", "reviewer": "al"}
                                for i in range(24)])
    run_processes(_undo_many, [(url, w, 6) for w in range(4)])
    with ReviewStore(url) as store:
        log = store.decisions()
        assert sorted(log.loc[log["kind"] == "undo", "undoes"].tolist()) == sorted(decided)
        assert state_of(store, "a") == ("cat", "unreviewed", None)


# -- property: the store's state equals a plain replay of the log it holds ------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_store_state_equals_plain_replay(backend, request, tmp_path):
    new_url = url_maker(backend, request, tmp_path)

    # Fewer examples on PostgreSQL (a new database each): the pure property above covers the logic,
    # this one that both dialects store and return the same log.
    @settings(max_examples=15 if backend == "sqlite" else 8, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(ops)
    def check(operations):
        with ReviewStore(new_url()) as store:
            apply_and_compare(store, operations)

    check()


def apply_and_compare(store: ReviewStore, operations) -> None:
    """Drive the store's own API with random operations, then compare with the plain replay."""
    for op in operations:
        if op[0] == "decide":
            _, sample, kind, label, reviewer = op
            store.decide(sample, kind, label if kind == "relabel" else None, reviewer=reviewer)
            continue
        log = store.decisions()
        if log.empty:
            target = "s0"
        elif op[1] % 3 == 0:  # by sample: its latest effective decision
            target = str(log["sample_id"].iloc[-1])
        else:  # by decision id, which may be an undo's: a redo
            target = int(log["id"].iloc[op[1] % len(log)])
        try:
            store.undo(target, reviewer=op[2])
        except ValueError as error:
            assert "nothing to undo" in str(error) or "already undone" in str(error)
    log = store.decisions()
    assert as_dict(store.current_state(PROPERTY_SAMPLES)) == replay(log, PROPERTY_SAMPLES)
    assert log["client_id"].is_unique
