"""Starting a background job from a page (:mod:`mlfix.service.jobs`): the one place that says in
the page why a job did not start, and reruns the page when it did; and a project being created (the
scan of its images) followed from the Dataset page while it runs in its own process."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import streamlit as st

from mlfix.data.object_store import is_remote
from mlfix.service import jobs
from mlfix.ui import text

CREATE_REFRESH_S = 1.0


def start_job(project_dir: str | os.PathLike, kind: str, args: Sequence[str] = ()) -> bool:
    """Start ``mlfix <kind>`` on the project in the background and rerun the page; on a refusal
    (another job running, a bad project) show why, keep the page as it is and return False."""
    try:
        jobs.start_job(project_dir, kind, list(args))
    except jobs.JobRunningError as err:
        st.error(f"Not started: {text.plain(err)}.")
        return False
    except (jobs.JobError, ValueError, OSError) as err:
        st.error(f"Cannot start the job: {text.plain(err)}")
        return False
    st.rerun()
    return True  # (st.rerun does not return; for callers that stub it)


def create_args(images: str | os.PathLike, labels: str | os.PathLike | None = None,
                coco: str | os.PathLike | None = None, padding: float = 0.0, settings: dict | None = None,
                start_index: bool = True) -> list[str]:
    """The ``mlfix index`` arguments that create a project (``--scan-only`` unless indexing follows).

    >>> create_args("/data/img", labels="/data/l.csv", settings={"words": 512, "image_size": None,
    ...             "tta_flip": True}, start_index=False)
    ['--images', '/data/img', '--padding', '0.0', '--labels', '/data/l.csv', '--words', '512', '--tta-flip', '--scan-only']
    >>> create_args("s3://bucket/photos?region=eu-west-1")[:2]
    ['--images', 's3://bucket/photos?region=eu-west-1']
    """
    location = str(images) if is_remote(images) else str(Path(images).expanduser())
    args = ["--images", location, "--padding", str(float(padding))]
    if labels is not None:
        args += ["--labels", str(labels)]
    if coco is not None:
        args += ["--coco", str(coco)]
    for name, value in (settings or {}).items():
        if value is None or value == "":
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else f"--no-{flag[2:]}")
        else:
            args += [flag, str(int(value) if isinstance(value, float) else value)]
    return args + ([] if start_index else ["--scan-only"])


def creation_panel(folder: str | os.PathLike) -> bool:
    """While a job creates the project in ``folder`` (no ``mlfix.toml`` yet), show its scan progress,
    refreshed every second, and return True; the page reruns when the job ends. After a failed
    creation, show why (with the log) and return False; also False when no job is creating one."""
    status = jobs.job_status(folder)
    if status.running:
        st.info("Creating the project: the images are scanned in the background (headers only).")
        st.fragment(run_every=CREATE_REFRESH_S)(_scan_progress)(Path(folder))
        return True
    if status.state in ("failed", "stopped") and status.record:
        st.error(f"The project was not created: {text.plain(status.message)}.")
        with st.expander("Log"):
            st.code(status.log_tail[-3000:] or "(empty)", language=None)
    return False


def _scan_progress(folder: Path) -> None:
    from mlfix.progress import read_progress
    from mlfix.project import Project

    if not jobs.job_status(folder).running or Project.is_project(folder):
        st.rerun()  # scanned (indexing may go on): the whole page shows the project, or why it failed
    scans = [r for r in read_progress(folder / "progress" / "index.jsonl") if r.get("stage") == "scan"]
    if scans and scans[-1].get("total"):
        done, total = int(scans[-1]["done"]), int(scans[-1]["total"])
        st.progress(min(1.0, done / total), text=f"scan: {done:,} of {total:,} images")
    else:
        st.progress(0.0, text="scan: listing the images…")
