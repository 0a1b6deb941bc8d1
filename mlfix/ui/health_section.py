"""The Dataset page's splits and health sections: images per split, leaks between splits, and the
health summary (per check: how many samples it flags, at which threshold) with examples.

The tables come from files the project already keeps, never from a new pass over the images:
``samples.parquet`` (the ``split`` column), the scores table (``scores.parquet``: ``flag_leak``,
``group_duplicates``, ``score_<check>``, ``flag_<check>``, ``reason_<check>``) and the health summary
(``health.parquet``, :meth:`mlfix.project.Project.health`). Each read is cached (``st.cache_data``)
keyed on the project folder and a stamp of those files, as :mod:`mlfix.ui.loaders` does. The pure
parts (:func:`split_counts_frame`, :func:`leak_groups`, :func:`check_examples`) take tables and are
tested without Streamlit.

Which summary is shown: the stored one while it is newer than the index; else, for a project without
two classes, :meth:`~mlfix.project.Project.health` runs here (the health checks alone: duplicates,
leaks, outliers, image quality, no probe); for a labelled project the summary comes with the scores,
which run in the background (:mod:`mlfix.ui.scores_job`), never inside the page.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import plotly.express as px
import streamlit as st

from mlfix.ui import loaders, scores_job, text

if TYPE_CHECKING:
    from mlfix.project import Project

EXAMPLES = 6  # thumbnails per check
LEAK_GROUPS = 4  # example groups of copies that span splits
MEMBERS = 6  # thumbnails per example group
THUMB = 96
NO_LABEL = "(no label)"
SCORE_FILES = ("samples.parquet", "scores.parquet", "health_samples.parquet")
HEALTH_FILES = ("health.parquet", "health.key.json", "orders/orders.key.json", "features/quality.key.json")


# ------------------------------------------------------------------------------------------ pure


def split_counts_frame(samples: pd.DataFrame) -> pd.DataFrame:
    """``split, label, count``: images per split and class (sorted), empty when no sample has a split.

    >>> samples = pd.DataFrame({"label": ["cat", "cat", None, "dog"],
    ...                         "split": pd.array(["train", "val", "train", None], dtype="string")})
    >>> split_counts_frame(samples).values.tolist()
    [['train', '(no label)', 1], ['train', 'cat', 1], ['val', 'cat', 1]]
    """
    if "split" not in samples.columns:
        return pd.DataFrame({"split": [], "label": [], "count": []}).astype({"count": "int64"})
    has = samples["split"].notna().to_numpy()
    labels = samples["label"].astype(object).where(samples["label"].notna(), NO_LABEL)
    frame = pd.DataFrame({"split": samples["split"].astype(object)[has].astype(str), "label": labels[has].astype(str)})
    counts = frame.value_counts().rename("count").reset_index()
    return counts.sort_values(["split", "label"], ignore_index=True).astype({"count": "int64"})


def leak_groups(table: pd.DataFrame | None, samples: pd.DataFrame) -> pd.DataFrame | None:
    """The members of the groups of copies that span splits: ``group, sample_id, label, split, reason``,
    by group (the largest first), or None when the leak check has not run (no ``flag_leak`` and
    ``group_duplicates`` columns in the scores ``table``).

    >>> table = pd.DataFrame({"sample_id": ["a", "b", "c"], "flag_leak": [True, False, True],
    ...                       "group_duplicates": [0, -1, 0], "reason_leak": ["in train, val", None, "x"]})
    >>> samples = pd.DataFrame({"sample_id": ["c", "a", "b"], "label": ["cat", "cat", "dog"],
    ...                         "split": ["val", "train", "train"]})
    >>> leak_groups(table, samples)[["group", "sample_id", "split"]].values.tolist()
    [[0, 'a', 'train'], [0, 'c', 'val']]
    """
    if table is None or not {"flag_leak", "group_duplicates"} <= set(table.columns):
        return None
    leaked = table[table["flag_leak"].fillna(False).astype(bool).to_numpy()]
    rows = pd.Index(samples["sample_id"].astype(str)).get_indexer(leaked["sample_id"].astype(str))
    known = rows >= 0

    def column(name: str) -> pd.Series:  # object: None stays None (pandas 3 infers str with NaN)
        if name not in samples.columns:
            return pd.Series([None] * int(known.sum()), dtype=object)
        values = samples[name].astype(object).to_numpy()[rows[known]]
        return pd.Series([None if pd.isna(v) else str(v) for v in values], dtype=object)

    out = pd.DataFrame({"group": leaked["group_duplicates"].to_numpy()[known].astype("int64"),
                        "sample_id": leaked["sample_id"].astype(str).to_numpy()[known],
                        "label": column("label"), "split": column("split"),
                        "reason": _objects(leaked["reason_leak"])[known] if "reason_leak" in leaked else None})
    return out.sort_values(["group", "split", "sample_id"], ignore_index=True, kind="stable")


def across_splits(members: pd.DataFrame, limit: int) -> pd.DataFrame:
    """Up to ``limit`` rows taking turns between splits (so a big group shows both sides of its leak).

    >>> members = pd.DataFrame({"split": ["train", "train", "train", "val"], "sample_id": list("abcd")})
    >>> across_splits(members, 2)["sample_id"].tolist()
    ['a', 'd']
    """
    turn = members.groupby(members["split"].astype(object).fillna(""), sort=False).cumcount().to_numpy()
    return members.iloc[pd.Series(turn).sort_values(kind="stable").index[:limit]]


def check_examples(table: pd.DataFrame | None, check: str, limit: int = EXAMPLES) -> pd.DataFrame:
    """Up to ``limit`` flagged samples of ``check``, worst first: ``sample_id, score, reason`` (empty
    when the table has no ``score_<check>``; without ``flag_<check>`` the top scores are taken).

    >>> table = pd.DataFrame({"sample_id": ["a", "b", "c"], "score_dark": [0.2, 0.9, 0.7],
    ...                       "flag_dark": [False, True, True], "reason_dark": [None, "black", "dim"]})
    >>> check_examples(table, "dark").values.tolist()
    [['b', 0.9, 'black'], ['c', 0.7, 'dim']]
    """
    score = f"score_{check}"
    if table is None or score not in table.columns:
        return pd.DataFrame({"sample_id": [], "score": [], "reason": []})
    chosen = table
    if f"flag_{check}" in table.columns:
        chosen = table[table[f"flag_{check}"].fillna(False).astype(bool).to_numpy()]
    chosen = chosen[chosen[score].notna().to_numpy()].sort_values(score, ascending=False, kind="stable").head(limit)
    reason = chosen[f"reason_{check}"] if f"reason_{check}" in chosen.columns else pd.Series(None, index=chosen.index)
    return pd.DataFrame({"sample_id": chosen["sample_id"].astype(str).to_numpy(),
                         "score": chosen[score].astype(float).to_numpy(),
                         "reason": pd.Series(_objects(reason), dtype=object)})


def _objects(values: pd.Series):
    """The values as Python objects, None for every kind of missing."""
    out = values.astype(object).to_numpy().copy()
    out[pd.isna(out)] = None
    return out


# ------------------------------------------------------------------------------------------ cached reads


def split_counts(project: Project) -> pd.DataFrame:
    """:func:`split_counts_frame` of the project's samples (cached while samples.parquet is unchanged)."""
    return _split_counts(str(project.dir), loaders.stamp(project.dir, ("samples.parquet",)))


@st.cache_data(show_spinner=False, max_entries=16)
def _split_counts(project_dir: str, files: tuple) -> pd.DataFrame:
    return split_counts_frame(loaders.open_project(project_dir).samples)


def leaks(project: Project) -> pd.DataFrame | None:
    """:func:`leak_groups` of the last per-sample health table (``project.health_samples()``; cached
    while it and the samples are unchanged)."""
    return _leaks(str(project.dir), loaders.stamp(project.dir, SCORE_FILES))


@st.cache_data(show_spinner=False, max_entries=16)
def _leaks(project_dir: str, files: tuple) -> pd.DataFrame | None:
    project = loaders.open_project(project_dir)
    return leak_groups(project.health_samples(), project.samples)


def examples(project: Project, check: str) -> pd.DataFrame:
    """:func:`check_examples` of the last per-sample health table (cached while it is unchanged)."""
    return _examples(str(project.dir), loaders.stamp(project.dir, SCORE_FILES), check)


@st.cache_data(show_spinner=False, max_entries=64)
def _examples(project_dir: str, files: tuple, check: str) -> pd.DataFrame:
    return check_examples(loaders.open_project(project_dir).health_samples(), check)


def health_fresh(project: Project) -> bool:
    """Whether the stored health summary is at least as new as the index and the image statistics."""
    stamps = {name: mtime for name, mtime, _ in loaders.stamp(project.dir, HEALTH_FILES)}
    made = stamps["health.key.json"]
    return stamps["health.parquet"] is not None and made is not None and all(
        stamps[name] is None or stamps[name] <= made for name in HEALTH_FILES[2:])


def health(project: Project) -> pd.DataFrame | None:
    """The health summary: the stored one while fresh (:func:`health_fresh`), else computed here for a
    project without two classes (the health checks alone); None for a labelled project without it."""
    if not health_fresh(project) and project.scores_unavailable() is None:
        return None  # it comes with the scores: a background job, not the page
    return _health(str(project.dir), loaders.stamp(project.dir, HEALTH_FILES))


@st.cache_data(show_spinner="Running the health checks…", max_entries=16)
def _health(project_dir: str, files: tuple) -> pd.DataFrame:
    project = loaders.open_project(project_dir)
    return project.cached_health() if health_fresh(project) else project.health()


# ------------------------------------------------------------------------------------------ drawing


def show(project: Project) -> None:
    """The splits section, then the health section (one summary read serves both)."""
    summary, error = None, None
    if project.is_indexed:
        try:
            summary = health(project)
        except Exception as err:  # a damaged or half-written artifact: say so, keep the rest of the page
            error = f"The health checks failed: {text.plain(err)}"
    show_splits(project, summary)
    show_health(project, summary, error)


def show_splits(project: Project, summary: pd.DataFrame | None = None) -> None:
    """Images per split and class (a table and a bar chart), and the leaks between splits."""
    counts = split_counts(project)
    st.subheader("Splits")
    if counts.empty:
        st.caption("No splits: give the labels CSV a `split` column, or put the images in top-level "
                   "train/val/test folders, to count images per split and find copies across splits.")
        return
    table = counts.pivot_table(index="split", columns="label", values="count", aggfunc="sum", fill_value=0,
                               margins=True, margins_name="total")
    st.dataframe(table.reset_index(), hide_index=True, key="ds_split_counts")
    shown = counts.assign(split=counts["split"].map(text.html_text), label=counts["label"].map(text.html_text))
    coloured = counts["label"].nunique() <= 20  # a legend of hundreds of classes says nothing
    fig = px.bar(shown, x="split", y="count", color="label" if coloured else None, text="count")
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=10, b=10), xaxis_title=None, yaxis_title=None)
    fig.update_xaxes(type="category")
    st.plotly_chart(fig, key="ds_split_chart", width="stretch")
    _show_leaks(project, summary)


def _leak_count(summary: pd.DataFrame | None) -> int | None:
    """Images the leak check flagged, per the health summary; None when it did not run."""
    if summary is None:
        return None
    row = summary[(summary["check"] == "leak").to_numpy() & summary["skipped"].isna().to_numpy()]
    return None if row.empty or pd.isna(row["flagged"].iloc[0]) else int(row["flagged"].iloc[0])


def _show_leaks(project: Project, summary: pd.DataFrame | None) -> None:
    st.markdown("**Leaks between splits**")
    members = leaks(project) if project.is_indexed else None
    count = _leak_count(summary)
    if members is None and count:
        st.warning(f"{count:,} images have a copy in another split: examples show once the scores are computed.")
        return
    if members is None and count is None:
        st.caption("The leak check runs with the health checks (below): copies found in two splits show here.")
        return
    if members is None or members.empty:
        st.success("No leaks: no image has a copy in another split.")
        return
    groups = members["group"].nunique()
    st.warning(f"{groups:,} group{'s' if groups != 1 else ''} of copies span splits ({len(members):,} images): "
               "the same picture is trained on and tested on.")
    for group in members["group"].drop_duplicates().head(LEAK_GROUPS).tolist():
        rows = across_splits(members[members["group"] == group], MEMBERS)
        reason = next((r for r in rows["reason"] if isinstance(r, str) and r), None)
        st.markdown(f"Group {group}" + (f" · {text.plain(reason)}" if reason else ""))
        st.image(loaders.thumbnails(project, rows["sample_id"].tolist(), THUMB), width=THUMB,
                 caption=[text.plain(f"{s or 'no split'} · {l or NO_LABEL} · {Path(i).name}")
                          for i, l, s in zip(rows["sample_id"], rows["label"], rows["split"])])


def show_health(project: Project, summary: pd.DataFrame | None, error: str | None = None) -> None:
    """The health summary (a table and flagged per check) and up to six examples of each flagging check."""
    st.subheader("Health checks")
    if not project.is_indexed:
        st.caption("The health checks (duplicates, leaks, outliers, image quality, label errors) run on the "
                   "index: index the project first.")
        return
    if error:
        st.error(error)
        return
    if summary is None:
        st.caption("The health summary comes with the scores.")
        scores_job.offer(project, None)
        return
    _skipped(summary)
    for check, note in zip(summary["check"], summary.get("note", pd.Series(dtype=object))):
        if isinstance(note, str):
            st.info(f"**{text.plain(check)}**: {text.plain(note)}")
    ran = summary[summary["skipped"].isna().to_numpy()]
    st.dataframe(ran[["check", "kind", "flagged", "samples", "threshold", "description"]], hide_index=True,
                 key="ds_health", height=min(36 * (len(ran) + 1) + 3, 640))  # every check without scrolling
    flagged = ran[ran["flagged"].notna().to_numpy()].astype({"flagged": "int64"})
    if not flagged.empty:
        fig = px.bar(flagged.assign(check=flagged["check"].map(text.html_text)), x="check", y="flagged",
                     color="kind", text="flagged")
        fig.update_layout(height=300, margin=dict(l=10, r=10, t=10, b=10), xaxis_title=None, yaxis_title=None)
        fig.update_xaxes(type="category")
        st.plotly_chart(fig, key="ds_health_chart", width="stretch")
    _check_examples(project, flagged[flagged["flagged"] > 0])


def _skipped(summary: pd.DataFrame) -> None:
    skipped = summary[summary["skipped"].notna().to_numpy()]
    if skipped.empty:
        return
    lines = [f"- **{text.plain(c)}**: {text.plain(r)}" for c, r in zip(skipped["check"], skipped["skipped"])]
    st.caption(f"Skipped ({len(skipped)}):\n" + "\n".join(lines))


def _check_examples(project: Project, flagged: pd.DataFrame) -> None:
    if flagged.empty:
        st.success("No check flags any sample.")
        return
    shown = False
    for check, count in zip(flagged["check"], flagged["flagged"]):
        rows = examples(project, check)
        if rows.empty:
            continue
        shown = True
        st.markdown(f"**{text.plain(check)}** · {int(count):,} flagged")
        st.image(loaders.thumbnails(project, rows["sample_id"].tolist(), THUMB), width=THUMB,
                 caption=[text.plain(r if isinstance(r, str) and r else f"score {s:.2f}")
                          for r, s in zip(rows["reason"], rows["score"])])
    if not shown:
        st.caption("Examples show once the scores are computed (`mlfix scores`, or the Review page).")
