"""Dataset: create or open a project; class counts, splits and leaks, the health summary, examples per
class, and the problems table."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from mlfix.data.images import DataRoot
from mlfix.data.object_store import is_remote
from mlfix.errors import ImageError
from mlfix.project import Project
from mlfix.service import jobs
from mlfix.settings import IndexSettings
from mlfix.ui import access, background, health_section, loaders, sidebar, state, text

access.require("create_project")  # not only the menu: a page file run directly is checked too

FLASH_KEY = "mlfix_dataset_flash"
SOURCES = {"folder": "Folder names (ImageFolder) or unlabeled", "csv": "A CSV file (path, label, split)",
           "coco": "A COCO JSON file (boxes become crops)"}
WEIGHTS = ["auto", "random", "offline", "imagenet"]


def _flash(kind: str, text: str) -> None:
    """A message that survives the st.rerun() after a project was opened or created."""
    st.session_state[FLASH_KEY] = (kind, text)


def _show_flash() -> None:
    kind, text = st.session_state.pop(FLASH_KEY, (None, None))
    if kind:
        getattr(st, kind)(text)


def _open_form() -> None:
    with st.form("mlfix_open_project", border=False):
        folder = st.text_input("Project folder", key="ds_open_dir", placeholder="/path/to/project")
        if st.form_submit_button("Open project"):
            _open(folder)


def _open(folder: str) -> None:
    folder = (folder or "").strip()
    if not folder:
        st.error("Type the folder of a project to open it.")
        return
    if not Project.is_project(folder):
        st.error(f"{text.code(folder)} is not an mlfix project (no mlfix.toml). Create one below, or "
                 "choose the folder that `mlfix index --project DIR` made.")
        return
    state.set_project_dir(folder)
    _flash("success", f"Opened {text.code(folder)}.")
    st.rerun()


def _save_upload(upload, folder: Path) -> Path:
    """Keep an uploaded labels file inside the project (so the project stays self-contained)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(upload.name).name) or "labels"
    target = folder / "uploads" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(upload.getvalue())
    return target


def _check_csv(data: bytes) -> str | None:
    """Why an uploaded labels CSV cannot be used, or None when it parses with a ``path`` column."""
    try:
        table = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, nrows=1000)
    except UnicodeDecodeError:
        return "it is not UTF-8 text (is it really a CSV?)"
    except Exception as err:  # pandas' parser errors come in many types
        return f"it does not parse as CSV: {text.plain(str(err).strip() or type(err).__name__)}"
    columns = [str(c).strip().lower() for c in table.columns]
    if "path" not in columns:
        return f"it needs a `path` column (and usually a `label` column); its columns are {text.plain(columns)}"
    return None


def _create_form() -> None:
    st.caption("Scans the images (headers only) in the background and writes the project folder; "
               "indexing follows there too (on the Training page).")
    target = st.text_input("New project folder", key="ds_new_dir", placeholder="/path/to/new-project")
    images = st.text_input("Images: a folder, a .zip, or an s3:// (gs://, hdfs://) prefix", key="ds_images",
                           placeholder="/path/to/images")
    source = st.radio("Labels from", list(SOURCES), format_func=SOURCES.get, key="ds_source",
                      horizontal=True)
    labels_path = upload = None
    padding = 0.0
    if source == "csv":
        labels_path = st.text_input("Labels CSV path", key="ds_csv_path",
                                    help="Columns `path` (relative to the images), `label`, and optionally `split` "
                                         "(train, val, test...).")
        upload = st.file_uploader("…or upload the CSV", type=["csv", "txt"], key="ds_csv_upload")
    elif source == "coco":
        labels_path = st.text_input("COCO JSON path", key="ds_coco_path")
        upload = st.file_uploader("…or upload the COCO JSON", type=["json"], key="ds_coco_upload")
        padding = st.number_input("Context around each box (fraction of its size)", 0.0, 2.0, 0.0, 0.05,
                                  key="ds_padding")
    with st.expander("Index settings"):
        c1, c2, c3, c4 = st.columns(4)
        settings = {
            "image_size": c1.number_input("Image size (px)", 32, 1024, None, 16, key="ds_image_size",
                                          placeholder="auto",
                                          help="empty: auto, the measured best for the backbone "
                                               "(224 px for EfficientNet-Lite0, small images too)"),
            "words": c2.number_input("Visual words", 8, 65536, 1024, 64, key="ds_words"),
            "backbone": c3.text_input("Backbone (timm)", "efficientnet_lite0", key="ds_backbone",
                                      help="Join names with + for an ensemble that finds more label errors, "
                                           "e.g. efficientnet_lite0+efficientnet_lite2 (one pass per member)"),
            "weights": c4.selectbox("Weights", WEIGHTS, key="ds_weights",
                                    help="auto: the project's trained checkpoint when there is one, "
                                         "else the offline ImageNet weights (EfficientNet-Lite0/1/2), "
                                         "else random initialisation"),
        }
        settings["tta_flip"] = st.checkbox("Average each image with its mirror image (twice the extraction)",
                                           value=False, key="ds_tta_flip")
    start_index = st.checkbox("Start indexing right away", value=True, key="ds_start_index")
    if st.button("Create project", type="primary", key="ds_create"):
        _create(target, images, source, labels_path, upload, padding, settings, start_index)


def _images_problem(images: str) -> str | None:
    """Why ``images`` cannot be scanned (None when it can be tried): a local path must exist; a URI is
    opened (one request), so a typo or missing credentials show here, not in the job's log."""
    if not is_remote(images):
        return None if Path(images).expanduser().exists() else f"The images were not found at {text.code(images)}."
    try:
        DataRoot(images)
    except (ValueError, FileNotFoundError, ImageError) as err:
        return f"The images at {text.code(images)} cannot be read: {err}"
    return None


def _create(target: str, images: str, source: str, labels_path: str | None, upload, padding: float,
            settings: dict, start_index: bool) -> None:
    target, images = (target or "").strip(), (images or "").strip()
    if not target or not images:
        st.error("Give both the new project folder and the images (a folder or a .zip).")
        return
    problem = _images_problem(images)
    if problem:
        st.error(problem)
        return
    labels = None
    if source in ("csv", "coco"):
        if upload is not None:
            if source == "csv":
                problem = _check_csv(upload.getvalue())
                if problem:
                    st.error(f"The uploaded CSV {text.code(upload.name)} cannot be used: {problem}.")
                    return
            labels = _save_upload(upload, Path(target).expanduser())
        elif labels_path and labels_path.strip():
            labels = Path(labels_path.strip()).expanduser()
        else:
            st.error(f"Give the {source.upper()} file: a path or an upload.")
            return
    kwargs = {"labels": labels} if source == "csv" else {"coco": labels} if source == "coco" else {}
    try:  # a typo in the settings is refused here; the scan runs in its own process (not the server's)
        IndexSettings().replace(**{k: v for k, v in settings.items() if v is not None})
        Path(target).expanduser().mkdir(parents=True, exist_ok=True)
    except (ValueError, OSError) as err:
        st.error(f"Cannot create the project: {text.plain(err)}")
        return
    previous = state.project_dir()
    state.set_project_dir(target)
    _flash("success", "Scanning started" + (", then indexing (follow it on the Training page)." if start_index
                                            else "."))
    if not background.start_job(target, "index", background.create_args(
            images, padding=padding, settings=settings, start_index=start_index, **kwargs)):
        st.session_state.pop(FLASH_KEY, None)  # not started: say why (above) and stay where we were
        state.set_project_dir(previous)


NO_LABELS = ("No labels yet: these images came without labels. Label them on the **Review** page, where "
             "similar images sit side by side: add the classes under **Classes**, then select a stretch of one "
             "class and press its number key.")


def _overview(project: Project) -> None:
    samples, problems = project.samples, project.problems
    counts = loaders.class_counts(project)
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Samples", f"{len(samples):,}")
    c2.metric("Classes", f"{sidebar.class_count(project):,}")  # with those added on Review
    c3.metric("Problems", f"{len(problems):,}")
    c4.metric("Index", "ready" if project.is_indexed else "not built")
    job = jobs.job_status(project.dir)
    if job.running:
        st.info(f"{jobs.a_job(job.kind).capitalize()} is running in the background: follow it on the "
                "**Training** page.")
    elif not project.is_indexed:
        st.info("This project is not indexed yet: start indexing on the **Training** page.")
    if job.running or not project.is_indexed:
        st.page_link("app_pages/training.py", label="Go to Training", icon=":material/model_training:")
    if project.labels:
        _class_chart(counts)
    else:  # images that came without labels: nothing per class to show yet
        st.info(NO_LABELS)
        if project.is_indexed:
            st.page_link("app_pages/review.py", label="Go to Review", icon=":material/grid_view:")

    health_section.show(project)  # splits, leaks, and the health summary with examples
    if project.labels:
        _examples(project, counts)
    _problems(project)


def _class_chart(counts: pd.DataFrame) -> None:
    st.subheader("Samples per class")
    height = 320 if len(counts) <= 40 else min(1600, 14 * len(counts))
    horizontal = len(counts) > 40  # many classes read better as rows
    shown = counts.assign(label=counts["label"].map(text.html_text))  # Plotly renders HTML in ticks
    fig = px.bar(shown, x="count" if horizontal else "label", y="label" if horizontal else "count",
                 orientation="h" if horizontal else "v", text="count")
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=10, b=10), xaxis_title=None,
                      yaxis_title=None)
    if horizontal:
        fig.update_yaxes(type="category", autorange="reversed")
    else:
        fig.update_xaxes(type="category")
    st.plotly_chart(fig, key="ds_class_counts", width="stretch")


def _problems(project: Project) -> None:
    problems = project.problems
    st.subheader(f"Problems ({len(problems):,})")
    if problems.empty:
        st.success("No problems: every file listed was read.")
    else:
        st.caption("Files that were skipped, and why.")
        by_reason = problems.groupby(["stage", "reason"], dropna=False).size().rename("files")
        if len(by_reason) > 1:
            st.dataframe(by_reason.reset_index().sort_values("files", ascending=False),
                         hide_index=True, key="ds_problem_reasons")
        st.dataframe(problems, hide_index=True, key="ds_problems", width="stretch")


def _examples(project: Project, counts: pd.DataFrame) -> None:
    st.subheader("Examples per class")
    labels = counts["label"].tolist()
    c1, c2 = st.columns([3, 1])
    default = labels[:12]
    chosen = c1.multiselect("Classes", labels, default=default, key="ds_example_classes", format_func=text.visible)
    per_class = c2.slider("Per class", 2, 16, 8, key="ds_per_class")
    examples = loaders.examples_per_class(project, per_class)
    for label in chosen:
        ids = examples.get(label, [])
        st.markdown(f"**{text.plain(label)}** · {int(counts.set_index('label').loc[label, 'count']):,} samples")
        if not ids:
            continue
        paths = loaders.thumbnails(project, ids, 96)
        st.image(paths, width=96, caption=[text.plain(Path(i).name) for i in ids])


st.title("Dataset")
_show_flash()
folder = state.project_dir()
project = None
if folder is not None and not Project.is_project(folder) and background.creation_panel(folder):
    st.stop()  # the scan runs in a job; its progress refreshes above, the page reruns when it ends
if folder is not None:
    try:
        project = state.current_project()
    except Exception as err:
        st.error(text.plain(err) if "not an mlfix project" in str(err)
                 else f"Cannot open {text.code(folder)}: {text.plain(err)}")

if project is None:
    st.info("Open an existing project, or create one from a folder, a zip, a CSV or a COCO file.")
    open_tab, create_tab = st.tabs(["Open a project", "Create a project"])
    with open_tab:
        _open_form()
    with create_tab:
        _create_form()
    st.stop()

st.caption(f"Project {text.code(project.dir)} · images from {text.code(project.source.get('images'))}")
_overview(project)
with st.expander("Open or create another project"):
    open_tab, create_tab = st.tabs(["Open a project", "Create a project"])
    with open_tab:
        _open_form()
    with create_tab:
        _create_form()
