"""Training: start, stop and resume Barlow Twins training and indexing; live progress.

The work runs in a background process (:mod:`mlfix.service.jobs`), never in this script run: a page
refresh neither blocks nor kills it. While a job runs, only the progress fragment refreshes.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from mlfix.cli.train import default_init
from mlfix.project import Project
from mlfix.service import jobs
from mlfix.ui import access, background, codebook_info, engine_section, finetune_section, loaders, state, text

access.require("train")  # not only the menu: a page file run directly is checked too

REFRESH_S = 2.0
MAX_POINTS = 2000  # points of the loss curve sent to the browser
KILL_AFTER_S = 15.0  # offer SIGKILL when a stopped job is still running after this long
JOB_NAMES = {"index": "Indexing", "train": "Training", "scores": "Scoring", "finetune": "Fine-tuning"}
INDEX_STAGES = ["scan", "features", "cells", "codebook", "words", "bags", "orders", "scores"]


def _checkpoint(project_dir: Path) -> dict | None:
    """The summary beside the last training checkpoint (cheap: no weights loaded)."""
    if not (project_dir / "models" / "last.pt").is_file():
        return None
    try:
        return json.loads((project_dir / "models" / "last.json").read_text())
    except (OSError, ValueError):
        return {}


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "–"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _stage_rows(records: list[dict]) -> list[dict]:
    """The latest record of every stage (in first-seen order) with a rate-based ETA."""
    first: dict[str, dict] = {}
    last: dict[str, dict] = {}
    for record in records:
        stage = record.get("stage")
        if stage is None or "done" not in record or "total" not in record:
            continue
        first.setdefault(stage, record)
        last[stage] = record
    rows = []
    for stage, record in last.items():
        done, total = float(record["done"] or 0), float(record["total"] or 0)
        eta = record.get("eta_s")
        start = first[stage]
        elapsed = float(record.get("time", 0)) - float(start.get("time", 0))
        if eta is None and elapsed > 0 and done > float(start["done"] or 0) and total > done:
            eta = (total - done) * elapsed / (done - float(start["done"] or 0))
        rows.append({"stage": stage, "done": int(done), "total": int(total), "eta_s": eta,
                     "fraction": min(1.0, done / total) if total > 0 else 0.0, "record": record})
    return rows


def _recently_written(project_dir: Path, seconds: float = 30.0) -> bool:
    """Work started outside the app (a terminal) is under way: a progress log written in the last
    ``seconds`` whose last record is unfinished (``done < total``)."""
    now = time.time()
    for name in ("train.jsonl", "index.jsonl"):
        path = project_dir / "progress" / name
        try:
            if now - path.stat().st_mtime >= seconds:
                continue
        except OSError:
            continue
        last = jobs.read_log_tail(path, 2000).strip().splitlines()[-1:]
        try:
            record = json.loads(last[0]) if last else {}
        except ValueError:
            continue  # half a line: being written right now
        if record.get("total") and record.get("done", 0) < record["total"]:
            return True
    return False


def _status_panel(status: jobs.JobStatus) -> None:
    record = status.record
    name = JOB_NAMES.get(status.kind, status.kind or "Job")
    started = time.strftime("%H:%M:%S", time.localtime(record.get("started", 0))) if record else ""
    if status.state == "running":
        st.info(f"**{name}** is running (pid {text.plain(record.get('pid'))}, since {started}). You can leave or "
                "refresh this page: the job goes on.")
    elif status.state == "finished":
        st.success(f"{name} finished (started {started}).")
    elif status.state == "stopped":
        st.warning(f"{name} was stopped (started {started}). Start it again to resume.")
    elif status.state == "failed":
        st.error(f"{name} failed: {text.plain(status.message)}.")
        if status.log_tail.strip():
            st.code(status.log_tail[-3000:], language=None)


def _train_controls(project: Project, running: bool) -> None:
    st.subheader("Train the backbone")
    st.caption("Barlow Twins, self-supervised on this project's own images: no labels are used. "
               "Checkpoints go to `models/last.pt`; indexing then uses them (weights `auto`).")
    checkpoint = _checkpoint(project.dir)
    saved = (checkpoint or {}).get("settings", {})
    if checkpoint is not None:
        total = checkpoint.get("total_steps")
        loss = checkpoint.get("loss")
        loss_text = f", loss {loss:.4g}" if isinstance(loss, (int, float)) else ""
        st.markdown(f"Checkpoint: epoch **{text.plain(checkpoint.get('epoch', '?'))}** of "
                    f"{text.plain(saved.get('epochs', '?'))}, step {text.plain(checkpoint.get('step', '?'))}"
                    f"{f' of {total}' if total else ''}{loss_text}.")
    c1, c2, c3 = st.columns(3)
    epochs = c1.number_input("Epochs (total)", 1, 10_000, int(saved.get("epochs", 10)), key="tr_epochs")
    batch = c2.number_input("Batch size", 8, 4096, int(saved.get("batch_size", 128)), key="tr_batch")
    size = c3.number_input("Image size (px)", 32, 512, int(saved.get("image_size", 64)), 16, key="tr_size")
    c4, c5, c6 = st.columns(3)
    inits = ["random", "offline", "imagenet"]
    if saved.get("init") and saved["init"] not in inits:  # a weights file: resume must keep it
        inits.append(str(saved["init"]))
    # like `mlfix train`: continued training from the offline weights where the backbone has them
    first = saved.get("init") or default_init(project.settings.backbone)
    init = c4.selectbox("Start from", inits, index=inits.index(first), key="tr_init")
    head = c5.number_input("Head width", 128, 8192, int(saved.get("head_dim", 2048)), 128, key="tr_head")
    flip = c6.checkbox("Flips", value=bool(saved.get("flip", True)), key="tr_flip",
                       help="Random horizontal flips. Turn off where a mirror image means another class "
                       "(digits, text, signs).")
    vq = st.number_input("Visual words learned with the backbone (0: off)", 0, 65_528,
                         int(saved.get("vq_words", 0)), 64, key="tr_vq",
                         help="mlfix train --vq-words: a VQ codebook trained beside Barlow Twins on the cells; "
                              "index with codebook 'vq' and the same number of words to use it. Rounded down "
                              "to a multiple of 8.")
    vq_words = int(vq) // 8 * 8
    args = ["--epochs", str(int(epochs)), "--batch-size", str(int(batch)), "--image-size", str(int(size)),
            "--init", init, "--head-dim", str(int(head))] + ([] if flip else ["--no-flip"]) \
        + (["--vq-words", str(vq_words)] if vq_words else [])
    b1, b2 = st.columns(2)
    label = "Resume training" if checkpoint is not None else "Start training"
    if b1.button(label, type="primary", disabled=running, key="tr_start"):
        background.start_job(project.dir, "train", args)
    if checkpoint is not None and b2.button("Start over", disabled=running, key="tr_restart",
                                            help="Keeps the old checkpoint in models/previous-<time>/"):
        _set_aside_checkpoint(project.dir)
        background.start_job(project.dir, "train", args)


def _set_aside_checkpoint(project_dir: Path) -> None:
    """Move the checkpoint away (never delete a reviewer's training run)."""
    models = project_dir / "models"
    target = models / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("last.pt", "last.json"):
        if (models / name).exists():
            shutil.move(str(models / name), str(target / name))


def _index_controls(project: Project, running: bool) -> None:
    st.subheader("Index")
    st.caption("Features → visual words → bags of words → similarity orderings → label-error scores "
               "(when the labels name two classes or more). Stages whose inputs did not change are reused.")
    settings = project.settings
    trained = (project.dir / "models" / "last.pt").is_file()
    weights = str(settings.weights)
    engine = settings.engine + (f" at {settings.ray_address}" if settings.engine == "ray" and settings.ray_address else "")
    st.markdown(f"Backbone **{text.plain(settings.backbone)}**, weights **{text.plain(weights)}**"
                f"{' (the trained checkpoint)' if weights == 'auto' and trained else ''}, "
                f"{project.image_size} px{' (auto)' if settings.image_size == 'auto' else ''}, "
                f"{settings.words} words ({codebook_info.CODEBOOK_NAMES[settings.codebook]}), "
                f"engine **{text.plain(engine)}**.")
    last = engine_section.last_engine(project.dir)
    if last:
        st.caption(f"Last features pass: {last}.")
    with st.expander("Change settings for this run"):
        c1, c2 = st.columns(2)
        size = c1.number_input("Image size (px)", 32, 1024, project.image_size, 16,
                               key="ix_size")
        words = c2.number_input("Visual words", 8, 65536, settings.words, 64, key="ix_words")
        codebook = c1.selectbox("Codebook", list(codebook_info.CODEBOOK_NAMES), key="ix_codebook",
                                index=list(codebook_info.CODEBOOK_NAMES).index(settings.codebook),
                                format_func=codebook_info.CODEBOOK_NAMES.get,
                                help="How cells become visual words: KMeans, or a VQ-VAE codebook learned "
                                     "on the cells (the one trained with the backbone when it has one)")
        args, refused = engine_section.engine_controls(settings)
    if refused:
        st.error(text.plain(refused))
    if int(size) != project.image_size:
        args += ["--image-size", str(int(size))]
    if int(words) != settings.words:
        args += ["--words", str(int(words))]
    if codebook != settings.codebook:
        args += ["--codebook", codebook]
    label = "Index again" if project.is_indexed else "Start indexing"
    if st.button(label, type="primary", disabled=running or bool(refused), key="ix_start"):
        background.start_job(project.dir, "index", args)


def _loss_figure(train: list[dict]) -> go.Figure | None:
    points = [(r.get("step", r.get("done")), r.get("loss")) for r in train if r.get("stage") == "train"]
    points = [(s, l) for s, l in points if s is not None and isinstance(l, (int, float)) and math.isfinite(l)]
    if not points:
        return None
    frame = pd.DataFrame(points, columns=["step", "loss"]).drop_duplicates("step", keep="last")
    smooth = frame["loss"].rolling(max(3, len(frame) // 20), min_periods=1, center=True).mean()
    if len(frame) > MAX_POINTS:  # a long run: plot every n-th point (the browser gets it every 2 s)
        keep = np.unique(np.linspace(0, len(frame) - 1, MAX_POINTS).astype(int))
        frame, smooth = frame.iloc[keep], smooth.iloc[keep]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=frame["step"], y=frame["loss"], mode="lines", name="loss",
                             line=dict(color="#93c5fd")))
    if len(frame) >= 10:
        fig.add_trace(go.Scatter(x=frame["step"], y=smooth, mode="lines", name="smoothed",
                                 line=dict(color="#1d4ed8", width=2)))
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="step",
                      yaxis_title="Barlow Twins loss", title="Training loss", legend=dict(orientation="h"))
    return fig


def _progress_view(project_dir: Path, was_running: bool) -> None:
    status = jobs.job_status(project_dir)
    if was_running and not status.running and not _recently_written(project_dir):
        st.rerun()  # the job ended: redraw the whole page (buttons, status)
    train = loaders.progress_records(project_dir / "progress" / "train.jsonl")
    index = loaders.progress_records(project_dir / "progress" / "index.jsonl")
    st.subheader("Progress")
    finetune_section.progress_view(project_dir)
    if not train and not index:
        st.caption("No job has reported progress in this project yet.")
    train_rows = [r for r in _stage_rows(train) if r["stage"] == "train"]
    if train_rows:
        row = train_rows[0]
        record = row["record"]
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("Epoch", f"{record.get('epoch', '–')}")
        c2.metric("Loss", f"{record.get('loss', float('nan')):.4g}" if isinstance(record.get("loss"), (int, float)) else "–")
        c3.metric("Images/s", f"{record.get('images_per_s', 0):,.1f}" if record.get("images_per_s") is not None else "–")
        c4.metric("ETA", _duration(row["eta_s"]) if row["fraction"] < 1 else "done")
        st.progress(row["fraction"], text=f"training: step {row['done']:,} of {row['total']:,}")
        figure = _loss_figure(train)
        if figure is not None:
            st.plotly_chart(figure, key="tr_loss", width="stretch")
        problems = [r for r in train if r.get("stage") == "train_problem"]
        if problems:
            st.warning(f"{len(problems)} image(s) could not be read during training and were skipped.")
    index_rows = _stage_rows(index)
    if index_rows:
        st.markdown("**Indexing**")
        for row in sorted(index_rows, key=lambda r: INDEX_STAGES.index(r["stage"])
                          if r["stage"] in INDEX_STAGES else len(INDEX_STAGES)):
            eta = "" if row["fraction"] >= 1 else f" · ETA {_duration(row['eta_s'])}"
            st.progress(row["fraction"], text=f"{text.plain(row['stage'])}: {row['done']:,} of {row['total']:,}{eta}")
    if status.running:
        with st.expander("Log"):
            st.code(status.log_tail[-3000:] or "(nothing yet)", language=None)


project = state.require_project()
st.title("Training")
status = jobs.job_status(project.dir)
_status_panel(status)
if status.running:
    asked = jobs.stop_requested_at(project.dir)
    if asked is not None and time.time() - asked > KILL_AFTER_S:
        st.warning(f"The job has not stopped {int(time.time() - asked)} s after it was asked to.")
        if st.button("Kill it", key="tr_kill", help="SIGKILL: the job cannot save anything first."):
            jobs.stop_job(project.dir, force=True)
            st.rerun()
    elif st.button(f"Stop {JOB_NAMES.get(status.kind, 'the job').lower()}", key="tr_stop",
                   disabled=asked is not None):
        jobs.stop_job(project.dir)
        time.sleep(0.3)  # let the job write its exit record before the page redraws
        st.rerun()

left, right = st.columns(2, gap="large")
with left:
    _train_controls(project, status.running)
with right:
    _index_controls(project, status.running)
finetune_section.finetune_controls(project, status.running)

# Refresh only the progress, and only while a job runs (here, or from a terminal: `mlfix index`).
live = status.running or _recently_written(project.dir)
if live and not status.running:
    st.caption("A job started outside the app (e.g. `mlfix index` in a terminal) is writing progress.")
st.fragment(run_every=REFRESH_S if live else None)(_progress_view)(project.dir, live)
