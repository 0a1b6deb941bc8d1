"""The Review page's "Compute scores" offer, shown while a project has no scores.

Scores are slow work (a cross-validated probe over every embedding), so the button starts
``mlfix scores`` as a background job (:mod:`mlfix.service.jobs`, like the Training page's indexing),
never inside the script run. While a job runs, a fragment polls it every :data:`REFRESH_S` seconds
and reruns the page once it has ended: the new ``scores.parquet`` fills the "Sort by" list and the
confusion view. A project whose labels name fewer than two classes gets one line saying that the
similarity order is what works there.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pandas as pd
import streamlit as st

from mlfix.service import jobs
from mlfix.ui import access, background, text

if TYPE_CHECKING:
    from mlfix.project import Project

REFRESH_S = 2.0
BUTTON_KEY = "mlfix_review_compute_scores"
MOSTLY_UNLABELED = ("Most images have no label yet: label them first (the similarity order and **Suggest labels** "
                    "work without scores). Scores rank label errors once most images are labelled.")
RUNNING = {"scores": "Computing the scores", "index": "Indexing (it ends with the scores)",
           "train": "Training"}


def offer(project: Project, scores: pd.DataFrame | None, mostly_unlabeled: bool = False) -> None:
    """Nothing when there are scores; else the button, the job's progress, or why there are none.
    ``mostly_unlabeled`` (labelling from scratch): the button is offered, not urged; labelling comes first."""
    if scores is not None or not project.is_indexed:
        return  # an unindexed project: the page's note says to index it first
    reason = project.scores_unavailable()
    if reason is not None:
        st.caption(f"Similarity order only: {text.plain(reason.split(';')[0])}.")
        return
    status = jobs.job_status(project.dir)
    if status.running:
        st.fragment(run_every=REFRESH_S)(_wait)(str(project.dir))
        return
    if status.kind == "scores" and status.state in ("failed", "stopped"):
        st.error(f"Computing the scores {status.state}: {text.plain(_last_line(status.log_tail) or status.message)}")
    left, right = st.columns([1, 4], vertical_alignment="center")
    if not access.can("index"):
        right.caption("No scores yet, so the grid is in similarity order: an admin can compute them here.")
        return
    if left.button("Compute scores", key=BUTTON_KEY, icon=":material/calculate:",
                   type="secondary" if mostly_unlabeled else "primary",
                   help="Runs `mlfix scores` in the background; this page picks the scores up when "
                        "they are ready."):
        background.start_job(project.dir, "scores")
    right.caption(MOSTLY_UNLABELED if mostly_unlabeled else
                  "No scores yet, so **Sort by** offers the similarity order only. Computing them runs "
                  "in the background: you can keep reviewing meanwhile.")


def _wait(project_dir: str) -> None:
    """The running job's line, redrawn every few seconds; the whole page reruns once it ends."""
    status = jobs.job_status(project_dir)
    if not status.running:
        st.rerun(scope="app")  # the job ended: the page reads the new scores (or its failure)
    started = float(status.record.get("started") or time.time())
    what = RUNNING.get(status.kind or "", jobs.a_job(status.kind or "background").capitalize())
    st.info(f"{what}: running since {time.strftime('%H:%M:%S', time.localtime(started))} "
            f"({int(time.time() - started)} s). The scores appear here when it ends.",
            icon=":material/hourglass_top:")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""
