"""Clusters: the images grouped by cluster of the embedding, to name each group as a class in one step.

One row per cluster (largest first): a row of its most typical images, what its members are labelled
now, a class picker (an existing class, or type a new name) and **Name**, which stores one relabel
decision per member in the decisions store (the grid's store path; undo works per image in the
grid). **Review** opens the cluster in the Review grid, most typical first, so the odd ones out
gather at the end. Clusters come from :meth:`mlfix.project.Project.clusters` (cached on disk).

Runs inside ``app.py`` (st.navigation) and on its own (``streamlit run app_pages/clusters.py --
--project DIR``, and AppTest). Imports no torch.
"""

from __future__ import annotations

import math
import uuid

import pandas as pd
import streamlit as st

from mlfix.data import thumbnails
from mlfix.project import Project
from mlfix.service import auth
from mlfix.ui import access, state, text

PER_PAGE = 8  # clusters per page
EXAMPLES = 10  # thumbnails per cluster row
THUMB = 96
PAGE_KEY = "mlfix_clusters_page"
NAME_KEY = "mlfix_cluster_name_{}"
MESSAGE_KEY = "mlfix_clusters_message"
REVIEW_VIEW_KEY = "mlfix_review_view"  # the Review page's view picker
GOTO_KEY = "mlfix_clusters_goto"


@st.cache_data(show_spinner=False, max_entries=4)
def _clusters(project_dir: str, stamp: tuple) -> pd.DataFrame:
    return Project.open(project_dir).clusters()


def clusters(project: Project) -> pd.DataFrame:
    """The project's clusters (sample_id, cluster, similarity), read once per version of the index."""
    from mlfix.ui import loaders

    return _clusters(str(project.dir), loaders.stamp(project.dir, ("orders/orders.key.json", "clusters/clusters.key.json")))


def class_names(project: Project) -> list[str]:
    """The project's classes: the class list of the store when there is one, else the given labels."""
    classes = getattr(project, "classes", None)
    names = getattr(classes, "names", None)
    return list(names) if names is not None else list(project.labels)


def may_add_classes() -> bool:
    action = "manage_classes" if "manage_classes" in auth.ACTIONS else "create_project"
    return access.can(action)


def current_labels(project: Project) -> pd.Series:
    """The current label of every sample (given, or as reviewers relabeled it), by sample id."""
    table = project.corrected_labels()
    labels = table["corrected_label"].where(table["status"] != "flagged")
    return pd.Series(labels.to_numpy(dtype=object), index=table["sample_id"].to_numpy())


def summary(labels: pd.Series) -> str:
    """What a cluster's members are labelled now: ``all cat (100%)``, ``mostly cat (80%)`` (more than
    half), else how many carry the most common label (``3 labelled daisy (7%)``: "mostly" would be
    wrong), and how many have none.

    >>> summary(pd.Series(["cat", "cat", "cat", None])), summary(pd.Series([None, None]))
    ('mostly cat (75%), 1 unlabeled', 'unlabeled')
    >>> summary(pd.Series(["cat", "cat", "dog", None]))
    '2 labelled cat (50%), 1 unlabeled'
    """
    named = labels.dropna()
    if named.empty:
        return "unlabeled"
    top = named.value_counts()
    count, share = int(top.iloc[0]), f"{top.iloc[0] / len(labels):.0%}"
    text = (f"all {top.index[0]} ({share})" if count == len(labels) else
            f"mostly {top.index[0]} ({share})" if 2 * count > len(labels) else
            f"{count:,} labelled {top.index[0]} ({share})")
    missing = len(labels) - len(named)
    return text + (f", {missing:,} unlabeled" if missing else "")


NAMING_CLIENT = "cluster-"  # the client id prefix of the decisions that naming a cluster makes


def undecided(project: Project, ids: list[str]) -> list[str]:
    """The members of ``ids`` (in order) that naming a cluster may label: those without a decision in
    force, or whose decision came from naming a cluster (so that a misnamed cluster can be named
    again). A decision a person made one by one (often on the cluster's odd ones out) is kept, a flag,
    an ok or a duplicate included."""
    from mlfix.review.log import live_decisions

    log = project.reviews.decisions()
    live = live_decisions(log[log["sample_id"].isin(ids)])  # an undo names the sample of the row it undoes
    latest = live.drop_duplicates("sample_id", keep="last")
    by_hand = set(latest.loc[~latest["client_id"].fillna("").str.startswith(NAMING_CLIENT), "sample_id"])
    return [sample for sample in ids if sample not in by_hand]


def name_cluster(project: Project, cluster: int, ids: list[str], name: str, reviewer: str) -> str:
    """Label every member of ``cluster`` that no reviewer decided on yet as ``name`` (adding the class
    when it is new and allowed): one relabel decision per member, in one transaction. Members already
    decided keep their decision (the grid changes them one by one). Returns what happened, for the page."""
    from mlfix.review.classes import check_name

    name = check_name(name)
    classes = class_names(project)
    if name not in classes:
        if not may_add_classes():
            return f"'{text.plain(name)}' is not a class yet, and only an admin adds classes: pick one of the list."
        project.classes.add(name, reviewer=reviewer)
        classes = classes + [name]
    todo = undecided(project, ids)
    if todo:
        project.reviews.decide(todo, "relabel", name, reviewer=reviewer, labels=classes,
                               client_id=f"{NAMING_CLIENT}{cluster}-{uuid.uuid4().hex}", view=f"cluster {cluster}")
    kept = len(ids) - len(todo)
    return (f"Cluster {cluster}: {len(todo)} images labelled **{text.plain(name)}**." +
            (f" {kept} labelled one by one by a reviewer kept that label (**Review** shows them)." if kept else ""))


def _on_name(project: Project, cluster: int, ids: list[str]) -> None:
    name = st.session_state.get(NAME_KEY.format(cluster))
    if not name:
        st.session_state[MESSAGE_KEY] = ("warning", f"Cluster {cluster}: pick a class or type a new name first.")
        return
    try:
        done = name_cluster(project, cluster, ids, str(name), access.reviewer())
    except Exception as err:  # a refused name, the store down: say why, keep the page
        st.session_state[MESSAGE_KEY] = ("error", f"Cluster {cluster} was not labelled: {text.plain(err)}")
        return
    st.session_state[MESSAGE_KEY] = ("success", done)
    st.session_state.pop(NAME_KEY.format(cluster), None)


def _review(project: Project, cluster: int, ids: list[str]) -> None:
    """Open the cluster in the Review grid (a published view), most typical first."""
    name = f"cluster {cluster}"
    project.publish_view(name, ids, note="a cluster of the embedding, most typical first: the odd ones "
                                         "out are at the end")
    st.session_state[REVIEW_VIEW_KEY] = name
    st.session_state[GOTO_KEY] = name  # a callback cannot switch pages: the script run does


def _go_to_review() -> None:
    """After **Review**: on to the Review page (with the view picked), or, run alone, say where it is."""
    name = st.session_state.pop(GOTO_KEY, None)
    if name is None:
        return
    try:
        st.switch_page("app_pages/review.py")
    except st.errors.StreamlitAPIException:  # run alone (no navigation): no page to switch to
        st.session_state[MESSAGE_KEY] = ("info", f"Published the view **{name}**: open it on the Review page.")


def _row(project: Project, cluster: int, members: pd.DataFrame, labels: pd.Series, classes: list[str]) -> None:
    ids = members["sample_id"].astype(str).tolist()
    with st.container(border=True):
        head, pick, name_col, review_col = st.columns([3, 2, 0.7, 0.7], vertical_alignment="bottom")
        head.markdown(f"**Cluster {cluster}** · {len(ids):,} images · {text.plain(summary(labels.reindex(ids)))}")
        pick.selectbox("Class", classes, index=None, key=NAME_KEY.format(cluster), accept_new_options=may_add_classes(),
                       placeholder="pick a class" + (" or type a new one" if may_add_classes() else ""),
                       label_visibility="collapsed")
        name_col.button("Name", key=f"mlfix_cluster_apply_{cluster}", type="primary", width="stretch",
                        on_click=_on_name, args=(project, cluster, ids),
                        help="Label the images of this cluster with this class (one decision per image); an image a "
                             "reviewer decided on one by one keeps that decision.")
        review_col.button("Review", key=f"mlfix_cluster_review_{cluster}", width="stretch",
                          on_click=_review, args=(project, cluster, ids),
                          help="Open this cluster in the Review grid, most typical first: the odd ones out "
                               "come last.")
        shown = ids[:EXAMPLES]
        paths = thumbnails.for_project(project, THUMB * 2).ensure_many(shown)
        st.image([str(p) for p in paths], width=THUMB,
                 caption=[text.plain(labels.get(s)) if not pd.isna(labels.get(s)) else "·" for s in shown])


def main() -> None:
    project = state.require_project()
    access.require("review")
    _go_to_review()
    st.title("Clusters")
    if not project.is_indexed:
        st.info("This project is not indexed yet: build the index on the **Training** page first.")
        st.stop()
    with st.spinner("Grouping the images…"):
        table = clusters(project)
    message = st.session_state.pop(MESSAGE_KEY, None)
    if message:
        getattr(st, message[0])(message[1])
    count = int(table["cluster"].max()) + 1 if len(table) else 0
    st.caption(f"{len(table):,} images in {count} clusters of similar images, largest first. Name a cluster "
               "to label all its images at once; **Review** shows its members, the odd ones out last.")
    if not count:
        st.info("No readable images to group.")
        return
    pages = math.ceil(count / PER_PAGE)
    page = st.number_input("Page", 1, pages, key=PAGE_KEY, help=f"{PER_PAGE} clusters a page") - 1 if pages > 1 else 0
    labels, classes = current_labels(project), class_names(project)
    for cluster in range(page * PER_PAGE, min(count, (page + 1) * PER_PAGE)):
        _row(project, cluster, table[table["cluster"] == cluster], labels, classes)


if __name__ == "__main__":  # Streamlit runs a page as __main__; an import (a test) only defines it
    main()
