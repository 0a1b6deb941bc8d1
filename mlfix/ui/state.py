"""Where every page finds the current project folder (the reviewer's name is in :mod:`mlfix.ui.access`).

Order of precedence for the project folder:

1. ``st.session_state["mlfix_project_dir"]`` (set by the sidebar's picker, or by a test);
2. the ``?project=DIR`` query parameter of the page's URL, for those who may choose the project
   (admins; everyone in open mode): a reload or a deep link keeps the project picked in the app;
3. the ``--project DIR`` script argument (``streamlit run app.py -- --project DIR``);
4. the ``MLFIX_PROJECT`` environment variable (``mlfix serve`` sets it).

:func:`sync_url` (called by the sidebar on every run) keeps the session and the URL in step.

Pages call :func:`require_project`, which returns an open :class:`mlfix.project.Project` or writes a
clear message into the page and stops the script run (never a traceback)::

    project = state.require_project()
    st.write(len(project.samples))
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import streamlit as st

PROJECT_KEY = "mlfix_project_dir"
ENV_PROJECT = "MLFIX_PROJECT"
QUERY_PARAM = "project"  # ?project=DIR in the URL


def _argv_project(argv: list[str] | None = None) -> str | None:
    """The ``--project`` value of the script arguments, ignoring anything else on the line."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--project", default=None)
    try:
        known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    except SystemExit:  # e.g. "--project" given without a value: treat as absent
        return None
    return known.project


def project_dir() -> Path | None:
    """The current project folder (not checked), or None when none was chosen anywhere."""
    value = (st.session_state.get(PROJECT_KEY) or url_project() or _argv_project()
             or os.environ.get(ENV_PROJECT))
    if not value:
        return None
    return Path(str(value)).expanduser()


def set_project_dir(path: str | os.PathLike | None) -> None:
    """Make ``path`` the current project for this browser session (None: forget it)."""
    if path is None:
        st.session_state.pop(PROJECT_KEY, None)
        st.query_params.pop(QUERY_PARAM, None)
    else:
        st.session_state[PROJECT_KEY] = str(Path(path).expanduser().resolve())
        st.query_params[QUERY_PARAM] = st.session_state[PROJECT_KEY]


def _may_choose() -> bool:
    from mlfix.ui import access

    return access.can("open_project")


def url_project() -> str | None:
    """The ``?project=`` of the URL, if this identity may choose the project (else None: ignored)."""
    value = str(st.query_params.get(QUERY_PARAM) or "").strip()
    return value if value and _may_choose() else None


def sync_url() -> str | None:
    """Keep the session's project and the URL's ``?project=`` in step; call once per run.

    A fresh session (a reload, a deep link) adopts the URL's project; a page change, which clears the
    URL's query, gets it back. Someone who may not choose the project (a reviewer in a team session)
    keeps the server's project: returns the folder their link asked for, to say so, else None.
    """
    asked = str(st.query_params.get(QUERY_PARAM) or "").strip()
    if not _may_choose():
        current = project_dir()
        if asked and (current is None or Path(asked).expanduser().resolve() != current.resolve()):
            return asked
        return None
    if not st.session_state.get(PROJECT_KEY) and asked:
        set_project_dir(asked)
    chosen = st.session_state.get(PROJECT_KEY)
    if chosen and asked != chosen:
        st.query_params[QUERY_PARAM] = chosen
    return None


def current_project():
    """The open project, or None; raises ``NotAProjectError`` for a folder that is not one."""
    from mlfix.ui import loaders

    folder = project_dir()
    if folder is None:
        return None
    return loaders.open_project(str(folder))


def project_without_labels() -> bool:
    """Whether the open project is indexed and its images came without labels: the app then opens on
    the Review page, in label mode (labelling from scratch). False when no project opens."""
    try:
        project = current_project()
    except Exception:  # not a project, or a damaged one: the pages say so
        return False
    return project is not None and project.is_indexed and not project.labels


def require_project():
    """The open project, else a message in the page and ``st.stop()``.

    Example (a page)::

        project = require_project()
    """
    from mlfix.project import NotAProjectError
    from mlfix.ui import access, text

    if access.identity() is None:  # a page run outside the navigation still needs a sign-in
        st.info("Sign in in the sidebar first.")
        st.stop()
    folder = project_dir()
    if folder is None:
        st.info("No project is open. Open or create one on the **Dataset** page, or start the app "
                "with `streamlit run app.py -- --project DIR`.")
        st.stop()
    try:
        return current_project()
    except NotAProjectError as err:
        st.error(f"{text.plain(err)}. Choose another folder in the sidebar, or create a project on the "
                 "**Dataset** page.")
        st.stop()
    except Exception as err:  # a damaged project: say what is wrong instead of a traceback
        st.error(f"Cannot open the project at {text.code(folder)}: {text.plain(err)}")
        st.stop()
