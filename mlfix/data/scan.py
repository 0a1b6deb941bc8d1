"""The sample table: scanning a data root and its labels into one row per image or crop.

A dataset is a *data root* (a folder or a ``.zip``, read through :class:`mlfix.data.images.DataRoot`)
plus a way to label what is in it:

- ImageFolder: each image's parent folder is its label (``root/cat/001.png``);
- a flat folder of images: unlabeled samples;
- a CSV with ``path`` and ``label`` columns, ``path`` relative to the root;
- a COCO JSON file whose boxes become crop samples (category name as label).

Each sample may belong to a *split* (column ``split``, <NA> when none; see :func:`split_of_folder`):
the CSV's optional ``split`` column; an ImageFolder whose top-level folders are *all* split names
(``train/cat/1.png``: split ``train``, label ``cat``; a set where only some top-level folders are
named like splits, or with images at the top level, is read as a plain ImageFolder: a class may well
be called ``test``); a COCO ``file_name`` whose first folder is a split name (``train2017/1.jpg``).
Sample ids stay the paths either way.

:func:`scan` turns one of these into a :class:`Scan`: a ``samples`` table (one row per image or crop,
with a stable ``sample_id``) and a ``problems`` table (every file that was skipped, and why; a COCO box
that reached past the image edge is kept, clipped to the image, with a row of stage ``clipped``).
Nothing outside the data root is ever read: paths with ``..`` or absolute paths become problems.
Nor is anything too big for memory (:mod:`mlfix.limits`): only image headers are read, and a zip
member that declares more than ``zip_member_bytes`` or expands more than ``zip_member_ratio`` times,
or an image of more than ``image_pixels`` pixels, is a problem row (stage ``read``) that says which
limit refused it; the scan goes on.

Example::

    >>> import tempfile
    >>> from PIL import Image
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> for name, width in (("cat/1.png", 16), ("dog/2.png", 16), ("dog/tiny.png", 4)):
    ...     (folder / name).parent.mkdir(exist_ok=True)
    ...     Image.new("RGB", (width, 16)).save(folder / name)
    >>> found = scan(folder)
    >>> found.samples[["sample_id", "label"]].values.tolist()
    [['cat/1.png', 'cat'], ['dog/2.png', 'dog']]
    >>> found.problems["reason"].tolist()
    ['image too small (4x16 px; at least 8 px a side)']
    >>> found.samples["split"].tolist()  # no split folders: no splits
    [<NA>, <NA>]
"""

from __future__ import annotations

import csv
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable

import numpy as np
import pandas as pd

from mlfix.data.images import DataRoot, open_image_header, safe_relative_path
from mlfix.errors import ImageError, UnsafePathError
from mlfix.progress import ProgressFn

SAMPLE_COLUMNS = ["sample_id", "path", "label", "box_x", "box_y", "box_w", "box_h", "width", "height", "status",
                  "split"]
PROBLEM_COLUMNS = ["sample_id", "path", "stage", "reason"]
NOTE_STAGES = ("clipped",)  # problems rows about samples that were kept (the rest were skipped)
# A split folder: a split name, alone or with a number (a year, a version): train, val, valid, validation,
# test, dev; train2017, val_2, test-01. Case-insensitive.
SPLIT_FOLDER = re.compile(r"(train|val|valid|validation|test|dev)([-_]?\d+)?", re.IGNORECASE)
SPLIT_MAX_CHARS = 100


@dataclass
class Scan:
    """The result of :func:`scan`: usable samples and the problems found on the way."""

    samples: pd.DataFrame
    problems: pd.DataFrame
    source: dict = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return sorted(self.samples["label"].dropna().unique().tolist())


def is_split_folder(name: str) -> bool:
    """Whether a folder name names a split (:data:`SPLIT_FOLDER`).

    >>> [is_split_folder(n) for n in ("train", "Val", "train2017", "val_2", "training", "cats", "dev-1")]
    [True, True, True, True, False, False, True]
    """
    return SPLIT_FOLDER.fullmatch(name) is not None


def with_split(samples: pd.DataFrame) -> pd.DataFrame:
    """``samples`` with a ``split`` column: as it is, or all <NA> (a table scanned before splits existed)."""
    if "split" in samples.columns:
        return samples
    return samples.assign(split=pd.Series(pd.NA, index=samples.index, dtype="string"))


def problems_frame(rows: Iterable[dict]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=PROBLEM_COLUMNS).astype(
        {"sample_id": "string", "path": "string", "stage": "string", "reason": "string"})


def scan(images: str | os.PathLike, labels: str | os.PathLike | None = None,
         coco: str | os.PathLike | None = None, padding: float = 0.0,
         progress: ProgressFn | None = None, threads: int = 8) -> Scan:
    """Build the sample table for a folder or zip of images.

    Args:
        images: a folder or a ``.zip`` of images (the data root).
        labels: optional CSV with ``path`` and ``label`` columns, paths relative to ``images``, and
            optionally a ``split`` column (empty: no split).
        coco: optional COCO JSON; each annotation box becomes a crop sample labelled with its
            category name. Mutually exclusive with ``labels``.
        padding: for COCO crops, extra context around each box as a fraction of its size.
        progress: called as ``progress(done, total)`` while image headers are read.
        threads: header-reading threads (IO bound).

    Returns:
        A :class:`Scan`; ``samples`` has the columns in ``SAMPLE_COLUMNS``.
    """
    if labels is not None and coco is not None:
        raise ValueError("give either a labels CSV or a COCO file, not both")
    if padding < 0:
        raise ValueError(f"padding must be >= 0 (a fraction of the box size), got {padding}")
    root = DataRoot(images)
    problems: list[dict] = []
    if coco is not None:
        rows = _rows_from_coco(Path(coco), padding, problems)
    elif labels is not None:
        rows = _rows_from_csv(Path(labels), problems)
    else:
        rows = _rows_from_folder(root)
    rows = _drop_unsafe_and_duplicates(rows, problems)
    samples = _check_headers(root, rows, problems, progress, threads)
    source = {"images": str(root.location), "labels": str(Path(labels).resolve()) if labels else None,
              "coco": str(Path(coco).resolve()) if coco else None, "padding": padding}
    return Scan(samples=samples, problems=problems_frame(problems), source=source)


def _rows_from_folder(root: DataRoot) -> list[dict]:
    """One row per image; split-foldered when every image lies under a top-level split folder."""
    paths = root.list_images()
    parts = [PurePosixPath(path).parts for path in paths]
    by_split = bool(parts) and all(len(p) > 1 and is_split_folder(p[0]) for p in parts)
    rows = []
    for path, part in zip(paths, parts):
        inner = part[1:] if by_split else part
        rows.append({"sample_id": path, "path": path, "label": inner[-2] if len(inner) > 1 else None,
                     "split": part[0] if by_split else None})
    return rows


def _rows_from_csv(csv_path: Path, problems: list[dict]) -> list[dict]:
    """Rows of a labels CSV (UTF-8, a BOM allowed); a row that cannot be read is a problem, never
    dropped silently (wrong number of fields, a field over the csv module's limit, a quote not closed)."""
    if not csv_path.is_file():
        raise FileNotFoundError(f"labels CSV not found: {csv_path}")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            lines = list(_csv_lines(handle))
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"cannot parse labels CSV {csv_path.name}: {err}") from None
    if not lines or isinstance(lines[0][1], str):
        raise ValueError(f"cannot parse labels CSV {csv_path.name}: "
                         f"{lines[0][1] + ' in its header' if lines else 'it is empty'}")
    header = [str(c).strip().lower() for c in lines[0][1]]
    if "path" not in header:
        raise ValueError(f"labels CSV {csv_path.name} needs a 'path' column; it has {header}")
    at_path, at_label = header.index("path"), header.index("label") if "label" in header else None
    at_split = header.index("split") if "split" in header else None
    rows = []
    for number, fields in lines[1:]:
        if isinstance(fields, str) or len(fields) != len(header):
            reason = fields if isinstance(fields, str) else (
                f"row has {len(fields)} fields, the header has {len(header)}"
                + ("; a quote is not closed" if any("\n" in f for f in fields) else ""))
            path = fields[0][:200] if not isinstance(fields, str) and fields else None
            problems.append({"sample_id": None, "path": path, "stage": "csv", "reason": f"line {number}: {reason}"})
            continue
        path, label = fields[at_path].strip(), fields[at_label].strip() if at_label is not None else ""
        if not path:
            problems.append({"sample_id": None, "path": None, "stage": "csv", "reason": "empty path"})
            continue
        split = fields[at_split].strip() if at_split is not None else ""
        if len(split) > SPLIT_MAX_CHARS or any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in split):
            problems.append({"sample_id": None, "path": path, "stage": "csv",
                             "reason": f"line {number}: the split {split[:40]!r} is not a split name "
                                       f"(text of at most {SPLIT_MAX_CHARS} characters, no control characters)"})
            continue
        rows.append({"sample_id": path, "path": path, "label": label or None, "split": split or None})
    return rows


def _csv_lines(handle) -> Iterable[tuple[int, list[str] | str]]:
    """``(line number, fields)`` per row, or ``(line number, why it cannot be read)``; blank rows skipped."""
    reader = csv.reader(handle)
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            if "field larger than field limit" not in str(err):
                raise
            yield reader.line_num, f"a field is longer than {csv.field_size_limit():,} characters"
            continue
        if fields:
            yield reader.line_num, fields


def _rows_from_coco(coco_path: Path, padding: float, problems: list[dict]) -> list[dict]:
    try:
        coco = json.loads(coco_path.read_text())
        images = {img["id"]: img for img in coco["images"]}
        categories = {cat["id"]: cat["name"] for cat in coco["categories"]}
        annotations = coco["annotations"]
    except FileNotFoundError:
        raise FileNotFoundError(f"COCO file not found: {coco_path}") from None
    except (ValueError, KeyError, TypeError) as err:  # JSON, UTF-8, or the wrong shape
        raise ValueError(f"not a valid COCO file ({coco_path.name}): {err!r}") from None
    if not isinstance(annotations, list):
        raise ValueError(f"not a valid COCO file ({coco_path.name}): 'annotations' is not a list")
    rows = []
    for ann in annotations:
        row = _coco_row(ann, images, categories, padding)
        (rows if "box" in row else problems).append(row)
    return rows


def _file_name(images: dict, ann) -> str | None:
    """The ``file_name`` of an annotation's image, None when there is no usable one."""
    try:
        image = images.get(ann.get("image_id")) if isinstance(ann, dict) else None
    except TypeError:  # an unhashable image_id
        return None
    name = image.get("file_name") if isinstance(image, dict) else None
    return name if isinstance(name, str) and name else None


def _coco_row(ann, images: dict, categories: dict, padding: float) -> dict:
    """One crop sample from a COCO annotation, or (without a ``box``) the problems row saying why not."""
    name = _file_name(images, ann)
    bbox = ann.get("bbox") if isinstance(ann, dict) else None
    ann_id = ann.get("id") if isinstance(ann, dict) else None
    if name is None or not isinstance(bbox, list) or len(bbox) != 4 or not all(_number(v) for v in bbox):
        return {"sample_id": f"annotation {ann_id}", "path": None, "stage": "coco",
                "reason": "annotation without a known image or a 4-number bbox"}
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        return {"sample_id": f"{name}#{ann_id}", "path": name, "stage": "coco", "reason": f"empty box {bbox}"}
    image = images[ann.get("image_id")]
    size = (image.get("width"), image.get("height"))
    try:
        label = categories.get(ann.get("category_id"))
    except TypeError:  # an unhashable category_id
        label = None
    folders = PurePosixPath(name).parts[:-1]
    return {"sample_id": f"{name}#{ann_id}", "path": name, "label": None if label is None else str(label),
            "split": folders[0] if folders and is_split_folder(folders[0]) else None, "box": (x, y, w, h), "padding": padding,
            "coco_size": size if all(_positive(v) for v in size) else None, "coco_annotation_id": ann_id}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _fit_box(box: tuple[float, float, float, float], padding: float,
             size: tuple[float, float]) -> tuple[tuple[float, float, float, float] | None, str | None]:
    """A COCO box ``(x, y, w, h)`` padded and clipped to an image of ``size`` (width, height).

    Returns ``(box, note)``: ``note`` says how a box that reached past the image edge was clipped
    (padding that reaches past the edge is clipped without a note); ``box`` is None when nothing of
    it lies inside the image.

    >>> _fit_box((90, 70, 20, 20), 0.0, (100, 80))
    ((90.0, 70.0, 10.0, 10.0), 'box [90, 70, 20, 20] reaches past the edge of the 100x80 image; clipped to [90, 70, 10, 10]')
    >>> _fit_box((10, 10, 20, 20), 0.5, (100, 80))
    ((0.0, 0.0, 40.0, 40.0), None)
    """
    x, y, w, h = box
    width, height = float(size[0]), float(size[1])
    cx0, cy0, cx1, cy1 = max(0.0, x), max(0.0, y), min(width, x + w), min(height, y + h)
    if cx1 - cx0 < 1 or cy1 - cy0 < 1:
        return None, None
    note = None
    if (cx0, cy0, cx1, cy1) != (x, y, x + w, y + h):
        clipped = [cx0, cy0, cx1 - cx0, cy1 - cy0]
        note = (f"box {_numbers(box)} reaches past the edge of the {size[0]:g}x{size[1]:g} image; "
                f"clipped to {_numbers(clipped)}")
    pad_w, pad_h = w * padding, h * padding  # context from the box as given, then kept in the image
    x0, y0 = max(0.0, x - pad_w), max(0.0, y - pad_h)
    x1, y1 = min(width, x + w + pad_w), min(height, y + h + pad_h)
    return (x0, y0, x1 - x0, y1 - y0), note


def _numbers(values) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"


def _drop_unsafe_and_duplicates(rows: list[dict], problems: list[dict]) -> list[dict]:
    kept, seen = [], set()
    for row in rows:
        try:
            row["path"] = safe_relative_path(row["path"])
        except UnsafePathError as err:
            problems.append({"sample_id": row["sample_id"], "path": row["path"], "stage": "path",
                             "reason": str(err)})
            continue
        if "box" not in row:
            row["sample_id"] = row["path"]
        if row["sample_id"] in seen:
            problems.append({"sample_id": row["sample_id"], "path": row["path"], "stage": "csv",
                             "reason": "duplicate row: the sample is listed more than once"})
            continue
        seen.add(row["sample_id"])
        kept.append(row)
    return kept


def _check_headers(root: DataRoot, rows: list[dict], problems: list[dict],
                   progress: ProgressFn | None, threads: int) -> pd.DataFrame:
    """Read every distinct file's header once (threads: IO bound) and keep the readable rows."""
    paths = sorted({row["path"] for row in rows})
    sizes: dict[str, tuple[int, int] | str] = {}

    def header(path: str) -> tuple[str, tuple[int, int] | str]:
        try:  # the header only: a member refused by the limits is never read, the rest only in part
            with root.open(path) as handle:
                return path, open_image_header(handle).size
        except ImageError as err:
            return path, str(err)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for done, (path, result) in enumerate(pool.map(header, paths), start=1):
            sizes[path] = result
            if progress and (done % 256 == 0 or done == len(paths)):
                progress(done, len(paths))
    records = []
    for row in rows:
        result = sizes[row["path"]]
        if isinstance(result, str):
            problems.append({"sample_id": row["sample_id"], "path": row["path"], "stage": "read",
                             "reason": result})
            continue
        width, height = result
        box = row.get("box")
        if box is not None:
            size = row.get("coco_size") or (width, height)
            box, note = _fit_box(box, row.get("padding", 0.0), size)
            if box is None:
                problems.append({"sample_id": row["sample_id"], "path": row["path"], "stage": "coco",
                                 "reason": f"box {_numbers(row['box'])} lies outside the "
                                           f"{size[0]:g}x{size[1]:g} image"})
                continue
            if note:  # kept, clipped: said in the problems table
                problems.append({"sample_id": row["sample_id"], "path": row["path"], "stage": "clipped",
                                 "reason": note})
        box = box or (np.nan, np.nan, np.nan, np.nan)
        records.append({"sample_id": row["sample_id"], "path": row["path"], "label": row["label"],
                        "box_x": box[0], "box_y": box[1], "box_w": box[2], "box_h": box[3],
                        "width": width, "height": height, "status": "ok", "split": row.get("split")})
    samples = pd.DataFrame(records, columns=SAMPLE_COLUMNS)
    return samples.astype({"sample_id": "string", "path": "string", "label": "string",
                           "box_x": "float64", "box_y": "float64", "box_w": "float64",
                           "box_h": "float64", "width": "int64", "height": "int64",
                           "status": "string", "split": "string"})
