"""A migration of an older decisions table that fails half-way leaves the old table as it was."""

from __future__ import annotations

import sqlite3

import pandas as pd
import pytest

from mlfix.review import schema
from mlfix.review.store import ReviewStore, sqlite_url
from tests.review.test_duplicate_kind import make_old_database


def test_a_crash_mid_migration_leaves_the_old_table_intact(tmp_path, monkeypatch):
    url = sqlite_url(tmp_path / "reviews.db")
    before = make_old_database(url)
    real_create = schema.decisions_table.create

    def create_then_crash(conn, **kw):  # the old table is renamed and the new one made: then a crash
        real_create(conn, **kw)
        raise RuntimeError("power cut")

    monkeypatch.setattr(schema.decisions_table, "create", create_then_crash)
    with pytest.raises(RuntimeError, match="power cut"):
        ReviewStore(url)
    with sqlite3.connect(tmp_path / "reviews.db") as raw:  # as an older mlfix would see it
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        table_sql = raw.execute("SELECT sql FROM sqlite_master WHERE name = 'decisions'").fetchone()[0]
        triggers = raw.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'").fetchone()[0]
        ids = [r[0] for r in raw.execute("SELECT id FROM decisions ORDER BY id")]
    assert schema._OLD_TABLE not in tables and "'duplicate'" not in table_sql
    assert triggers == 2 and ids == before["id"].tolist()
    monkeypatch.undo()
    with ReviewStore(url) as store:  # the next open migrates it whole
        pd.testing.assert_frame_equal(store.decisions(), before)
        assert store.decide(["b"], "duplicate", reviewer="cy") == [10]
