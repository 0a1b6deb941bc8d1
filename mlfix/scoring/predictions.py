"""The user's own model: read, check and align predicted probabilities and embeddings made elsewhere.

Most users already have a trained classifier. Its out-of-sample predicted probabilities feed the
probe-free checks (``loss``, ``cleanlab``, the confusion matrix) in place of mlfix's linear probe, and
its embeddings replace the pooled backbone vectors for the kNN vote and the duplicates, as in
cleanlab's ``find_label_issues(labels, pred_probs)`` and Datalab's ``features=``.

Formats (:func:`read_source` reads a file, an array or a table):

- **probabilities**: a table with a ``sample_id`` column and one numeric column per class (CSV,
  parquet, or a DataFrame), or an ``.npy``/array of shape (N, C) whose columns are the sorted class
  names of the project's given labels (``project.labels``) unless ``classes`` names them. The rows of
  an array follow ``project.samples`` (N = every sample), or the readable samples in that order
  (N = the readable count): any other N is refused, as is an ambiguous order.
- **embeddings**: an ``.npz`` with ``embeddings`` (N, D) and ``sample_id`` (N,), or an ``.npy`` (N, D)
  with its ids from a file (a CSV with a ``sample_id`` column, a ``.npy`` of strings, or one id per
  line), or an ``.npy`` whose rows follow ``project.samples`` / the readable samples as above. Of an
  ``.npz`` only these two arrays are read; nothing is ever unpickled (object arrays are refused).

Checks (each a :class:`~mlfix.errors.PredictionsError` that says what to fix): the shape, unknown
sample ids (the first few quoted), duplicated ids, samples that need a row and have none (the
readable ones), classes the labels use that the columns lack and columns that are no class of the
labels, NaN or infinite values, negative values or values above 1, rows that do not sum to 1 (within
:data:`SUM_TOLERANCE`; closer rows are renormalised). Logits are refused unless ``logits=True``, which
applies a softmax: guessing would silently turn badly scaled probabilities into other ones.

>>> ids = np.array(["a", "b", "c"], dtype=object)
>>> table = probabilities_frame(np.array([[.9, .1], [.2, .8], [.5, .5]]), ids, classes=["cat", "dog"])
>>> table = check_probabilities(table, ids, ids, ["cat", "dog"])
>>> align_probabilities(table, np.array(["c", "a"]), ["dog", "cat"]).probs.tolist()
[[0.5, 0.5], [0.9, 0.1]]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mlfix.errors import PredictionsError
from mlfix.scoring.probe import OutOfFold, aligned_out_of_fold

ID = "sample_id"
SUM_TOLERANCE = 0.01  # rows summing to 1 +- this are renormalised (float16 export, rounding in a CSV)
QUOTED = 3  # how many offending ids an error quotes
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")
SUFFIXES = (".npy", ".npz") + TABLE_SUFFIXES
NPZ_ARRAYS = ("embeddings", ID)  # the members of an .npz that are read


def read_source(source, what: str = "predictions") -> np.ndarray | pd.DataFrame | dict:
    """A file as an array (``.npy``), a dict of arrays (``.npz``) or a table (CSV, TSV, parquet); an
    array or a DataFrame is returned as is."""
    if isinstance(source, (np.ndarray, pd.DataFrame)):
        return source
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise PredictionsError(f"{what} file {path} is not one of {', '.join(SUFFIXES)}: save them as .npy "
                               f"(N x columns) or as a CSV with a {ID} column")
    if not path.is_file():
        raise PredictionsError(f"{what} file {path} does not exist")
    try:
        return _read_file(path, suffix)
    except PredictionsError:
        raise
    except (ValueError, OSError, EOFError) as err:  # a pickled array, a damaged or non-UTF-8 file
        raise PredictionsError(f"cannot read {what} file {path}: {_why(err)}") from err


def _read_file(path: Path, suffix: str):
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix == ".npz":  # only the arrays used are decompressed: another member may be huge
        with np.load(path, allow_pickle=False) as held:
            return {name: held[name] if name in NPZ_ARRAYS else None for name in held.files}
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype={ID: str})


def _why(err: Exception) -> str:
    """What went wrong reading a file, with the fix for the usual cause (object arrays need pickle)."""
    text = str(err).strip() or type(err).__name__
    if "pickle" in text or "Object arrays" in text:
        return ("it holds Python objects (pickled), which mlfix never loads; save numbers as float and ids "
                "as text: np.asarray(ids, dtype=str)")
    return text


def array_ids(n_rows: int, sample_ids: np.ndarray, readable: np.ndarray | None, what: str) -> np.ndarray:
    """The sample ids of an array's rows: every sample in table order (``n_rows`` = all), or the
    readable ones in that order (``n_rows`` = their count); anything else is an error."""
    n_all = len(sample_ids)
    if n_rows == n_all:
        return np.asarray(sample_ids, dtype=object)
    n_ok = int(np.count_nonzero(readable)) if readable is not None else None
    if n_ok is not None and n_rows == n_ok:
        return np.asarray(sample_ids, dtype=object)[np.asarray(readable, dtype=bool)]
    readable_note = f" or {n_ok} (the readable samples, in that order)" if n_ok not in (None, n_all) else ""
    raise PredictionsError(f"{what} have {n_rows} rows; an array needs {n_all} (one per sample, in the order "
                           f"of project.samples){readable_note}. Or give a table with a {ID} column")


def probabilities_frame(source, sample_ids: np.ndarray, *, readable: np.ndarray | None = None,
                        classes: Sequence | None = None, default_classes: Sequence = ()) -> pd.DataFrame:
    """``DataFrame[sample_id, <class>...]`` from a file, an (N, C) array or a table (values unchecked).

    ``classes`` names an array's columns (default: ``default_classes``, the project's sorted labels) or
    picks a table's columns (default: every column but ``sample_id``)."""
    data = read_source(source)
    if isinstance(data, dict):
        raise PredictionsError("probabilities come as .npy, CSV or parquet, not .npz")
    if isinstance(data, np.ndarray):
        return _array_frame(data, sample_ids, readable, classes, default_classes)
    if ID not in data.columns:
        raise PredictionsError(f"the probabilities table has no {ID!r} column (columns: "
                               f"{_quote(list(data.columns))}): name the id column {ID}, one column per class")
    data = data.rename(columns=str)
    wanted = [str(c) for c in classes] if classes is not None else [c for c in data.columns if c != ID]
    absent = [c for c in wanted if c not in data.columns]
    if absent:
        raise PredictionsError(f"the probabilities table has no column for classes {_quote(absent)}; "
                               f"its columns: {_quote(list(data.columns))}")
    text = [c for c in wanted if not pd.api.types.is_numeric_dtype(data[c])]
    if text:
        raise PredictionsError(f"probability columns must be numbers; {_quote(text)} are not: keep only "
                               f"{ID} and one number column per class (or name them with classes=)")
    frame = data[[ID] + wanted].copy()
    frame[ID] = frame[ID].astype(str).to_numpy(dtype=object)
    return frame


def _array_frame(data: np.ndarray, sample_ids, readable, classes, default_classes) -> pd.DataFrame:
    if data.ndim != 2:
        raise PredictionsError(f"probabilities must be a 2-D array (N samples x C classes), got shape {data.shape}")
    names = [str(c) for c in (classes if classes is not None else default_classes)]
    if data.shape[1] != len(names):
        told = "the classes given" if classes is not None else "the project's classes (sorted)"
        raise PredictionsError(f"probabilities have {data.shape[1]} columns but {told} are {len(names)}: "
                               f"{_quote(names)}; pass classes=[...] (--classes a,b,...) in column order")
    if len(set(names)) != len(names):
        raise PredictionsError(f"class names repeat: {_quote(names)}; name each column once")
    if ID in names:
        raise PredictionsError(f"a class is named {ID!r}, the name of the id column: rename that class")
    ids = array_ids(data.shape[0], sample_ids, readable, "probabilities")
    frame = pd.DataFrame(np.asarray(data, dtype=np.float64), columns=names)
    frame.insert(0, ID, ids)
    return frame


def check_ids(ids: np.ndarray, known: np.ndarray, required: np.ndarray, what: str) -> np.ndarray:
    """``ids`` as str, or an error for repeated ids, ids not in ``known`` and ``required`` ids absent."""
    ids = pd.Index(np.asarray(ids).astype(str))
    repeated = ids[ids.duplicated()].unique()
    if len(repeated):
        raise PredictionsError(f"{what}: {len(repeated)} sample ids have more than one row, e.g. "
                               f"{_quote(repeated)}; keep one row per sample")
    unknown = ids[~ids.isin(pd.Index(known))]
    if len(unknown):
        raise PredictionsError(f"{what}: {len(unknown)} of {len(ids)} sample ids are not in the project, e.g. "
                               f"{_quote(unknown)}; ids are paths relative to the images folder as in "
                               "project.samples['sample_id']")
    missing = pd.Index(required)[~pd.Index(required).isin(ids)]
    if len(missing):
        raise PredictionsError(f"{what}: {len(missing)} of {len(required)} readable samples have no row, e.g. "
                               f"{_quote(missing)}; give one row for every sample")
    return ids.to_numpy(dtype=object)


def check_probabilities(frame: pd.DataFrame, known: np.ndarray, required: np.ndarray,
                        label_classes: Sequence, logits: bool = False) -> pd.DataFrame:
    """The checked table, float64 rows summing to 1 (see the module docstring for what is refused).

    ``known``: every sample id; ``required``: those that must have a row; ``label_classes``: the
    classes of the labels (no class check when empty); ``logits``: apply a softmax to each row."""
    ids = check_ids(frame[ID].to_numpy(), known, required, "probabilities")
    columns = [c for c in frame.columns if c != ID]
    wanted = [str(c) for c in label_classes]
    missing, extra = sorted(set(wanted) - set(columns)), sorted(set(columns) - set(wanted))
    if wanted and missing:
        raise PredictionsError(f"the probabilities have no column for classes {_quote(missing)} of the labels; "
                               f"give one column per class ({len(wanted)}: {_quote(wanted)})")
    if wanted and extra:
        raise PredictionsError(f"the probabilities have columns {_quote(extra)} that are no class of the labels "
                               f"({_quote(wanted)}): drop them, or name the columns with classes=[...]")
    if len(columns) < 2:
        raise PredictionsError(f"probabilities need two class columns or more, got {_quote(columns)}")
    probs = frame[columns].to_numpy(dtype=np.float64)
    probs = _checked_values(probs, ids, logits)
    out = pd.DataFrame(probs, columns=columns)
    out.insert(0, ID, ids)
    return out


def _checked_values(probs: np.ndarray, ids: np.ndarray, logits: bool) -> np.ndarray:
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        raise PredictionsError(f"probabilities hold NaN or infinite values in {int(bad.sum())} rows, e.g. "
                               f"{_quote(ids[bad])}; predict those samples again (every readable sample needs a "
                               "row of finite probabilities)")
    if logits:  # softmax, shifted by the row maximum (no overflow)
        shifted = np.exp(probs - probs.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    outside = (probs < 0).any(axis=1) | (probs > 1).any(axis=1)
    if outside.any():
        first = np.flatnonzero(outside)[0]
        raise PredictionsError(f"probabilities must lie in [0, 1]; {int(outside.sum())} rows do not, e.g. "
                               f"{ids[first]!r} (min {probs[first].min():.3g}, max {probs[first].max():.3g}). "
                               "Raw scores (logits)? pass logits=True (--logits) to apply a softmax")
    total = probs.sum(axis=1)
    off = np.abs(total - 1.0) > SUM_TOLERANCE
    if off.any():
        first = np.flatnonzero(off)[0]
        raise PredictionsError(f"each row of probabilities must sum to 1; {int(off.sum())} rows do not, e.g. "
                               f"{ids[first]!r} sums to {total[first]:.3g}. Per-class sigmoid scores? divide "
                               "each row by its sum; raw scores (logits)? pass logits=True (--logits)")
    return probs / total[:, None]


def align_probabilities(frame: pd.DataFrame, row_ids: np.ndarray, labels: Sequence) -> OutOfFold:
    """The checked probabilities of ``row_ids`` (in that order) as an :class:`OutOfFold` (fold -1: a
    model of the user's, never held out here) whose columns follow the classes of ``labels``
    (:func:`mlfix.scoring.probe.aligned_out_of_fold`: a label class the model lacks gets 0)."""
    rows = _positions(frame[ID].to_numpy(), row_ids, "probabilities")
    probs = frame.drop(columns=[ID]).to_numpy(dtype=np.float64)[rows]
    classes = [c for c in frame.columns if c != ID]
    return aligned_out_of_fold(probs, classes, np.full(len(rows), -1, dtype=np.int64), _as_text(labels))


def _as_text(labels: Sequence) -> list:
    """Labels as text (the columns are text), None kept for unlabeled."""
    return [None if pd.isna(v) else str(v) for v in pd.Series(list(labels), dtype=object)]


def _positions(ids: np.ndarray, row_ids: np.ndarray, what: str) -> np.ndarray:
    rows = pd.Index(np.asarray(ids).astype(str)).get_indexer(np.asarray(row_ids).astype(str))
    if (rows < 0).any():
        absent = np.asarray(row_ids)[rows < 0]
        raise PredictionsError(f"the stored {what} have no row for {int((rows < 0).sum())} samples, e.g. "
                               f"{_quote(absent)} (new since they were added?): add them again for every "
                               "readable sample, or remove them (project.remove_predictions())")
    return rows


# ---- embeddings -----------------------------------------------------------------------------------


def read_ids(source) -> np.ndarray:
    """Sample ids from a CSV with a ``sample_id`` column, a ``.npy`` of strings, or one id per line (a
    text file or a list)."""
    if not isinstance(source, (str, os.PathLike)):
        return np.asarray(list(source)).astype(str).astype(object)
    path = Path(source).expanduser()
    if not path.is_file():
        raise PredictionsError(f"embedding ids file {path} does not exist")
    if path.suffix.lower() == ".npy":  # ids saved with numpy: text, never pickled objects
        return np.asarray(read_source(path, "embedding ids")).reshape(-1).astype(str).astype(object)
    if path.suffix.lower() in TABLE_SUFFIXES:
        table = read_source(path, "embedding ids")
        if ID not in table.columns:
            raise PredictionsError(f"embedding ids table {path} has no {ID!r} column (columns: "
                                   f"{_quote(list(table.columns))}); or give a .txt with one id a line")
        return table[ID].astype(str).to_numpy(dtype=object)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise PredictionsError(f"embedding ids file {path} is not UTF-8 text ({err.reason}): give a CSV with a "
                               f"{ID} column, a .txt with one id a line, or a .npy of strings") from err
    return np.asarray([line for line in lines if line.strip()], dtype=object)


def embeddings_rows(source, sample_ids: np.ndarray, *, ids=None,
                    readable: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids (N,), embeddings (N, D)) from an ``.npz`` (``embeddings`` + ``sample_id``), or an ``.npy`` /
    array with ``ids`` (a file or a list), or rows in sample-table order (see :func:`array_ids`)."""
    data = read_source(source, "embeddings")
    if isinstance(data, pd.DataFrame):
        raise PredictionsError("embeddings come as .npy (N x D) or .npz (embeddings + sample_id), not a table")
    if isinstance(data, dict):
        if "embeddings" not in data or ID not in data:
            raise PredictionsError(f"the .npz holds {_quote(sorted(data))}; it needs arrays named 'embeddings' "
                                   f"(N x D) and {ID!r} (N,)")
        data, ids = data["embeddings"], data[ID] if ids is None else ids
    x = np.asarray(data)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise PredictionsError(f"embeddings must be a 2-D array (N samples x D dims), got shape {x.shape}")
    found = read_ids(ids) if ids is not None else array_ids(x.shape[0], sample_ids, readable, "embeddings")
    if len(found) != x.shape[0]:
        raise PredictionsError(f"embeddings have {x.shape[0]} rows but {len(found)} ids are given: "
                               "give one id per row, in row order")
    return found, x


def check_embeddings(ids: np.ndarray, x: np.ndarray, known: np.ndarray,
                     required: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids as str, float32 embeddings), or an error: ids as in :func:`check_ids`, NaN or infinite rows."""
    ids = check_ids(ids, known, required, "embeddings")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise PredictionsError(f"embeddings must be real numbers, got dtype {x.dtype}")
    x = np.asarray(x, dtype=np.float32)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise PredictionsError(f"embeddings hold NaN or infinite values in {int(bad.sum())} rows, e.g. "
                               f"{_quote(ids[bad])}; embed those samples again")
    return ids, x


def align_embeddings(ids: np.ndarray, x: np.ndarray, row_ids: np.ndarray) -> np.ndarray:
    """(len(row_ids), D) float32: the stored embeddings of ``row_ids``, in that order."""
    return np.asarray(x[_positions(ids, row_ids, "embeddings")], dtype=np.float32)


def _quote(values, k: int = QUOTED) -> str:
    values = [str(v) for v in values]
    shown = ", ".join(repr(v) for v in values[:k])
    return shown + (f" and {len(values) - k} more" if len(values) > k else "")
