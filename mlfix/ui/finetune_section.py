"""The Training page's fine-tuning section: start ``mlfix finetune`` in the background, show its folds.

Cross-validated fine-tuning (:mod:`mlfix.training.finetune`) trains the backbone on the labels, K
times, so that every image gets class probabilities from a network that never saw it; the scores then
use them. The section shows the last result (out-of-fold accuracy against the given labels and
chance, time), the controls, and the live progress of a running job from ``progress/finetune.jsonl``.
"""

from __future__ import annotations

import streamlit as st

from mlfix.project import Project
from mlfix.ui import background, text

JOB = "finetune"


def last_records(records: list[dict]) -> list[dict]:
    """The last progress record of each stage, in the order the stages started.

    >>> last_records([{"stage": "fold 1/3", "done": 1, "total": 4}, {"stage": "fold 1/3", "done": 4, "total": 4},
    ...               {"stage": "fold 2/3", "done": 2, "total": 4}, {"note": "x"}])
    [{'stage': 'fold 1/3', 'done': 4, 'total': 4}, {'stage': 'fold 2/3', 'done': 2, 'total': 4}]
    """
    last: dict[str, dict] = {}
    for record in records:
        if record.get("stage") and "done" in record:
            last[record["stage"]] = record
    return list(last.values())


@st.cache_data(show_spinner=False, max_entries=8)
def _finetune_use(project_dir: str, result_stamp: str | None, last_decision, index: str) -> str | None:
    """:meth:`~mlfix.project.Project.finetune_use`, read again only when the result, the reviews or the
    index change."""
    return Project.open(project_dir).finetune_use()


def _result_line(project: Project) -> None:
    from mlfix.training.finetune import FinetuneResult, near_chance, summary_text

    result = FinetuneResult.load(project.dir / "finetune")
    if result is None:
        st.caption("Not fine-tuned yet: the scores use the frozen backbone's linear probe.")
        return
    from mlfix.pipeline.artifacts import read_key

    index = str(read_key(project.dir / "orders" / "orders.key.json"))  # a rescan: new labels or images
    use = _finetune_use(str(project.dir), project.finetune_stamp(), project.reviews.last_id(), index) or ""
    st.markdown(f"Last run: {text.plain(summary_text(result.summary))}. {text.plain(use[:1].upper() + use[1:])}.")
    if near_chance(result.summary):
        st.warning("The fine-tuned network barely beats chance on these labels: the label-based scores "
                   "are not to be trusted here (mostly wrong labels, or classes the images cannot tell apart).")


def progress_view(project_dir) -> None:
    """The running (or last) fine-tuning's stages as progress bars; nothing when it never ran."""
    from pathlib import Path

    from mlfix.ui.loaders import progress_records

    everything = progress_records(Path(project_dir) / "progress" / f"{JOB}.jsonl")
    records = last_records(everything)
    if records:
        st.markdown("**Fine-tuning**")
    estimate = next((r["note"] for r in reversed(everything) if str(r.get("note", "")).startswith("estimate:")), None)
    if estimate:  # the last run's, said before it started (mlfix.training.finetune_estimate)
        st.caption(text.plain(estimate))
    for record in records:
        total = max(1, int(record.get("total") or 1))
        extra = ", ".join(f"{k.replace('_', ' ')} {record[k]}" for k in ("epoch", "loss", "images_per_s")
                          if k in record)
        st.progress(min(1.0, int(record["done"]) / total),
                    text=f"{record['stage']}: {int(record['done']):,} of {total:,}{f' ({extra})' if extra else ''}")


def finetune_controls(project: Project, running: bool) -> None:
    """The section: the last result, the settings and the start button (progress: :func:`progress_view`)."""
    from mlfix.settings import OFFLINE_BACKBONES
    from mlfix.training.finetune import FINETUNE_QUALITIES, FinetuneSettings
    from mlfix.training.finetune_model import TRAIN_CHOICES
    from mlfix.training.finetune_project import finetuned_backbone, mirror_by_default, preset_options

    st.subheader("Fine-tune for the scores")
    st.caption("Trains the backbone on your labels in K folds; each image is scored by a network that never "
               "saw it. Finds subtler errors than the frozen backbone. Reviewed images count as trusted labels "
               "on the next run. Stop keeps what is done; starting again resumes.")
    _result_line(project)
    quality = st.radio("Preset", list(FINETUNE_QUALITIES), index=list(FINETUNE_QUALITIES).index("default"),
                       horizontal=True, key="ft_quality",
                       help="fast: the last stage trains; default: the last two stages; best: the last two stages "
                            "of EfficientNet-Lite1 (a fifth slower; a project with its own network keeps it). "
                            "The fields below start from the preset")
    preset = preset_options(project.settings, project.dir, quality)
    network = preset.pop("backbone", None) or finetuned_backbone(project.settings)
    d = FinetuneSettings(**preset)
    c0, c1, c2, c3, c4 = st.columns(5)  # keyed by the preset: choosing another one resets them to its values
    networks = list(dict.fromkeys([finetuned_backbone(project.settings), network, *OFFLINE_BACKBONES]))
    backbone = c0.selectbox("Network", networks, index=networks.index(network), key=f"ft_backbone_{quality}",
                            help="the network that is fine-tuned (the first one: the index's backbone; "
                                 "EfficientNet-Lite weights ship with mlfix)")
    folds = c1.number_input("Folds", 2, 10, d.folds, key=f"ft_folds_{quality}")
    epochs = c2.number_input("Epochs", 1, 100, d.epochs, key=f"ft_epochs_{quality}")
    size = c3.number_input("Image size (px)", 32, 512, project.image_size if project.is_indexed else 224, 16,
                           key="ft_size")
    train = c4.selectbox("Train", list(TRAIN_CHOICES), index=list(TRAIN_CHOICES).index(d.train),
                         key=f"ft_train_{quality}",
                         help="head: the linear layer only; last..last3: the last stages too; all: everything "
                              "(slowest)")
    mirror = st.checkbox("Mirror images", value=d.flip and mirror_by_default(project.settings, project.dir, backbone),
                         key=f"ft_flip_{quality}_{backbone}",
                         help="train and predict on each image and its mirror image; off for digits, text and "
                              "signs, where a mirror image is another class")
    args = ["--backbone", backbone, "--folds", str(int(folds)), "--epochs", str(int(epochs)),
            "--image-size", str(int(size)), "--train", train, "--flip" if mirror else "--no-flip"]
    if st.button("Start fine-tuning", disabled=running or not project.is_indexed, key="ft_start",
                 help=None if project.is_indexed else "Index the project first"):
        background.start_job(project.dir, JOB, args)
