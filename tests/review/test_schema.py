"""The decisions table: the database refuses UPDATE and DELETE, and no mlfix code issues them; the
rules a row must follow say which decision is wrong and how to fix it."""

from __future__ import annotations

import inspect

import pytest
import sqlalchemy as sa

from mlfix.review import schema
from mlfix.review import store as reviews
from mlfix.review.schema import validate_decision
from tests.pg import postgres_server  # noqa: F401  (session fixture: a throwaway PostgreSQL server)
from tests.review.test_store import store, url  # noqa: F401  (fixtures: a new store on SQLite and on PostgreSQL)


def test_database_refuses_update_and_delete(store):  # noqa: F811
    store.decide("a", "relabel", "dog", reviewer="al")
    for statement in ("UPDATE decisions SET label = 'cow'", "DELETE FROM decisions"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            with store.engine.begin() as conn:
                conn.exec_driver_sql(statement)
    assert store.decisions()["label"].tolist() == ["dog"]


@pytest.mark.parametrize("module", [reviews, schema])
def test_code_has_no_update_or_delete_of_decisions(module):
    source = inspect.getsource(module)
    for forbidden in ("sa.update(", "sa.delete(", "decisions_table.update", "decisions_table.delete",
                      "UPDATE decisions", "DELETE FROM"):
        assert forbidden not in source


def test_a_valid_decision_becomes_a_complete_row_and_an_invalid_one_names_its_place():
    row = validate_decision({"sample_id": "a", "kind": "relabel", "label": "dog", "reviewer": "al"}, None, 0)
    assert row["client_id"] and row["undoes"] is None and row["note"] is None
    assert validate_decision({"kind": "undo", "undoes": 3, "reviewer": "al"}, None, 0)["sample_id"] is None
    with pytest.raises(ValueError, match="decision 4: label 'cow' is not one of"):
        validate_decision({"sample_id": "a", "kind": "relabel", "label": "cow", "reviewer": "al"},
                          frozenset({"cat", "dog"}), 4)
