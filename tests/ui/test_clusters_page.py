"""The Clusters page through AppTest: one row per cluster; naming a cluster stores one decision per member."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

PAGE = str(Path(__file__).resolve().parents[2] / "app_pages" / "clusters.py")


def private_copy(project, tmp_path):
    """A copy of an indexed session project with its own decisions store (no scores, suggestions,
    clusters or views)."""
    from mlfix.project import Project

    skip = shutil.ignore_patterns("thumbs", "reviews.db*", "cells.npy", "progress", "clusters", "views",
                                  "scores*", "suggestions*")
    shutil.copytree(project.dir, tmp_path / "project", ignore=skip)
    return Project.open(tmp_path / "project")


def run_page(project_dir, at: AppTest | None = None, page: str = PAGE) -> AppTest:
    """Run ``page`` on a project as reviewer ``tester`` (``at``: run it again, after a click)."""
    if at is None:
        at = AppTest.from_file(page, default_timeout=120)
        at.session_state["mlfix_project_dir"] = str(project_dir)
        at.session_state["mlfix_reviewer"] = "tester"
    at.run()
    assert not at.exception, at.exception
    return at


def markdown(at: AppTest) -> list[str]:
    """The page's markdown texts (AppTest shows them with Markdown's escapes: removed here)."""
    return [m.value.replace("\\", "") for m in at.markdown]


def test_one_row_per_cluster_largest_first(demo_project, tmp_path):
    project = private_copy(demo_project, tmp_path)
    at = run_page(project.dir)
    table = project.clusters()
    sizes = table["cluster"].value_counts().sort_index().tolist()
    assert sizes == sorted(sizes, reverse=True)
    rows = [m for m in markdown(at) if m.startswith("**Cluster ")]
    assert len(rows) == min(8, len(sizes))
    assert rows[0].startswith(f"**Cluster 0** · {sizes[0]:,} images · ")
    assert len([b for b in at.button if b.label == "Name"]) == len(rows)


def test_naming_a_cluster_stores_one_relabel_per_member(demo_project, tmp_path):
    project = private_copy(demo_project, tmp_path)
    at = run_page(project.dir)
    members = project.clusters().query("cluster == 1")["sample_id"].tolist()
    label = project.labels[0]
    at.selectbox(key="mlfix_cluster_name_1").set_value(label)
    at.button(key="mlfix_cluster_apply_1").click()
    at = run_page(project.dir, at)
    log = project.decisions()
    assert sorted(log["sample_id"]) == sorted(members)  # one decision per member, nothing else
    assert set(log["kind"]) == {"relabel"} and set(log["label"]) == {label}
    assert set(log["reviewer"]) == {"tester"} and set(log["view"]) == {"cluster 1"}
    assert any(f"{len(members)} images labelled **{label}**" in s.value for s in at.success)
    state = project.corrected_labels().set_index("sample_id").loc[members]
    assert set(state["corrected_label"]) == {label}
    # the row now says what its members are labelled
    assert any(m.startswith(f"**Cluster 1** · {len(members)} images · all {label} (100%)") for m in markdown(at))


def test_naming_without_a_class_stores_nothing_and_says_so(demo_project, tmp_path):
    project = private_copy(demo_project, tmp_path)
    at = run_page(project.dir)
    at.button(key="mlfix_cluster_apply_0").click()
    at = run_page(project.dir, at)
    assert project.decisions().empty
    assert any("pick a class or type a new name first" in w.value for w in at.warning)


def test_a_new_name_on_an_unlabeled_project_adds_the_class(unlabeled_project, tmp_path):
    """Typing a new class in the picker (``accept_new_options``, which AppTest cannot type into) goes
    through ``name_cluster``: the class is added to the store's class list, then every member labelled."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("clusters_page", PAGE)
    project = private_copy(unlabeled_project, tmp_path)
    at = run_page(project.dir)  # computes the clusters, and shows an unlabeled project's rows
    assert any(m.endswith("images · unlabeled") for m in markdown(at))
    page = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(page)  # imported, not run: defines its functions only
    members = project.clusters().query("cluster == 0")["sample_id"].tolist()
    text = page.name_cluster(project, 0, members, " circles ", "tester")
    assert text == f"Cluster 0: {len(members)} images labelled **circles**."
    assert project.classes.names == ["circles"]
    log = project.decisions()
    assert sorted(log["sample_id"]) == sorted(members) and set(log["label"]) == {"circles"}


def test_review_publishes_the_cluster_as_a_view_most_typical_first(demo_project, tmp_path):
    project = private_copy(demo_project, tmp_path)
    at = run_page(project.dir)
    at.button(key="mlfix_cluster_review_2").click()
    at = run_page(project.dir, at)
    view = project.views()["cluster 2"]
    assert list(view["sample_ids"]) == project.clusters().query("cluster == 2")["sample_id"].tolist()
    assert at.session_state["mlfix_review_view"] == "cluster 2"


def test_the_app_lists_the_page_and_review_opens_the_cluster_in_the_grid(demo_project, tmp_path):
    project = private_copy(demo_project, tmp_path)
    app = str(Path(PAGE).parents[1] / "app.py")
    at = AppTest.from_file(app, default_timeout=120)
    at.session_state["mlfix_project_dir"] = str(project.dir)
    at.session_state["mlfix_reviewer"] = "tester"
    at.switch_page("app_pages/clusters.py")
    at.run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Clusters"]
    at.button(key="mlfix_cluster_review_0").click()
    at.run()
    assert not at.exception, at.exception
    view = at.selectbox(key="mlfix_review_view")  # now on the Review page, the cluster's view picked
    assert view.value == "cluster 0"
    import json

    [grid] = at.get("bidi_component")
    ids = [item["id"] for item in json.loads(grid.proto.json)["items"]]
    assert ids == project.clusters().query("cluster == 0")["sample_id"].tolist()[:len(ids)]


def test_naming_a_cluster_keeps_what_a_reviewer_already_decided(demo_project, tmp_path):
    """A member a person labelled (an odd one out, fixed in the grid) is not overwritten by the name."""
    project = private_copy(demo_project, tmp_path)
    members = project.clusters().query("cluster == 1")["sample_id"].tolist()
    name, other = project.labels[0], project.labels[1]
    project.reviews.decide([members[-1]], "relabel", other, reviewer="ann", labels=project.labels)
    at = run_page(project.dir)
    at.selectbox(key="mlfix_cluster_name_1").set_value(name)
    at.button(key="mlfix_cluster_apply_1").click()
    at = run_page(project.dir, at)
    state = project.corrected_labels().set_index("sample_id").loc[members, "corrected_label"]
    assert state[members[-1]] == other  # ann's decision stands
    assert set(state[members[:-1]]) == {name}
    assert sorted(project.decisions().query("reviewer == 'tester'")["sample_id"]) == sorted(members[:-1])
    assert any(s.value.replace("\\", "") == f"Cluster 1: {len(members) - 1} images labelled **{name}**. 1 labelled "
               "one by one by a reviewer kept that label (**Review** shows them)." for s in at.success)
    # a misnamed cluster can be named again: the naming's own decisions give way, ann's still stands
    at.selectbox(key="mlfix_cluster_name_1").set_value(project.labels[2])
    at.button(key="mlfix_cluster_apply_1").click()
    run_page(project.dir, at)
    state = project.corrected_labels().set_index("sample_id").loc[members, "corrected_label"]
    assert state[members[-1]] == other and set(state[members[:-1]]) == {project.labels[2]}


def test_the_summary_says_mostly_only_for_more_than_half():
    import importlib.util

    spec = importlib.util.spec_from_file_location("clusters_page", PAGE)
    page = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(page)
    import pandas as pd

    labels = pd.Series(["daisy"] * 3 + [None] * 38)
    assert page.summary(labels) == "3 labelled daisy (7%), 38 unlabeled"  # not "mostly daisy (7%)"
    assert page.summary(pd.Series(["cat"] * 3 + ["dog"])) == "mostly cat (75%)"
    assert page.summary(pd.Series(["cat", "dog"])) == "1 labelled cat (50%)"
    assert page.summary(pd.Series(["cat"] * 2)) == "all cat (100%)"
