"""The user's own model in a :class:`~mlfix.project.Project`: predicted probabilities and embeddings.

:class:`ProjectPredictions` is a mixin of ``Project`` (which gives it ``dir``, ``samples``,
``readable``, ``is_indexed`` and the review's label state). What it stores, each written atomically
(a reader sees the old version or the new one):

- ``predictions/<name>.parquet``: ``sample_id`` + one float column per class, rows summing to 1, and
  ``predictions/current.json`` naming the set in use (the last added), its classes and a digest;
- ``features/user_embeddings.npy`` (N, D) float32 with ``features/user_embeddings_ids.parquet``
  (``sample_id`` per row) and ``features/user_embeddings.key.json`` (written last).

``Project.scores()`` asks :meth:`user_probabilities` (they replace the linear probe for ``loss``,
``cleanlab`` and the confusion matrix) and :meth:`user_embeddings` (they replace the pooled vectors
for the kNN vote and the duplicates), and keys its cache on :meth:`predictions_stamp`. The backbone
still makes the visual words and the similarity orders. Reading and checking is
:mod:`mlfix.scoring.predictions` (formats, row order, what is refused).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from mlfix.atomic import write_json_atomic
from mlfix.errors import PredictionsError
from mlfix.pipeline.artifacts import atomic_parquet, atomic_save_npy, read_key, write_key

if TYPE_CHECKING:
    from mlfix.scoring.probe import OutOfFold

PREDICTIONS = "predictions"
CURRENT = "predictions/current.json"
EMBEDDINGS = "features/user_embeddings.npy"
EMBEDDING_IDS = "features/user_embeddings_ids.parquet"
EMBEDDINGS_KEY = "features/user_embeddings.key.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ProjectPredictions:
    """Predicted probabilities and embeddings of the user's own model (a mixin of ``Project``)."""

    def add_predictions(self, df_or_array, name: str = "user", classes: Sequence[str] | None = None,
                        logits: bool = False) -> pd.DataFrame:
        """Store a model's predicted probabilities; from then on :meth:`scores` uses them instead of the probe.

        ``df_or_array``: a DataFrame (``sample_id`` + one column per class), an (N, C) array whose rows
        follow :attr:`samples` (or the readable samples in that order) and whose columns are the sorted
        classes of the labels unless ``classes`` names them, or a file (``.npy``, CSV, parquet).
        ``logits``: raw scores, softmaxed here. Every readable sample needs a row; the classes must be
        those of the labels. Returns the stored table; a
        :class:`~mlfix.errors.PredictionsError` says what to fix when they do not fit.
        They should be out-of-sample (cross-validated, or from a model that never trained on these
        images): in-sample predictions have memorised the wrong labels they are meant to find.
        """
        from mlfix.scoring.predictions import check_probabilities, probabilities_frame

        if not isinstance(name, str) or not _NAME.match(name):
            raise PredictionsError(f"name must be letters, digits, '_', '-' or '.', got {name!r}")
        ids, readable = self._sample_ids(), self._readable_mask()
        label_classes = self._label_classes(readable)
        frame = probabilities_frame(df_or_array, ids, readable=readable, classes=classes,
                                    default_classes=label_classes)
        table = check_probabilities(frame, ids, ids[readable], label_classes, logits=logits)
        info = {"name": name, "classes": [c for c in table.columns if c != "sample_id"], "samples": len(table),
                "digest": _digest(table[table.columns[1:]].to_numpy(), table["sample_id"].to_numpy())}
        held = self.predictions_info() or {}
        if {k: held.get(k) for k in info} == info and (self.dir / PREDICTIONS / f"{name}.parquet").exists():
            return table  # the same again: the stamp, and so the cached scores, stay as they are
        atomic_parquet(table, self.dir / PREDICTIONS / f"{name}.parquet")
        write_json_atomic(self.dir / CURRENT, {**info, "added": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1)
        return table

    def add_embeddings(self, array, sample_ids=None) -> None:
        """Store a model's embeddings; from then on :meth:`scores` uses them instead of the pooled vectors.

        ``array``: (N, D) numbers or a file (``.npy``; ``.npz`` with ``embeddings`` and ``sample_id``).
        ``sample_ids``: the id of each row (a list, or a CSV with a ``sample_id`` column / a text file
        with one id per line); without them the rows follow :attr:`samples` (or the readable samples).
        Every readable sample needs a finite row.
        """
        from mlfix.scoring.predictions import check_embeddings, embeddings_rows

        known, readable = self._sample_ids(), self._readable_mask()
        ids, x = embeddings_rows(array, known, ids=sample_ids, readable=readable)
        ids, x = check_embeddings(ids, x, known, known[readable])
        (self.dir / EMBEDDINGS_KEY).unlink(missing_ok=True)  # no key while the pair is half written
        atomic_save_npy(self.dir / EMBEDDINGS, x)
        atomic_parquet(pd.DataFrame({"sample_id": ids}), self.dir / EMBEDDING_IDS)
        write_key(self.dir / EMBEDDINGS_KEY, {"digest": _digest(x, ids), "rows": int(x.shape[0]),
                                              "dims": int(x.shape[1])})

    def remove_predictions(self, probabilities: bool = True, embeddings: bool = True) -> None:
        """Forget the user's probabilities and/or embeddings: the probe and the pooled vectors again."""
        if probabilities:
            (self.dir / CURRENT).unlink(missing_ok=True)
            for path in (self.dir / PREDICTIONS).glob("*.parquet"):
                path.unlink(missing_ok=True)
        if embeddings:
            for relative in (EMBEDDINGS_KEY, EMBEDDINGS, EMBEDDING_IDS):
                (self.dir / relative).unlink(missing_ok=True)

    def predictions_info(self) -> dict | None:
        """The probabilities in use: ``{name, classes, samples, digest, added}``, or None."""
        return read_key(self.dir / CURRENT)

    def scores_use_predictions(self) -> bool | None:
        """Whether the last scores (``scores.parquet``) were computed from the user's probabilities:
        True when written after they were added, False when they were added since (recompute), None
        without user probabilities."""
        current, scores = self.dir / CURRENT, self.dir / "scores.parquet"
        if not current.exists():
            return None
        return scores.exists() and scores.stat().st_mtime_ns >= current.stat().st_mtime_ns

    def user_probabilities(self, rows: np.ndarray, labels: np.ndarray) -> OutOfFold | None:
        """The user's probabilities of ``rows`` (positions in :attr:`samples`) as an :class:`OutOfFold`
        (fold -1) whose columns are the classes of ``labels``; None when none were added.

        ``labels``: the labels of ``rows`` (or of every sample). A label class the model lacks (one added
        in the review) gets probability 0. A row without a prediction is a PredictionsError."""
        from mlfix.scoring.predictions import align_probabilities

        info = self.predictions_info()
        if info is None:
            return None
        path = self.dir / PREDICTIONS / f"{info['name']}.parquet"
        if not path.exists():
            raise PredictionsError(f"{path} is missing: add the predictions again (project.add_predictions)")
        rows = np.asarray(rows, dtype=np.int64)
        labels = np.asarray(labels, dtype=object)
        if len(labels) == len(self.samples) and len(labels) != len(rows):
            labels = labels[rows]
        return align_probabilities(pd.read_parquet(path), self._sample_ids()[rows], labels)

    def user_embeddings(self, rows: np.ndarray) -> np.ndarray | None:
        """(len(rows), D) float32: the user's embeddings of ``rows`` (positions in :attr:`samples`), or None."""
        from mlfix.scoring.predictions import align_embeddings

        if read_key(self.dir / EMBEDDINGS_KEY) is None:
            return None
        ids = pd.read_parquet(self.dir / EMBEDDING_IDS)["sample_id"].to_numpy(dtype=object)
        x = np.load(self.dir / EMBEDDINGS, mmap_mode="r")
        return align_embeddings(ids, x, self._sample_ids()[np.asarray(rows, dtype=np.int64)])

    def predictions_stamp(self) -> str | None:
        """A short digest of what the user added (changes when either is added, replaced or removed);
        None when neither is there."""
        held = [read_key(self.dir / CURRENT), read_key(self.dir / EMBEDDINGS_KEY)]
        if held == [None, None]:
            return None
        return hashlib.sha1(json.dumps(held, sort_keys=True).encode()).hexdigest()[:16]

    # ---- helpers --------------------------------------------------------------------------------

    def _sample_ids(self) -> np.ndarray:
        return self.samples["sample_id"].to_numpy(dtype=object)

    def _readable_mask(self) -> np.ndarray:
        """The samples that need a row: the readable ones once indexed, else those the scan kept."""
        if self.is_indexed:
            return np.asarray(self.readable(), dtype=bool)
        return (self.samples["status"] == "ok").to_numpy()

    def _label_classes(self, readable: np.ndarray) -> list[str]:
        """The sorted classes of the readable samples' labels (with the review's corrections)."""
        from mlfix.data.labels import encode_labels

        state, _ = self._label_state()
        labels = state["label"].to_numpy(dtype=object)[readable]
        return [str(c) for c in encode_labels([None if pd.isna(v) else str(v) for v in labels]).classes]


def _digest(values: np.ndarray, ids: np.ndarray) -> str:
    """A short content hash of an array and its row ids."""
    h = hashlib.sha1(np.ascontiguousarray(values).tobytes())
    h.update("\n".join(map(str, ids)).encode())
    return h.hexdigest()[:16]
