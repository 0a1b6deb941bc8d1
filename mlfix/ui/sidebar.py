"""The shared sidebar: which project is open, and who is reviewing.

``render()`` is called by ``app.py`` on every run, before the page. It never raises: a folder that
is not a project is reported in the sidebar (and the page says it again, in its own words).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from mlfix.ui import access, state, text

if TYPE_CHECKING:
    from mlfix.project import Project

INPUT_KEY = "mlfix_project_input"
SYNCED_KEY = "mlfix_project_input_synced"
RECENT_KEY = "mlfix_recent_projects"


def _open_from_input() -> None:
    text = str(st.session_state.get(INPUT_KEY) or "").strip()
    if text:
        state.set_project_dir(text)
        _remember(state.project_dir())


def _remember(folder: Path | None) -> None:
    if folder is None:
        return
    recent = [p for p in st.session_state.get(RECENT_KEY, []) if p != str(folder)]
    st.session_state[RECENT_KEY] = [str(folder)] + recent[:7]


def _pick_recent() -> None:
    choice = st.session_state.get("mlfix_recent_pick")
    if choice:
        state.set_project_dir(choice)


def render() -> None:
    """Draw the sign-in, the project picker and the reviewer field into ``st.sidebar``.

    With sign-in configured (token or OIDC), the name comes from the sign-in, and only admins may
    switch to another project folder.
    """
    me = access.render_sign_in()
    if me is None:
        return
    ignored = state.sync_url()  # a reload or a deep link keeps the project picked in the app
    current = state.project_dir()
    shown = str(current) if current else ""
    # Keep the text field in step when the project changes elsewhere (e.g. created on a page).
    if st.session_state.get(SYNCED_KEY) != shown:
        st.session_state[INPUT_KEY] = shown
        st.session_state[SYNCED_KEY] = shown
        _remember(current)
    if access.REVIEWER_KEY not in st.session_state:
        st.session_state[access.REVIEWER_KEY] = access.default_reviewer()

    with st.sidebar:
        st.markdown("### mlfix")
        if access.can("open_project"):
            st.text_input("Project folder", key=INPUT_KEY, on_change=_open_from_input,
                          placeholder="/path/to/project", help="A folder made by `mlfix index` or the "
                          "Dataset page. Press Enter to open it.")
            recent = st.session_state.get(RECENT_KEY, [])
            if len(recent) > 1:
                st.selectbox("Recent projects", recent, index=None, key="mlfix_recent_pick",
                             on_change=_pick_recent, placeholder="Switch to…")
        _project_summary(current)
        if ignored:
            # not echoed: the link's text is whatever its author typed
            st.warning("This link names another project folder, but only an admin may choose the "
                       "project: you are on the server's project. Ask the admin who runs this server "
                       "to open the other one.")
        if me.via == "open":  # signed-in names come from the sign-in, not a free field
            st.text_input("Reviewer", key=access.REVIEWER_KEY,
                          help="Recorded with every decision you make on the Review page.")


def _project_summary(folder: Path | None) -> None:
    if folder is None:
        st.caption("No project open.")
        return
    try:
        project = state.current_project()
    except Exception as err:  # NotAProjectError and damaged projects alike: say it, don't raise
        st.warning(f"Not an mlfix project: {text.code(folder)}" if "not an mlfix project" in str(err)
                   else f"Cannot open {text.code(folder)}: {text.plain(err)}")
        return
    indexed = "indexed" if project.is_indexed else "not indexed yet"
    st.caption(f"**{text.plain(Path(project.dir).name)}** · {len(project.samples):,} samples · "
               f"{class_count(project)} classes · {indexed}")


def class_count(project: Project) -> int:
    """The classes reviewers label with: the given labels plus those added on the Review page (a
    project made from unlabeled images has none given); the given labels alone when the decisions
    store cannot be read."""
    try:
        return len(project.classes.names)
    except Exception:  # the store down must not take the sidebar with it
        return len(project.labels)
