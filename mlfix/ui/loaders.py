"""Cached loaders for the pages: nothing heavy is recomputed on a rerun.

Every cached function takes the project folder and a *stamp* of the files it reads (their mtimes
and sizes), so a cache entry lives exactly as long as the files that made it: re-indexing a
project changes the stamp and the next rerun loads the new artifacts.

Objects that are large or hold file handles (the project, memory-mapped arrays) are cached with
``st.cache_resource`` (shared, never copied: treat them as read-only); small derived tables with
``st.cache_data``.

Example (in a page)::

    project = loaders.open_project(str(folder))
    counts = loaders.class_counts(project)
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import streamlit as st

from mlfix.ui import imaging

if TYPE_CHECKING:
    from mlfix.project import Project
    from mlfix.review.store import ReviewStore

PROJECT_FILES = ("mlfix.toml", "samples.parquet", "problems.parquet")
CHUNK = 16384  # rows per pass over big arrays
INDEX_FILES = ("features/pooled.npy", "features/words.npy", "codebook/bags.npy",
               "codebook/centroids.npy")


def stamp(project_dir: str | os.PathLike, names: tuple[str, ...]) -> tuple:
    """``(name, mtime_ns, size)`` per file (``None`` fields when missing): a cache key part."""
    folder = Path(project_dir)
    out = []
    for name in names:
        try:
            info = (folder / name).stat()
            out.append((name, info.st_mtime_ns, info.st_size))
        except OSError:
            out.append((name, None, None))
    return tuple(out)


def project_stamp(project_dir: str | os.PathLike) -> tuple:
    return stamp(project_dir, PROJECT_FILES + INDEX_FILES)


def open_project(project_dir: str | os.PathLike):
    """The project at ``project_dir`` (cached while its files are unchanged).

    Raises ``mlfix.project.NotAProjectError`` for a folder that is not a project.
    """
    folder = str(Path(project_dir).expanduser().resolve())
    return _open_project(folder, project_stamp(folder))


@st.cache_resource(show_spinner=False, max_entries=8)
def _open_project(project_dir: str, files: tuple):
    from mlfix.project import Project

    return Project.open(project_dir)


# Cached functions take the stamp as ``files`` (no leading underscore: Streamlit must hash it).
def _key(project: Project) -> tuple[str, tuple]:
    folder = str(project.dir)
    return folder, project_stamp(folder)


# ----------------------------------------------------------------------------------------- dataset


def class_counts(project: Project) -> pd.DataFrame:
    """``label, count`` per class, largest first (unlabeled samples as ``(no label)``)."""
    return _class_counts(*_key(project))


@st.cache_data(show_spinner=False, max_entries=16)
def _class_counts(project_dir: str, files: tuple) -> pd.DataFrame:
    samples = open_project(project_dir).samples
    labels = samples["label"].astype("object").where(samples["label"].notna(), "(no label)")
    counts = labels.value_counts().rename_axis("label").reset_index(name="count")
    return counts.sort_values(["count", "label"], ascending=[False, True], ignore_index=True)


def examples_per_class(project: Project, per_class: int, seed: int = 0) -> dict[str, list[str]]:
    """Up to ``per_class`` sample_ids per class, drawn at random (stable for a seed)."""
    return _examples_per_class(*_key(project), per_class, seed)


@st.cache_data(show_spinner=False, max_entries=16)
def _examples_per_class(project_dir: str, files: tuple, per_class: int, seed: int) -> dict:
    samples = open_project(project_dir).samples
    labels = samples["label"].astype("object").where(samples["label"].notna(), "(no label)")
    rng = np.random.default_rng(seed)
    out = {}
    for label, index in samples.groupby(labels, sort=True).groups.items():
        ids = samples.loc[index, "sample_id"].astype(str).to_numpy()
        pick = rng.choice(len(ids), size=min(per_class, len(ids)), replace=False)
        out[str(label)] = ids[np.sort(pick)].tolist()
    return out


def thumbnails(project: Project, sample_ids: list[str], size: int = 96) -> list:
    """Things ``st.image`` shows, one per id: paths of disk-cached JPEGs (``<project>/thumbs``,
    made in parallel on first use; a placeholder for an unreadable image)."""
    from mlfix.data.thumbnails import for_project

    return [str(path) for path in for_project(project, size).ensure_many(list(sample_ids))]


# ----------------------------------------------------------------------------------------- codebook


@st.cache_resource(show_spinner=False, max_entries=4)
def _word_grids(project_dir: str, files: tuple) -> np.ndarray:
    return open_project(project_dir).word_grids()


@st.cache_resource(show_spinner=False, max_entries=4)
def _bags(project_dir: str, files: tuple) -> np.ndarray:
    return np.asarray(open_project(project_dir).bags())


def word_grids(project: Project) -> np.ndarray:
    """``(N, h, w)`` uint16 word per cell, row-aligned with ``project.samples`` (memory-mapped)."""
    return _word_grids(*_key(project))


def bags(project: Project) -> np.ndarray:
    return _bags(*_key(project))


def word_frequency(project: Project) -> pd.DataFrame:
    """Per visual word: ``word, images`` (how many images contain it), ``cells`` (how many cells)."""
    return _word_frequency(*_key(project))


@st.cache_data(show_spinner="Counting visual words…", max_entries=4)
def _word_frequency(project_dir: str, files: tuple) -> pd.DataFrame:
    project = open_project(project_dir)
    k = project.settings.words
    packed = _bags(project_dir, files)
    images = np.zeros(k, dtype=np.int64)
    # Chunked: unpacked bags are N x k bytes (1 GB for a million images and 1024 words).
    for start in range(0, len(packed), CHUNK):
        bits = np.unpackbits(np.asarray(packed[start:start + CHUNK]), axis=1, bitorder="little")
        images += bits[:, :k].sum(axis=0, dtype=np.int64)
    grids = _word_grids(project_dir, files)
    cells = np.zeros(k, dtype=np.int64)
    for start in range(0, len(grids), CHUNK):
        cells += np.bincount(np.asarray(grids[start:start + CHUNK]).ravel(), minlength=k)[:k]
    return pd.DataFrame({"word": np.arange(k), "images": images, "cells": cells})


def images_with_word(project: Project, word: int) -> np.ndarray:
    """Row indices (into ``project.samples``) of the images that contain ``word`` (from the bags)."""
    return _images_with_word(*_key(project), int(word))


@st.cache_data(show_spinner=False, max_entries=64)
def _images_with_word(project_dir: str, files: tuple, word: int) -> np.ndarray:
    packed = _bags(project_dir, files)
    return np.flatnonzero((packed[:, word >> 3] >> (word & 7)) & 1)


def word_classes(project: Project, word: int) -> pd.DataFrame:
    """``label, images, share``: in how many images of each class the word occurs."""
    return _word_classes(*_key(project), int(word))


@st.cache_data(show_spinner=False, max_entries=64)
def _word_classes(project_dir: str, files: tuple, word: int) -> pd.DataFrame:
    samples = open_project(project_dir).samples
    rows = _images_with_word(project_dir, files, word)
    labels = samples["label"].astype("object").where(samples["label"].notna(), "(no label)")
    hits = labels.iloc[rows].value_counts()
    totals = labels.value_counts()
    table = pd.DataFrame({"label": hits.index.astype(str), "images": hits.to_numpy()})
    table["share"] = table["images"] / totals.reindex(hits.index).to_numpy()
    return table.sort_values(["images", "label"], ascending=[False, True], ignore_index=True)


def word_patches(project: Project, word: int, limit: int = 48, display: int = 64, seed: int = 0) -> list[dict]:
    """Up to ``limit`` image patches where ``word`` fires, one per image: JPEG bytes + where from."""
    return _word_patches(*_key(project), int(word), limit, display, seed)


@st.cache_data(show_spinner="Cutting patches…", max_entries=32)
def _word_patches(project_dir: str, files: tuple, word: int, limit: int, display: int,
                  seed: int) -> list[dict]:
    project = open_project(project_dir)
    rows = _images_with_word(project_dir, files, word)
    if len(rows) > limit:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=limit, replace=False))
    grids = _word_grids(project_dir, files)
    image_size = project.image_size
    samples = project.samples
    out = []
    for row in rows.tolist():
        grid = np.asarray(grids[row])
        cells = np.argwhere(grid == word)
        if len(cells) == 0:  # the bag and the grid disagree only if the index is mid-rewrite
            continue
        r, c = (int(v) for v in cells[len(cells) // 2])
        sample_id = str(samples["sample_id"].iloc[row])
        try:
            square = imaging.model_view(imaging.server_image(project, sample_id), image_size)
        except Exception:
            continue  # an unreadable image: skip it rather than fail the whole grid
        patch = imaging.cut_cell(square, r, c, grid.shape, display=display)
        out.append({"sample_id": sample_id, "label": str(samples["label"].iloc[row]), "row": r,
                    "col": c, "count": int(len(cells)), "jpeg": _jpeg(patch)})
    return out


def word_overlay(project: Project, sample_id: str, display: int = 448, highlight: int | None = None) -> tuple[bytes, np.ndarray]:
    """The image as the model saw it with its word grid drawn on; returns ``(png, grid)``."""
    return _word_overlay(*_key(project), sample_id, display, highlight)


@st.cache_data(show_spinner=False, max_entries=64)
def _word_overlay(project_dir: str, files: tuple, sample_id: str, display: int,
                  highlight: int | None) -> tuple[bytes, np.ndarray]:
    project = open_project(project_dir)
    row = sample_row(project, sample_id)
    grid = np.asarray(_word_grids(project_dir, files)[row])
    square = imaging.model_view(imaging.server_image(project, sample_id), project.image_size)
    image = imaging.overlay_words(square, grid, display=display, highlight=highlight)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), grid


def focus_overlay(project: Project, sample_id: str, display: int = 448) -> tuple[bytes, np.ndarray]:
    """The image as the model saw it with each cell lit by its weight in the combined order (the
    centre prior times its word's idf: :mod:`mlfix.pipeline.ordering.weighted`); ``(png, weights)``."""
    return _focus_overlay(*_key(project), sample_id, display)


@st.cache_data(show_spinner=False, max_entries=64)
def _focus_overlay(project_dir: str, files: tuple, sample_id: str, display: int) -> tuple[bytes, np.ndarray]:
    from mlfix.pipeline.ordering.weighted import centre_weights

    project = open_project(project_dir)
    grid = np.asarray(_word_grids(project_dir, files)[sample_row(project, sample_id)])
    weights = centre_weights(*grid.shape) * _word_idf(project_dir, files)[grid]
    square = imaging.model_view(imaging.server_image(project, sample_id), project.image_size)
    buffer = io.BytesIO()
    imaging.overlay_focus(square, weights, display=display).save(buffer, format="PNG")
    return buffer.getvalue(), weights


@st.cache_data(show_spinner="Weighing visual words…", max_entries=4)
def _word_idf(project_dir: str, files: tuple) -> np.ndarray:
    """(k,) idf of each word over the readable images, as the combined order computes it."""
    from mlfix.pipeline.ordering.weighted import document_frequency, inverse_document_frequency

    project = open_project(project_dir)
    ok = np.asarray(project.readable(), dtype=bool)
    frequency = document_frequency(_word_grids(project_dir, files), project.settings.words, ok)
    return inverse_document_frequency(frequency, int(ok.sum()))


def model_view_png(project: Project, sample_id: str, display: int = 320) -> bytes:
    """The image as the model saw it (resized, center-cropped), scaled to ``display`` px, as PNG."""
    return _model_view_png(*_key(project), sample_id, display)


@st.cache_data(show_spinner=False, max_entries=64)
def _model_view_png(project_dir: str, files: tuple, sample_id: str, display: int) -> bytes:
    project = open_project(project_dir)
    square = imaging.model_view(imaging.server_image(project, sample_id), project.image_size)
    buffer = io.BytesIO()
    square.resize((display, display)).save(buffer, format="PNG")
    return buffer.getvalue()


def sample_row(project: Project, sample_id: str) -> int:
    """Row index of ``sample_id`` in ``project.samples``; ``KeyError`` if it is not there."""
    return project.row_of(sample_id)


def _jpeg(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def clear() -> None:
    """Forget every cached project artifact (after the project was rebuilt in place)."""
    for fn in (_open_project, _word_grids, _bags):
        fn.clear()
    for fn in (_class_counts, _examples_per_class, _word_frequency, _model_view_png,
               _images_with_word, _word_classes, _word_patches, _word_overlay):
        fn.clear()
    _export_table.clear()
    export_bytes.clear()


# ----------------------------------------------------------------------------------------- progress


def progress_records(path: str | os.PathLike) -> list[dict]:
    """The records of a progress log (``mlfix.progress.read_progress``), re-read only when the
    file changed: a long training run writes tens of thousands of lines."""
    return _progress_records(str(path), stamp(Path(path).parent, (Path(path).name,)))


@st.cache_data(show_spinner=False, max_entries=16)
def _progress_records(path: str, files: tuple) -> list[dict]:
    from mlfix.progress import read_progress

    return read_progress(path)


# ----------------------------------------------------------------------------------------- reviews


def review_store(project: Project) -> ReviewStore:
    """The project's decisions store (``project.reviews``: one per open project, it holds a pool)."""
    return project.reviews


def export_table(project: Project):
    """``(table, last_decision_id)``: :func:`mlfix.review.export.export_table` of the current decisions,
    recomputed only when a decision was added (or the samples or the class list changed)."""
    from mlfix.review import classes

    last_id = review_store(project).last_id()
    folder, files = _key(project)
    return _export_table(folder, files + (classes.version(review_store(project)),), last_id), last_id


@st.cache_data(show_spinner=False, max_entries=8)
def _export_table(project_dir: str, files: tuple, last_id: int) -> pd.DataFrame:
    from mlfix.review import export

    samples = open_project(project_dir).samples
    store = open_project(project_dir).reviews
    state = store.current_state(samples[["sample_id", "label"]]) if last_id or files[-1] else None  # (class version)
    return export.export_table(samples, state)


@st.cache_data(show_spinner=False, max_entries=16)
def export_bytes(project_dir: str, files: tuple, last_id: int, fmt: str, drop_duplicates: bool = False) -> bytes:
    """The export file in ``fmt`` (csv, json, coco), without the duplicates when asked; keyed like :func:`export_table`."""
    from mlfix.review import export

    project = open_project(project_dir)
    table = _export_table(project_dir, files, last_id)
    from mlfix.review import classes

    return export.export_bytes(table, fmt, source=project.source, samples=project.samples,
                               drop_duplicates=drop_duplicates, project={"dir": project_dir, "source": project.source, "last_decision_id": last_id,
                                        **classes.export_info(project.reviews, project.labels)})
