"""The Duplicates page: groups in review order, keep one and mark the rest, undo, who may decide.

The groups come from the scores table; these tests write a scores.parquet with the duplicates
columns themselves (group_duplicates, reason_duplicates, score_duplicates, conflict_duplicates).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from mlfix.project import Project
from mlfix.review.store import ReviewStore
from mlfix.service import auth
from mlfix.ui import access, duplicates_view
from mlfix.ui import state as ui_state

PAGE = str(Path(__file__).resolve().parents[2] / "app_pages" / "duplicates.py")


@pytest.fixture
def project(tmp_path) -> Project:
    """12 images (4 colour classes x 3), not indexed, with its own decisions store."""
    from tests.conftest import write_image_folder

    return Project.create(tmp_path / "project", write_image_folder(tmp_path / "images", per_class=3))


def write_groups(project: Project, groups: dict[str, int], reasons: dict[str, str] | None = None) -> pd.DataFrame:
    """A scores.parquet whose duplicates columns put ``groups`` (sample id -> group) together."""
    ids = project.samples["sample_id"].astype(str).tolist()
    group = np.array([groups.get(s, -1) for s in ids], dtype=np.int64)
    table = pd.DataFrame({"sample_id": ids, "score": np.linspace(1, 0, len(ids)),
                          "score_duplicates": np.where(group >= 0, 0.99, 0.0),
                          "flag_duplicates": group >= 0, "group_duplicates": group,
                          "reason_duplicates": [(reasons or {}).get(s, "near copy" if g >= 0 else None)
                                                for s, g in zip(ids, group)],
                          "conflict_duplicates": False})
    table.to_parquet(Path(project.dir) / "scores.parquet")
    return table


def run_page(project: Project, **session) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state[ui_state.PROJECT_KEY] = str(project.dir)
    at.session_state[access.REVIEWER_KEY] = "tester"
    for key, value in session.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def captions(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown]


def states(project: Project) -> pd.Series:
    with ReviewStore.for_project(project.dir) as store:
        return store.current_state(project.samples[["sample_id", "label"]]).set_index("sample_id")["status"]


# -- the groups, without Streamlit ---------------------------------------------------------------

def test_groups_come_conflict_first_then_across_splits_then_by_size():
    scores = pd.DataFrame({"sample_id": list("abcdefghij"), "group_duplicates": [0, 0, 0, 1, 1, 2, 2, 3, 3, -1],
                           "reason_duplicates": "r", "score_duplicates": [.9, 1, .95, 1, 1, 1, 1, 1, 1, 0]})
    samples = pd.DataFrame({"sample_id": list("abcdefghij"), "label": list("xxxxxyyyz") + [None],
                            "split": ["train"] * 5 + ["train", "test"] + ["train"] * 3})
    members = duplicates_view.group_members(scores, samples)
    assert members.groupby("rank")["group"].first().tolist() == [3, 2, 0, 1]
    by_rank = members.drop_duplicates("group").set_index("group")
    # group 3 (h: y, i: z) has two labels; group 2 spans train and test; then 0 (3 members) before 1 (2)
    assert by_rank.loc[3, ["conflict", "cross_split", "rank"]].tolist() == [True, False, 0]
    assert by_rank.loc[2, ["conflict", "cross_split", "rank"]].tolist() == [False, True, 1]
    assert by_rank.loc[0, ["rank", "size"]].tolist() == [2, 3] and by_rank.loc[1, "rank"] == 3
    assert members[members["group"] == 0]["sample_id"].tolist() == ["b", "c", "a"]  # closest copies first
    assert "j" not in set(members["sample_id"])  # in no group
    # the check's own conflict verdict counts too (e.g. labels it saw that the samples no longer show)
    scores["conflict_duplicates"] = [False] * 3 + [True] * 2 + [False] * 5
    again = duplicates_view.group_members(scores, samples).drop_duplicates("group").set_index("group")
    assert again.loc[1, "conflict"]
    assert again.sort_values("rank").index.tolist() == [1, 3, 2, 0]  # two conflicts of size 2: by group id


def test_groups_without_a_split_column_are_never_cross_split():
    scores = pd.DataFrame({"sample_id": ["a", "b"], "group_duplicates": [0, 0], "reason_duplicates": None,
                           "score_duplicates": [1.0, 1.0]})
    members = duplicates_view.group_members(scores, pd.DataFrame({"sample_id": ["a", "b"], "label": ["x", "x"]}))
    assert members[["conflict", "cross_split", "size"]].drop_duplicates().values.tolist() == [[False, False, 2]]


# -- the page ------------------------------------------------------------------------------------

def test_empty_states_say_what_to_do(project):
    at = run_page(project)
    assert [i.value for i in at.info] == [duplicates_view.NO_INDEX]
    pd.DataFrame({"sample_id": project.samples["sample_id"], "score": 0.0}).to_parquet(project.dir / "scores.parquet")
    assert [i.value for i in run_page(project).info] == [duplicates_view.OLD_SCORES]
    write_groups(project, {})
    assert [i.value for i in run_page(project).info] == [duplicates_view.NO_GROUPS]


def test_keep_marks_the_others_duplicate_in_the_store_and_undo_reverts_it(project):
    ids = project.samples["sample_id"].astype(str).tolist()
    labels = dict(zip(ids, project.samples["label"]))
    same = [s for s in ids if labels[s] == labels[ids[0]]]  # three copies, one label
    conflict = [ids[-1], ids[-4]]  # two images of two different classes
    assert labels[conflict[0]] != labels[conflict[1]]
    write_groups(project, {same[0]: 0, same[1]: 0, same[2]: 0, conflict[0]: 1, conflict[1]: 1},
                 reasons={conflict[0]: "[copy](https://evil.example) of x"})
    at = run_page(project)
    text = "\n".join(captions(at))
    assert "Group 1 of 2" in text and "**conflicting labels**" in text  # the conflicting group first
    shown = [b.label for b in at.button if b.label.startswith("Keep")]
    assert shown == ["Keep 1", "Keep 2"]
    assert "[copy](https" not in text and "\\[copy\\]" in text  # data strings are escaped
    first, second = [m for m in duplicates_view.group_members(pd.read_parquet(project.dir / "scores.parquet"),
                                                              project.samples).query("rank == 0")["sample_id"]]
    at.button(key="mlfix_dup_keep_1").click().run()
    assert not at.exception
    status = states(project)
    assert status[second] == "duplicate" and status[first] == "unreviewed"  # on disk
    assert (status.drop(second) == "unreviewed").all()
    assert "Group 2 of 2" in "\n".join(captions(at))  # moved on to the next group
    at.button(key="mlfix_dup_undo").click().run()
    assert not at.exception
    assert (states(project) == "unreviewed").all()
    assert "Group 1 of 2" in "\n".join(captions(at))  # back to the group undone
    # keep 2 then keep 1 in the same group: the first kept is reinstated, the second marked
    at.button(key="mlfix_dup_keep_2").click().run()
    at.button(key="mlfix_dup_prev").click().run()
    at.button(key="mlfix_dup_keep_1").click().run()
    status = states(project)
    assert status[first] == "unreviewed" and status[second] == "duplicate"


def test_a_viewer_without_the_right_to_decide_cannot_mark(project, monkeypatch):
    # No role is view-only today: sign in as a reviewer, then make "review" admin-only.
    monkeypatch.setenv("MLFIX_ADMIN_TOKEN", "admin-token-0123456789")
    monkeypatch.setenv("MLFIX_REVIEWER_TOKEN", "reviewer-token-0123456789")
    ids = project.samples["sample_id"].astype(str).tolist()
    write_groups(project, {ids[0]: 0, ids[1]: 0})
    at = run_page(project, **{access.IDENTITY_KEY: auth.Identity("vic", "reviewer", "token")})
    assert not at.button(key="mlfix_dup_keep_1").disabled  # a reviewer may decide
    monkeypatch.setitem(auth.ACTIONS, "review", frozenset({"admin"}))
    at.button(key="mlfix_dup_keep_1").click().run()  # a click from a page drawn before the right went
    assert not at.exception
    assert (states(project) == "unreviewed").all()  # nothing stored
    assert "not decide" in at.warning[0].value
    assert at.button(key="mlfix_dup_keep_1").disabled and "needs the reviewer role" in at.info[0].value


def test_a_group_partly_held_by_another_reviewer_cannot_be_decided(project, monkeypatch):
    from mlfix.review.claims import ClaimBook
    from mlfix.ui import team

    monkeypatch.setenv("MLFIX_CLAIMS", "1")
    ids = project.samples["sample_id"].astype(str).tolist()
    write_groups(project, {ids[0]: 0, ids[1]: 0, ids[2]: 0})
    with ReviewStore.for_project(project.dir) as store:
        assert ClaimBook.for_store(store).claim_rows(team.CLAIM_UNIT, [1], "olga") == {}
    at = run_page(project)
    assert all(b.disabled for b in at.button if b.label.startswith("Keep"))
    assert "olga" in at.info[0].value  # who holds them
    with ReviewStore.for_project(project.dir) as store:
        ClaimBook.for_store(store).release(team.CLAIM_UNIT, "olga", force=True)
    at.run()
    assert not any(b.disabled for b in at.button if b.label.startswith("Keep"))
    with ReviewStore.for_project(project.dir) as store:  # now the members on screen are this reviewer's
        assert set(ClaimBook.for_store(store).active()["reviewer"]) == {"tester"}


def test_the_export_page_offers_to_leave_duplicates_out(project):
    from mlfix.review import classes
    from mlfix.ui import loaders

    ids = project.samples["sample_id"].astype(str).tolist()
    project.reviews.decide(ids[1:3], "duplicate", reviewer="ann")
    at = AppTest.from_file(str(Path(PAGE).with_name("export.py")), default_timeout=120)
    at.session_state[ui_state.PROJECT_KEY] = str(project.dir)
    at.run()
    at.checkbox(key="ex_drop_duplicates").check().run()
    assert not at.exception, [e.value for e in at.exception]
    key = (str(project.dir), loaders.project_stamp(project.dir) + (classes.version(project.reviews),),
           project.reviews.last_id())  # what the page asks for
    kept = loaders.export_bytes(*key, "csv", True).decode().splitlines()
    assert len(loaders.export_bytes(*key, "csv").decode().splitlines()) == len(ids) + 1
    assert [line.split(",")[0] for line in kept[1:]] == [ids[0], *ids[3:]]
