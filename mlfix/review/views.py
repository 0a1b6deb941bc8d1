"""Published views: named lists of samples made in Python, shown in the Review page's view picker.

A view is one JSON file, ``<project>/views/<safe name>.json``, written atomically (the app may read
it at any moment)::

    {"name": "suspects round 1", "sample_ids": ["cat/001.png", ...], "note": "...", "created": 1764272000.0}

Example (from a notebook, ``project.publish_view(name, ids, note=...)`` does this for a project):
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = publish_view(folder, "suspects", ["cat/001.png", "dog/007.png"], note="top kNN scores",
    ...                  known_ids=["cat/001.png", "cat/002.png", "dog/007.png"])
    >>> list_views(folder)["suspects"]["sample_ids"]
    ['cat/001.png', 'dog/007.png']
    >>> publish_view(folder, "typo", ["cat/010.png"], known_ids=["cat/001.png"])
    Traceback (most recent call last):
    ...
    ValueError: 1 sample_id(s) are not in this project: 'cat/010.png'; use ids from project.samples['sample_id']
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Iterable
from mlfix.atomic import write_json_atomic

VIEWS_DIR = "views"
MAX_NAME = 120


def validate_name(name: str) -> str:
    """A view name, stripped; ``ValueError`` saying why when it cannot be one."""
    if not isinstance(name, str):
        raise ValueError(f"a view name must be a string, got {type(name).__name__}")
    text = name.strip()
    if not text:
        raise ValueError("a view name must not be empty")
    if len(text) > MAX_NAME:
        raise ValueError(f"a view name must be at most {MAX_NAME} characters (got {len(text)})")
    if any(not ch.isprintable() for ch in text):
        raise ValueError(f"a view name must be printable text (no control characters): {text!r}")
    return text


def safe_filename(name: str) -> str:
    """A file name for a view: a readable slug plus a short hash of the exact name.

    The hash keeps names that differ only in punctuation or case apart.

    >>> safe_filename("Suspects: round 1/2")
    'Suspects-round-1-2-0bcfbb3b.json'
    """
    text = validate_name(name)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:60] or "view"
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
    return f"{slug}-{digest}.json"


def _known_sample_ids(project_dir: Path) -> set[str]:
    samples = project_dir / "samples.parquet"
    if not samples.exists():
        raise ValueError(f"{project_dir} is not an mlfix project (no samples.parquet); "
                         "create it with Project.create or `mlfix index` first")
    import pandas as pd

    return set(pd.read_parquet(samples, columns=["sample_id"])["sample_id"].astype(str))


def publish_view(project_dir: str | os.PathLike, name: str, sample_ids: Iterable[str], note: str = "",
                 known_ids: Iterable[str] | None = None) -> Path:
    """Write (or replace) the view ``name``; returns the file written.

    Args:
        project_dir: the project folder.
        name: the name shown in the view picker (any printable text, at most 120 characters).
        sample_ids: the samples, in the order to show them (duplicates are dropped).
        note: free text shown with the view.
        known_ids: the project's sample_ids, when the caller has them (else read from
            ``samples.parquet``).

    Raises:
        ValueError: a bad name, no samples, or sample_ids the project does not have (a few listed).
    """
    folder = Path(project_dir)
    text = validate_name(name)
    if isinstance(sample_ids, str):
        raise ValueError("sample_ids must be a list of ids, not one string")
    ids = list(dict.fromkeys(str(s) for s in sample_ids))
    if not ids:
        raise ValueError(f"view {text!r} needs at least one sample_id")
    known = set(map(str, known_ids)) if known_ids is not None else _known_sample_ids(folder)
    unknown = [s for s in ids if s not in known]
    if unknown:
        shown = ", ".join(repr(s) for s in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise ValueError(f"{len(unknown)} sample_id(s) are not in this project: {shown}{more}; "
                         "use ids from project.samples['sample_id']")
    record = {"name": text, "sample_ids": ids, "note": str(note or ""), "created": time.time()}
    path = folder / VIEWS_DIR / safe_filename(text)
    write_json_atomic(path, record)
    return path


def list_views(project_dir: str | os.PathLike) -> dict[str, dict]:
    """``{name: {"sample_ids", "note", "created"}}``, oldest first; unreadable files are skipped."""
    folder = Path(project_dir) / VIEWS_DIR
    views = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text())
            views.append((float(record.get("created", 0)), str(record["name"]),
                          {"sample_ids": [str(s) for s in record["sample_ids"]],
                           "note": str(record.get("note", "")), "created": float(record.get("created", 0))}))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a foreign or damaged file must not break the page
    return {name: view for _, name, view in sorted(views, key=lambda v: (v[0], v[1]))}


def delete_view(project_dir: str | os.PathLike, name: str) -> bool:
    """Remove the view ``name``; False when there was none."""
    path = Path(project_dir) / VIEWS_DIR / safe_filename(name)
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False
