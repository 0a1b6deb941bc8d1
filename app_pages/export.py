"""Export: corrected labels as CSV / JSON / COCO downloads; what changed; decisions per reviewer."""

from __future__ import annotations

from pathlib import Path

import plotly.express as px
import streamlit as st

from mlfix.project import Project
from mlfix.review import classes, export
from mlfix.ui import access, loaders, state, team, text

access.require("export")  # not only the menu: a page file run directly is checked too


def _downloads(project: Project, last_id: int) -> None:
    st.subheader("Download the corrected labels")
    version = classes.version(loaders.review_store(project))  # a class renamed or merged changes the files too
    key = (str(project.dir), loaders.project_stamp(project.dir) + (version,), last_id)
    name = Path(project.dir).name
    drop = st.checkbox("Leave out duplicates", key="ex_drop_duplicates",
                       help="Samples marked duplicate on the Duplicates page (the copies; the kept one stays) "
                            "are not in the files. `mlfix export --drop-duplicates` does the same.")
    c1, c2, c3 = st.columns(3)
    c1.download_button("CSV", loaders.export_bytes(*key, "csv", drop), file_name=f"{name}-labels.csv",
                       mime="text/csv", key="ex_csv", icon=":material/table:", width="stretch")
    c2.download_button("JSON", loaders.export_bytes(*key, "json", drop), file_name=f"{name}-labels.json",
                       mime="application/json", key="ex_json", icon=":material/data_object:", width="stretch")
    coco = project.source.get("coco")
    no_coco = export.coco_unavailable(project.source)  # the same rule as `mlfix export --format coco`
    if not no_coco:
        try:
            data = loaders.export_bytes(*key, "coco", drop)
        except (ValueError, OSError) as err:
            c3.error(f"Cannot build the COCO file from {text.code(coco)}: {text.plain(err)}")
        else:
            c3.download_button("COCO", data, file_name=f"{name}-coco.json", mime="application/json",
                               key="ex_coco", icon=":material/crop_free:", width="stretch",
                               help=None if coco else "Image-level labels: one annotation per labelled image, "
                                                      "no boxes; the categories are the class list.")
    elif coco:
        c3.warning(f"The source COCO file {text.code(coco)} is gone, so no COCO export.")
    st.caption("Columns: `sample_id, path, original_label, corrected_label, changed, status, reviewer, "
               "decided_at`; status is unreviewed, relabeled, flagged (wrong, no new label), ok or duplicate. "
               "The JSON export also holds the class list and its history (classes added, renamed, merged). "
               "From Python: `project.corrected_labels()`.")


def _changes(table) -> None:
    st.subheader("What changed")
    changes = export.changes(table)
    if changes.empty:
        st.info("No label has changed yet.")
    else:
        left, right = st.columns([2, 3], gap="large")
        with left:
            st.markdown("**Original → corrected**")
            st.dataframe(changes, hide_index=True, key="ex_changes", width="stretch")
        with right:
            per_class = export.per_class(table)
            moved = per_class[(per_class["moved_in"] > 0) | (per_class["moved_out"] > 0)]
            long = moved.melt(id_vars="label", value_vars=["moved_out", "moved_in"], var_name="direction",
                              value_name="samples")
            long["label"] = long["label"].map(text.html_text)  # Plotly renders HTML in ticks and hover
            long["direction"] = long["direction"].map({"moved_out": "relabeled away", "moved_in": "relabeled to"})
            fig = px.bar(long, x="label", y="samples", color="direction", barmode="group",
                         color_discrete_map={"relabeled away": "#ef4444", "relabeled to": "#22c55e"})
            fig.update_xaxes(type="category", title=None)
            fig.update_layout(height=300, margin=dict(l=10, r=10, t=10, b=10), legend_title=None)
            st.plotly_chart(fig, key="ex_changes_chart", width="stretch")
    changed = table[table["changed"] | (table["status"] == "flagged")]
    if len(changed):
        with st.expander(f"Changed or flagged samples ({len(changed):,})"):
            st.dataframe(changed[["sample_id", "original_label", "corrected_label", "status", "reviewer",
                                  "decided_at"]], hide_index=True, key="ex_changed_rows", width="stretch")


def _reviewers(project: Project) -> None:
    st.subheader("Decisions per reviewer")
    summary = loaders.review_store(project).per_reviewer()
    if summary.empty:
        st.info("No decisions yet: review on the **Review** page.")
        return
    st.dataframe(summary, hide_index=True, key="ex_reviewers", width="stretch")


project = state.require_project()
st.title("Export")
try:
    table, last_id = loaders.export_table(project)
except Exception as err:  # a damaged decisions store: say so instead of a traceback
    st.error(f"Cannot read the decisions of this project: {text.plain(err)}")
    st.stop()
status = table["status"].value_counts()
c1, c2, c3, c4, c5 = st.columns(5)
c1.metric("Samples", f"{len(table):,}")
c2.metric("Reviewed", f"{int((table['status'] != 'unreviewed').sum()):,}")
c3.metric("Relabeled", f"{int(table['changed'].sum()):,}")
c4.metric("Flagged", f"{int(status.get('flagged', 0)):,}")
c5.metric("Checked fine", f"{int(status.get('ok', 0)):,}")
_downloads(project, last_id)
_changes(table)
_reviewers(project)
team.conflicts_section(project)
