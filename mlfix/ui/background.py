"""Starting a background job from a page (:mod:`mlfix.service.jobs`): the one place that says in
the page why a job did not start, and reruns the page when it did."""

from __future__ import annotations

import os
from typing import Sequence

import streamlit as st

from mlfix.service import jobs


def start_job(project_dir: str | os.PathLike, kind: str, args: Sequence[str] = ()) -> None:
    """Start ``mlfix <kind>`` on the project in the background and rerun the page; on a refusal
    (another job running, a bad project) show why and keep the page as it is."""
    try:
        jobs.start_job(project_dir, kind, list(args))
    except jobs.JobRunningError as err:
        st.error(f"Not started: {err}.")
        return
    except (jobs.JobError, ValueError, OSError) as err:
        st.error(f"Cannot start the job: {err}")
        return
    st.rerun()
