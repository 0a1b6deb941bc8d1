"""bench.app_load_ws against a real server: 2 websocket sessions x 2 decisions on the demo project.

The client speaks Streamlit's websocket protocol itself (no browser); every decision it sends as the
grid's trigger must be in the store exactly once, and every session must have had its page.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import app_load_ws
from mlfix.project import Project
from tests.ui.test_browser_review import copy_project

pytestmark = pytest.mark.slow


def test_two_sessions_store_each_decision_exactly_once(demo_project, tmp_path):
    project = copy_project(Path(demo_project.dir), tmp_path / "project")
    results, store = app_load_ws.run(project, sessions=2, decisions=2)

    assert [r.get("error") for r in results] == [None, None]
    assert all(r["page"] is not None and r["grid"] is not None for r in results)
    assert [len(r["decide"]) for r in results] == [2, 2]  # each acknowledged in the grid's data
    sent = [client_id for r in results for client_id in r["sent"]]
    assert len(set(sent)) == 4
    stored = Project.open(project).reviews.decisions()
    mine = stored[stored["client_id"].isin(sent)]
    assert sorted(mine["client_id"]) == sorted(sent)  # all four, none twice
    assert set(mine["kind"]) == {"ok"} and set(mine["reviewer"]) == {"bench"}
    assert store == {"sent": 4, "stored": 4, "lost": 0, "duplicated": 0}


def test_a_hostile_session_stores_only_what_the_rules_allow_and_the_honest_lose_nothing(demo_project, tmp_path):
    from bench.app_load_hostile import REVIEWER
    from mlfix import limits

    project = copy_project(Path(demo_project.dir), tmp_path / "project")
    variants = app_load_ws.run_variants(project, sessions=2, decisions=2)

    for variant in ("baseline", "hostile"):
        results, store, _ = variants[variant]
        assert [r.get("error") for r in results] == [None, None], variant
        assert [len(r["decide"]) for r in results] == [2, 2], variant  # every decision acknowledged
        assert store == {"sent": 4, "stored": 4, "lost": 0, "duplicated": 0}, variant
    seen = variants["hostile"][2]
    assert seen["error"] is None
    assert seen["forbidden_stored"] == 0 and seen["unexpected"] == 0 and seen["duplicated"] == 0
    rows = seen["stored_rows"]
    for attack in ("oversized_ids", "off_page", "unknown", "bad_label", "other_reviewer", "malformed"):
        assert rows.get(attack, 0) == 0, attack
        assert seen["messages"].get(attack) or attack == "malformed", attack  # each refusal said why
    per_batch = limits.current().actions_per_batch
    assert rows["oversized_batch"] == per_batch  # the first actions_per_batch, each once; the rest deferred
    assert any("at most %d are handled" % per_batch in m for m in seen["messages"]["oversized_batch"])
    assert any(m.startswith("Slow down") for m in seen["messages"]["flood"])
    assert 0 < seen["mallory_rows"] <= seen["rate_cap"]
    stored = Project.open(project).reviews.decisions()
    assert set(stored.loc[stored["reviewer"] == REVIEWER, "kind"]) == {"ok"}
