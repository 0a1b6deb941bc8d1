"""The ``duplicate`` decision kind: through the log, the store, undo, stats, conflicts, the grid's
action parser and the exports; and an older decisions table migrated in place when opened."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import event

from mlfix.review import export, log, schema
from mlfix.review.actions import BatchApplier, parse_batch
from mlfix.review.database import UTCDateTime
from mlfix.review.store import ReviewStore, sqlite_url
from tests.pg import postgres_server  # noqa: F401  (session fixture: a throwaway PostgreSQL server)
from tests.review.test_log import PROPERTY_SAMPLES, as_dict, replay, synthetic_log
from tests.review.test_store import store, url  # noqa: F401  (fixtures: a new store on SQLite and on PostgreSQL)

SAMPLES = pd.DataFrame({"sample_id": ["a", "b", "c", "d"], "label": ["cat", "cat", "dog", "dog"],
                        "path": ["a.png", "b.png", "c.png", "d.png"]})
T0 = dt.datetime(2026, 11, 27, 21, 40, tzinfo=dt.timezone.utc)


def frame(rows: list[tuple]) -> pd.DataFrame:
    """A log from (id, sample_id, kind, label, reviewer, undoes) tuples."""
    records = [{"id": i, "client_id": f"c{i}", "sample_id": s, "kind": k, "label": lab, "reviewer": who,
                "created_at": T0 + dt.timedelta(seconds=i), "undoes": u, "note": None, "view": None}
               for i, s, k, lab, who, u in rows]
    table = pd.DataFrame.from_records(records, columns=log.DECISION_COLUMNS)
    table["undoes"] = table["undoes"].astype("Int64")
    return table


# -- the log --------------------------------------------------------------------------------------

def test_duplicate_is_a_status_that_keeps_the_label_and_undo_reverts_it():
    decisions = frame([(1, "a", "duplicate", None, "ann", None), (2, "b", "relabel", "dog", "ann", None),
                       (3, "b", "duplicate", None, "ann", None), (4, "c", "duplicate", None, "ann", None),
                       (5, "c", "undo", None, "ann", 4)])
    state = log.derive_state(decisions, SAMPLES[["sample_id", "label"]]).set_index("sample_id")
    assert state.loc["a", ["label", "status", "reviewer"]].tolist() == ["cat", "duplicate", "ann"]
    assert state.loc["b", ["label", "status"]].tolist() == ["dog", "duplicate"]  # relabel then duplicate
    assert state.loc["c", ["label", "status"]].tolist() == ["dog", "unreviewed"]  # undone
    assert state.loc["d", "status"] == "unreviewed"


ops_with_duplicates = st.lists(st.one_of(
    st.tuples(st.just("decide"), st.sampled_from(["s0", "s1", "s2", "other"]),
              st.sampled_from(["relabel", "flag", "ok", "duplicate"]), st.sampled_from(["x", "y", "z"]),
              st.sampled_from(["ann", "ben"])),
    st.tuples(st.just("undo"), st.integers(0, 10_000), st.sampled_from(["ann", "ben"]))), max_size=40)


@settings(max_examples=100, deadline=None)
@given(ops_with_duplicates)
def test_duplicates_follow_the_plain_replay_and_never_change_a_label(operations):
    decisions = synthetic_log(operations)
    state = log.derive_state(decisions, PROPERTY_SAMPLES)
    assert as_dict(state) == replay(decisions, PROPERTY_SAMPLES)
    without = decisions[(decisions["kind"] != "duplicate").to_numpy()]  # undos of them then point nowhere
    assert state["label"].tolist() == log.derive_state(without, PROPERTY_SAMPLES)["label"].tolist()


def test_per_reviewer_counts_duplicates():
    decisions = frame([(1, "a", "duplicate", None, "ann", None), (2, "b", "duplicate", None, "ann", None),
                       (3, "b", "undo", None, "ann", 2), (4, "c", "ok", None, "bob", None)])
    summary = log.reviewer_summary(decisions).set_index("reviewer")
    assert "duplicate" in summary.columns
    assert summary.loc["ann", ["decisions", "duplicate", "undo", "effective"]].tolist() == [3, 2, 1, 1]
    assert summary.loc["bob", ["duplicate", "ok"]].tolist() == [0, 1]


def test_keep_against_drop_is_a_conflict_and_a_duplicate_is_no_vote():
    decisions = frame([(1, "a", "ok", None, "ann", None), (2, "a", "duplicate", None, "bob", None),
                       (3, "b", "duplicate", None, "ann", None), (4, "b", "duplicate", None, "bob", None),
                       (5, "c", "relabel", "cat", "ann", None), (6, "c", "duplicate", None, "bob", None)])
    samples = SAMPLES[["sample_id", "label"]]
    conflicts = log.find_conflicts(decisions, samples).set_index("sample_id")
    assert sorted(conflicts.index) == ["a", "c"]
    assert conflicts.loc["a", "verdicts"] == {"ann": "cat", "bob": log.DUPLICATE_VERDICT}
    final = log.final_labels(decisions, samples, "majority").set_index("sample_id")
    assert final.loc["b", ["label", "basis", "conflict"]].tolist() == ["cat", "duplicate", False]
    assert final.loc["c", ["label", "basis"]].tolist() == ["cat", "majority"]  # the duplicate is no vote
    assert final.loc["c", "votes"] == {"cat": 1}
    only_dup = log.final_labels(frame([(1, "a", "duplicate", None, "ann", None),
                                       (2, "a", "duplicate", None, "bob", None)]), samples, "majority")
    assert only_dup.set_index("sample_id").loc["a", ["label", "changed", "basis"]].tolist() == \
        ["cat", False, "duplicate"]
    mixed = frame([(1, "a", "duplicate", None, "ann", None), (2, "a", "flag", None, "bob", None)])
    assert log.final_labels(mixed, samples, "majority").set_index("sample_id").loc["a", "basis"] == "flagged"
    state = log.final_state(decisions, samples, "majority").set_index("sample_id")
    assert state.loc["b", "status"] == "duplicate"


# -- the store, on SQLite and PostgreSQL ---------------------------------------------------------

def test_the_store_records_duplicates_and_undoes_them(store):  # noqa: F811
    ids = store.decide(["b", "c"], "duplicate", reviewer="ann")
    state = store.current_state(SAMPLES[["sample_id", "label"]]).set_index("sample_id")
    assert state["status"].tolist() == ["unreviewed", "duplicate", "duplicate", "unreviewed"]
    assert state["label"].tolist() == ["cat", "cat", "dog", "dog"]
    store.undo(ids[1], reviewer="ann")
    assert store.current_state(SAMPLES[["sample_id", "label"]])["status"].tolist()[2] == "unreviewed"
    assert store.per_reviewer().set_index("reviewer").loc["ann", "duplicate"] == 2
    with pytest.raises(ValueError, match="only a relabel carries a label"):
        store.decide(["a"], "duplicate", label="dog", reviewer="ann")


def test_the_database_itself_accepts_the_kind(store):  # noqa: F811
    with store.engine.begin() as conn:  # another writer than mlfix: the CHECK must allow it
        conn.execute(schema.decisions_table.insert().values(client_id="x", sample_id="a", kind="duplicate",
                                                            reviewer="ann", created_at=T0))
        with pytest.raises(sa.exc.IntegrityError):
            with conn.begin_nested():
                conn.execute(schema.decisions_table.insert().values(client_id="y", sample_id="a", kind="dupe",
                                                                    reviewer="ann", created_at=T0))
    assert store.decisions()["kind"].tolist() == ["duplicate"]


# -- the grid's actions ---------------------------------------------------------------------------

def test_the_action_parser_accepts_duplicate():
    session, actions, errors = parse_batch({"session": "s", "actions": [
        {"seq": 1, "client_id": "c1", "kind": "duplicate", "ids": ["b", "c"]}]})
    assert errors == [] and [(a.kind, a.sample_ids, a.label) for a in actions] == [("duplicate", ("b", "c"), None)]
    result = BatchApplier().apply({"session": "s", "actions": [
        {"seq": 1, "client_id": "c1", "kind": "duplicate", "ids": ["b"]}]}, store=None, labels=["cat"], reviewer="ann")
    assert [(r["kind"], r["sample_id"], r["client_id"]) for r in result.records] == [("duplicate", "b", "c1:b")]


# -- exports --------------------------------------------------------------------------------------

def test_exports_say_duplicate_and_can_drop_them(tmp_path):
    with ReviewStore.for_project(tmp_path) as s:
        s.decide(["b", "d"], "duplicate", reviewer="ann")
        s.decide(["c"], "relabel", "cat", reviewer="ann")
        state = s.current_state(SAMPLES[["sample_id", "label"]])
    table = export.export_table(SAMPLES, state)
    assert table["status"].tolist() == ["unreviewed", "duplicate", "relabeled", "duplicate"]
    assert table["changed"].tolist() == [False, False, True, False]
    kept = export.export_table(SAMPLES, state, drop_duplicates=True)
    assert kept["sample_id"].tolist() == ["a", "c"] and list(kept.columns) == list(table.columns)
    csv = export.export_bytes(table, "csv", drop_duplicates=True).decode().splitlines()
    assert [line.split(",")[0] for line in csv[1:]] == ["a", "c"]
    assert len(export.export_bytes(table, "csv").decode().splitlines()) == 5  # the default keeps them
    doc = json.loads(export.export_bytes(table, "json", drop_duplicates=True))
    assert [r["sample_id"] for r in doc["samples"]] == ["a", "c"]
    coco = json.loads(export.export_bytes(table, "coco", source={"coco": None}, drop_duplicates=True))
    assert [i["file_name"] for i in coco["images"]] == ["a.png", "c.png"]


def test_a_coco_source_file_loses_the_annotations_of_dropped_duplicates():
    source = {"images": [{"id": 1, "file_name": "x.jpg"}], "categories": [{"id": 1, "name": "cat"}],
              "annotations": [{"id": 7, "image_id": 1, "category_id": 1}, {"id": 8, "image_id": 1, "category_id": 1}]}
    table = pd.DataFrame({"sample_id": ["x.jpg#7", "x.jpg#8"], "corrected_label": ["cat", "cat"]})
    out = json.loads(export.to_coco(source, table, dropped=["x.jpg#8"]))
    assert [a["id"] for a in out["annotations"]] == [7]
    assert [a["id"] for a in json.loads(export.to_coco(source, table))["annotations"]] == [7, 8]


def test_mlfix_export_drop_duplicates(tmp_path, capsys):
    from mlfix.cli import main
    from mlfix.project import Project
    from tests.conftest import write_image_folder

    project = Project.create(tmp_path / "project", write_image_folder(tmp_path / "images", per_class=2))
    ids = project.samples["sample_id"].astype(str).tolist()
    project.reviews.decide(ids[1:3], "duplicate", reviewer="ann")
    out = tmp_path / "labels.csv"
    assert main(["export", "--project", str(project.dir), "-o", str(out), "--drop-duplicates"]) == 0
    assert pd.read_csv(out)["sample_id"].tolist() == [ids[0], *ids[3:]]
    assert "2 duplicates left out" in capsys.readouterr().out
    assert main(["export", "--project", str(project.dir), "-o", str(out)]) == 0
    assert pd.read_csv(out)["status"].tolist()[1:3] == ["duplicate", "duplicate"]


# -- migration of a table made by an older mlfix -------------------------------------------------

def old_table(metadata: sa.MetaData) -> sa.Table:
    """The decisions table as mlfix made it before the duplicate kind (kind String(8), four kinds)."""
    table = sa.Table(
        "decisions", metadata,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("client_id", sa.String(200), nullable=False, unique=True),
        sa.Column("sample_id", sa.Text, nullable=False, index=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("label", sa.Text, nullable=True),
        sa.Column("reviewer", sa.String(200), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("undoes", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), sa.ForeignKey("decisions.id"),
                  nullable=True),
        sa.Column("note", sa.Text, nullable=True),
        sa.Column("view", sa.Text, nullable=True),
        sa.CheckConstraint("kind IN ('relabel', 'flag', 'ok', 'undo')", name="decisions_kind"),
        sa.CheckConstraint("(kind = 'relabel') = (label IS NOT NULL)", name="decisions_label"),
        sa.CheckConstraint("(kind = 'undo') = (undoes IS NOT NULL)", name="decisions_undoes"),
        sa.CheckConstraint("length(reviewer) > 0", name="decisions_reviewer"),
        sqlite_autoincrement=True,
    )
    for dialect, statements in schema._APPEND_ONLY_DDL.items():
        for statement in statements:
            event.listen(table, "after_create", sa.DDL(statement).execute_if(dialect=dialect))
    return table


OLD_ROWS = [(1, "a", "relabel", "dog", "ann", None), (2, "b", "ok", None, "bob", None),
            (3, "a", "undo", None, "bob", 1), (4, "c", "flag", None, "ann", None),
            (7, "d", "relabel", "cat", "ann", None)]


def make_old_database(url: str) -> pd.DataFrame:
    """An old-schema table with rows (ids with a gap, an undo), an index added by hand; its log."""
    engine = sa.create_engine(url)
    metadata = sa.MetaData()
    table = old_table(metadata)
    with engine.begin() as conn:
        metadata.create_all(conn)
        conn.execute(table.insert(), [{"id": i, "client_id": f"c{i}", "sample_id": s, "kind": k, "label": lab,
                                       "reviewer": who, "created_at": T0 + dt.timedelta(seconds=i), "undoes": u,
                                       "note": "n" if i == 2 else None, "view": "v" if i == 4 else None}
                                      for i, s, k, lab, who, u in OLD_ROWS])
        conn.exec_driver_sql("CREATE INDEX by_reviewer ON decisions (reviewer)")
        with pytest.raises(sa.exc.IntegrityError):  # the old table refuses the new kind
            with conn.begin_nested():
                conn.execute(table.insert().values(client_id="x", sample_id="a", kind="duplicat", reviewer="ann",
                                                   created_at=T0))
        if engine.dialect.name == "sqlite":  # a retried insert consumed ids up to 9
            conn.exec_driver_sql("UPDATE sqlite_sequence SET seq = 9 WHERE name = 'decisions'")
        else:
            conn.exec_driver_sql("SELECT setval(pg_get_serial_sequence('decisions', 'id'), 9)")
        before = schema.log_frame(conn.execute(sa.select(*[table.c[c] for c in log.DECISION_COLUMNS])
                                               .order_by(table.c.id)))
    engine.dispose()
    return before


def index_names(store: ReviewStore) -> set[str]:
    return {i["name"] for i in sa.inspect(store.engine).get_indexes("decisions")}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_old_table_is_migrated_in_place_without_losing_a_row(backend, tmp_path, request):
    url = sqlite_url(tmp_path / "reviews.db") if backend == "sqlite" else \
        request.getfixturevalue("postgres_server").new_schema()
    before = make_old_database(url)
    with ReviewStore(url) as migrated:
        after = migrated.decisions()
        pd.testing.assert_frame_equal(after, before)
        [new_id] = migrated.decide(["b"], "duplicate", reviewer="cy")
        assert new_id == 10  # ids are never reused: the counter survived
        assert {"by_reviewer", "ix_decisions_sample_id"} <= index_names(migrated)
        for statement in ("UPDATE decisions SET label = 'cow'", "DELETE FROM decisions"):
            with pytest.raises(sa.exc.DBAPIError, match="append-only"):
                with migrated.engine.begin() as conn:
                    conn.exec_driver_sql(statement)
        with pytest.raises(sa.exc.IntegrityError):  # the self-reference of undo still holds
            with migrated.engine.begin() as conn:
                conn.execute(schema.decisions_table.insert().values(client_id="z", sample_id="a", kind="undo",
                                                                    undoes=999, reviewer="ann", created_at=T0))
        state = migrated.current_state(SAMPLES[["sample_id", "label"]]).set_index("sample_id")
        assert state["status"].tolist() == ["unreviewed", "duplicate", "flagged", "relabeled"]
    with ReviewStore(url) as again:  # opening it again changes nothing
        assert again.decisions()["id"].tolist() == [1, 2, 3, 4, 7, 10]
        with again.engine.begin() as conn:
            assert not schema.migrate(conn, again.dialect)
