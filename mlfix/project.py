"""A project folder: its data source, settings and cached artifacts, and the pipeline that makes them.

:class:`Project` composes the stages (dataset scan -> features -> codebook -> bags of words ->
orderings) and caches every artifact on disk with a key file (``*.key.json``) describing the settings
and inputs that made it, so a rerun recomputes only the stages whose inputs changed. Artifacts are
written to a temporary name and renamed, and each key is written after its artifact: a run killed
mid-write leaves no artifact that looks valid.

Example (a notebook; the demo's digits stand in for your images, small settings keep it quick):
    >>> import pathlib, tempfile
    >>> from mlfix.demo import write_digits
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = write_digits(folder / "images", limit=40)   # an ImageFolder: images/<label>/<n>.png
    >>> project = Project.create(folder / "review", images=folder / "images",
    ...                          backbone="resnet18", weights="random", image_size=64, words=16)
    >>> project.index().is_indexed
    True
    >>> project.samples.loc[:1, ["sample_id", "label"]]
            sample_id  label
    0  eight/0008.png  eight
    1  eight/0018.png  eight
    >>> order = project.order("three")                  # one class, in similarity order
    >>> len(order), order[0]
    (3, 'three/0003.png')
    >>> project.orderings()                             # the default first; project.order(label, by="words")
    ['combined', 'embedding', 'words']
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd

from mlfix.data.images import DataRoot, load_image
from mlfix.data.scan import problems_frame, scan, with_split
from mlfix.errors import NotAProjectError, NotIndexedError
from mlfix.pipeline.artifacts import atomic_parquet, read_key
from mlfix.progress import Progress, ProgressFn
from mlfix.project_labels import ProjectLabels
from mlfix.project_predictions import ProjectPredictions
from mlfix.settings import CONFIG_NAME, IndexSettings, read_config, write_config

if TYPE_CHECKING:
    from mlfix.service.server import AppServer

__all__ = ["Project", "NotAProjectError"]


class Project(ProjectLabels, ProjectPredictions):
    """An mlfix project folder (see docs/architecture.md for its layout)."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory).expanduser().resolve()
        self.source, self.settings = read_config(self.dir)  # NotAProjectError when it is not one
        self._cache: dict[str, Any] = {}

    # ---- creating and opening -------------------------------------------------------------------

    @classmethod
    def create(cls, directory: str | os.PathLike, images: str | os.PathLike,
               labels: str | os.PathLike | None = None, coco: str | os.PathLike | None = None,
               padding: float = 0.0, progress: ProgressFn | None = None, **settings) -> "Project":
        """Scan ``images`` (+ a labels CSV or COCO file) into a new project (or rescan an existing one)."""
        from mlfix.training.checkpoints import choose_weights

        base = cls.open(directory).settings if cls.is_project(directory) else IndexSettings()
        chosen = base.replace(**settings)  # validated before the scan: a typo costs no time
        directory = Path(directory).expanduser().resolve()
        choose_weights(chosen, directory)  # and a missing weights file or checkpoint too
        directory.mkdir(parents=True, exist_ok=True)
        result = scan(images, labels=labels, coco=coco, padding=padding, progress=progress)
        atomic_parquet(result.samples, directory / "samples.parquet")
        atomic_parquet(result.problems, directory / "problems.parquet")
        write_config(directory, result.source, chosen)
        return cls(directory)

    @classmethod
    def open(cls, directory: str | os.PathLike) -> "Project":
        """Open an existing project; :class:`NotAProjectError` if the folder is not one."""
        return cls(directory)

    @staticmethod
    def is_project(directory: str | os.PathLike) -> bool:
        return (Path(directory) / CONFIG_NAME).is_file()

    def __repr__(self) -> str:
        return f"Project({str(self.dir)!r}, samples={len(self.samples)}, indexed={self.is_indexed})"

    # ---- the sample table -----------------------------------------------------------------------

    @property
    def root(self) -> DataRoot:
        if "root" not in self._cache:
            self._cache["root"] = DataRoot(self.source["images"])
        return self._cache["root"]

    @property
    def samples(self) -> pd.DataFrame:
        """One row per sample: sample_id, path, label, box_*, width, height, status, split (<NA>: none)."""
        return self._load_parquet("samples.parquet")

    @property
    def problems(self) -> pd.DataFrame:
        """Every file skipped (at scan or decode time) and why; plus, of stage ``clipped``, the COCO boxes
        that reached past the image edge (kept, clipped to the image)."""
        return self._load_parquet("problems.parquet")

    @property
    def labels(self) -> list[str]:
        """The given labels, sorted; once per version of samples.parquet (the sidebar asks per rerun)."""
        samples, stamp = self.samples, self._cache["samples.parquet"][0]
        if self._cache.get("labels", (None,))[0] != stamp:
            self._cache["labels"] = (stamp, sorted(samples["label"].dropna().unique().tolist()))
        return list(self._cache["labels"][1])

    def image_meta(self, rows: np.ndarray | None = None) -> pd.DataFrame:
        """Image metadata of ``rows`` (positions in :attr:`samples`; all when None) for the health checks
        (the ``meta`` of :mod:`mlfix.scoring.registry`), ``RangeIndex``: ``width``, ``height`` (int64; a
        COCO crop's box size), ``split`` ("string", <NA>: none), and once indexed ``content_hash`` and
        the image statistics (:data:`mlfix.data.quality.QUALITY_STATS`, from ``features/quality.parquet``)."""
        from mlfix.data.quality import read_quality

        samples = self.samples
        rows = np.arange(len(samples)) if rows is None else np.asarray(rows, dtype=np.int64)
        picked = samples.iloc[rows]
        size = {}
        for side, box in (("width", "box_w"), ("height", "box_h")):
            value = pd.to_numeric(picked[side], errors="coerce")
            if box in picked.columns:  # a COCO crop: its box, not the whole image
                value = pd.to_numeric(picked[box], errors="coerce").round().fillna(value)
            size[side] = value.fillna(0).to_numpy(dtype=np.int64)
        meta = pd.DataFrame(size)
        if "split" in picked.columns:
            meta["split"] = picked["split"].astype("string").reset_index(drop=True)
        quality = read_quality(self.dir)
        if quality is not None and len(quality) == len(samples):  # else made for another sample table
            meta = pd.concat([meta, quality.iloc[rows].reset_index(drop=True)], axis=1)
        return meta

    def image(self, sample_id: str, target_size: int | None = None):
        """The RGB image (or COCO crop) of one sample."""
        return load_image(self.root, self.samples.iloc[self.row_of(sample_id)], target_size=target_size)

    def row_of(self, sample_id: str) -> int:
        """Position of a sample in :attr:`samples` (KeyError if unknown)."""
        if "row_of" not in self._cache:
            ids = self.samples["sample_id"]
            self._cache["row_of"] = pd.Series(np.arange(len(ids)), index=ids.to_numpy())
        try:
            return int(self._cache["row_of"][sample_id])
        except KeyError:
            raise KeyError(f"unknown sample_id {sample_id!r}") from None

    def _load_parquet(self, name: str) -> pd.DataFrame:
        path = self.dir / name
        stamp = path.stat().st_mtime_ns if path.exists() else None
        cached = self._cache.get(name)
        if cached is None or cached[0] != stamp:
            table = pd.read_parquet(path) if stamp is not None else problems_frame([])
            table = with_split(table) if name == "samples.parquet" else table  # older projects lack it
            self._cache[name] = (stamp, table)
            if name == "samples.parquet":
                self._cache.pop("row_of", None)  # row positions follow the new table
        return self._cache[name][1]

    # ---- indexing -------------------------------------------------------------------------------

    def index(self, progress: Progress | None = None, workers: int | None = None,
              device: str | None = None, quality: str | None = None,
              announce: "Callable[[str], None] | None" = None, **overrides) -> "Project":
        """Run features -> codebook -> bags -> orderings, reusing every artifact whose key matches.

        ``quality`` (``fast``, ``default``, ``best``) applies a preset (:func:`mlfix.settings.quality_settings`)
        before ``overrides``. ``announce`` (e.g. ``print``) receives the line saying which backbone, weights
        and image size the run uses and why, and with a ``quality``, the time estimate before it starts.
        """
        from mlfix.pipeline.backbone import check_backbone
        from mlfix.pipeline.defaults import describe, estimate, resolve_image_size, typical_side
        from mlfix.pipeline.index import run_index
        from mlfix.scoring.neighbours import approximate_min as neighbours_min
        from mlfix.settings import quality_settings
        from mlfix.training.checkpoints import choose_weights

        if quality is not None:
            preset = quality_settings(quality, typical_side(self.samples))
            overrides = {**preset, **{k: v for k, v in overrides.items() if v is not None}}
        chosen = self.settings.replace(**overrides)
        settings, side = resolve_image_size(chosen, self.samples)
        choice = choose_weights(settings, self.dir)  # a missing file or checkpoint fails here, before
        check_backbone(settings.backbone)            # anything is written: a bad setting is not kept
        self.settings = chosen
        write_config(self.dir, self.source, self.settings)
        if announce is not None:
            announce(describe(settings, choice.text, side, self.settings.image_size != settings.image_size,
                              quality))
            if quality is not None:
                announce(str(estimate(settings, choice.weights, int((self.samples["status"] == "ok").sum()),
                                      device)))
        run_index(self.dir, settings, self.root, choice.weights, choice.identity,
                  progress or Progress("index", self.dir / "progress"), workers=workers, device=device)
        self._cache = {k: v for k, v in self._cache.items() if k == "root"}
        if int(self.readable().sum()) >= neighbours_min():  # stored, or the app's first page builds it
            self.neighbour_index()
        return self

    @property
    def is_indexed(self) -> bool:
        return (self.dir / "orders" / "orders.key.json").is_file()

    @property
    def image_size(self) -> int:
        """The input size in px the backbone sees: the indexed one, else the settings' (``auto`` resolved
        from the images)."""
        from mlfix.pipeline.defaults import resolve_image_size

        key = read_key(self.dir / "features" / "words.key.json") or {}
        if isinstance(key.get("image_size"), int):
            return int(key["image_size"])
        return int(resolve_image_size(self.settings, self.samples)[0].image_size)

    def trained_weights(self) -> Path | None:
        """The project's last training checkpoint (models/last.pt), if any."""
        from mlfix.training.checkpoints import trained_weights_path

        return trained_weights_path(self.dir)

    def _require_index(self) -> None:
        if not self.is_indexed:
            raise NotIndexedError(f"project {self.dir} is not indexed yet: run `mlfix index --project {self.dir}`")

    def _array(self, relative: str, mmap: bool = True) -> np.ndarray:
        self._require_index()
        if relative not in self._cache:
            self._cache[relative] = np.load(self.dir / relative, mmap_mode="r" if mmap else None)
        return self._cache[relative]

    def pooled(self) -> np.ndarray:
        """(N, D) float16 pooled vectors, row-aligned with :attr:`samples` (zeros where unreadable)."""
        return self._array("features/pooled.npy")

    def readable(self) -> np.ndarray:
        """(N,) bool: the images that decoded at indexing time."""
        return self._array("features/ok.npy", mmap=False)

    def word_grids(self) -> np.ndarray:
        """(N, h, w) uint16 visual word of every cell (memory-mapped)."""
        return self._array("features/words.npy")

    def centroids(self) -> np.ndarray:
        """(k, C) float32 codebook."""
        return self._array("codebook/centroids.npy", mmap=False)

    def bags(self) -> np.ndarray:
        """(N, k/8) uint8 packed bags of words (``np.packbits(axis=1, bitorder="little")``)."""
        return self._array("codebook/bags.npy")

    def orderings(self) -> list[str]:
        """The similarity orders the index holds, the default first (``ORDER_PREFERENCE``):
        ``"combined"`` (pooled embedding and words together; up to 100k images), ``"embedding"`` (the
        greedy chain over pooled embeddings, :mod:`mlfix.pipeline.ordering.embedding`) and ``"words"``
        (over bags of visual words). A project indexed before the embedding order existed has
        ``["words"]`` until its next :meth:`index` (which reuses the features)."""
        from mlfix.pipeline.ordering import ORDER_PREFERENCE, ORDERINGS

        held = [by for by, folder in ORDERINGS.items() if (self.dir / folder / "orders.key.json").is_file()]
        return sorted(held, key=ORDER_PREFERENCE.index)

    def order_rows(self, label: str | None = None, by: str | None = None) -> np.ndarray:
        """Row positions in similarity order: one class, or the whole dataset when ``label`` is None.

        ``by``: ``"combined"``, ``"embedding"`` or ``"words"`` (see :meth:`orderings`); None is the
        default, the first of :meth:`orderings` (the combined order where the index has it).
        """
        from mlfix.pipeline.ordering import DEFAULT_ORDERING, ORDERINGS

        self._require_index()
        if by is not None and by not in ORDERINGS:
            raise ValueError(f"by must be one of {sorted(ORDERINGS)} or None (the default, "
                             f"{DEFAULT_ORDERING!r}), got {by!r}")
        by = by or (self.orderings() or [DEFAULT_ORDERING])[0]
        folder = ORDERINGS[by]
        if not (self.dir / folder / "orders.key.json").is_file():
            raise NotIndexedError(f"project {self.dir} has no {by} order yet (indexed by an older mlfix): "
                                  f"run `mlfix index --project {self.dir}` to add it (the features are reused)")
        orders = json.loads((self.dir / folder / "orders.json").read_text())
        name = "all" if label is None else orders["labels"].get(label)
        if name is None:
            raise KeyError(f"no ordering for label {label!r}; labels: {sorted(orders['labels'])}")
        return self._array(f"{folder}/{name}.npy", mmap=False)

    def order(self, label: str | None = None, by: str | None = None) -> np.ndarray:
        """Sample ids in similarity order, for one class or (``label=None``) the whole dataset;
        ``by`` chooses the order (``"embedding"``, ``"words"``; None: the default, see :meth:`order_rows`)."""
        return self.samples["sample_id"].to_numpy()[self.order_rows(label, by)]

    def runs(self, label: str | None = None, by: str | None = None) -> np.ndarray:
        """Run id (0, 1, 2, ...) of each position of :meth:`order` ``(label, by)``: a new run starts
        where the order's similarity drops (:mod:`mlfix.pipeline.ordering.runs`)."""
        from mlfix.pipeline.ordering.runs import run_ids

        return run_ids(self.pooled(), self.order_rows(label, by))

    def neighbours(self, sample_id: str, k: int = 8) -> list[str]:
        """The ``k`` nearest readable samples by pooled embedding (cosine), nearest first.

        The index holds readable samples only, so ``k`` come back whenever ``k`` others are readable
        (an unreadable image has no embedding worth comparing).
        """
        if "knn_index" not in self._cache:  # exact, or an IVF index above APPROXIMATE_MIN rows
            self._cache["knn_index"] = self.neighbour_index()
        index, rows = self._cache["knn_index"]
        row = self.row_of(sample_id)
        query = np.asarray(self.pooled()[row:row + 1], dtype=np.float32)
        query = query / max(float(np.linalg.norm(query)), 1e-12)
        _, found = index.search(query, min(k + 1, len(rows)))
        near = [rows[i] for i in found[0] if i >= 0 and rows[i] != row][:k]
        return self.samples["sample_id"].iloc[near].tolist()  # not the whole column: O(k) at 10M rows

    def neighbour_index(self) -> tuple[Any, np.ndarray]:
        """``(faiss index, rows)`` over the readable samples' pooled vectors: exact, or from
        APPROXIMATE_MIN rows an IVF index kept in ``features/neighbours.faiss`` (keyed by the features),
        so the app's first page does not build it again (it takes minutes at millions of images)."""
        from mlfix.pipeline.artifacts import read_key
        from mlfix.scoring.neighbours import stored_search_index

        rows, pooled = np.flatnonzero(self.readable()), self.pooled()
        vectors = pooled if len(rows) == len(pooled) else pooled[rows]  # the memmap when all readable
        key = read_key(self.dir / "features" / "words.key.json")
        return stored_search_index(vectors, self.dir / "features" / "neighbours.faiss", key), rows

    # ---- review: decisions, corrected labels, views ---------------------------------------------

    @property
    def reviews(self):
        """The decisions store: ``MLFIX_DB_URL`` when set, else ``reviews.db`` in the project."""
        from mlfix.review.store import ReviewStore

        if "reviews" not in self._cache:
            self._cache["reviews"] = ReviewStore.for_project(self.dir, labels=self.labels)
        return self._cache["reviews"]

    @property
    def classes(self):
        """The class list: given labels + classes added, renamed, merged (``.names``, ``.add``, ``.rename``,
        ``.merge``, ``.events``; :class:`mlfix.review.classes.ProjectClasses`)."""
        from mlfix.review.classes import ProjectClasses

        return ProjectClasses(self.reviews, self.labels)

    def decisions(self) -> pd.DataFrame:
        """The decision log: id, client_id, sample_id, kind, label, reviewer, created_at, undoes."""
        return self.reviews.decisions()

    def corrected_labels(self) -> pd.DataFrame:
        """One row per sample: original and corrected label, status, reviewer (see mlfix.review.export)."""
        from mlfix.review.export import export_table

        samples = self.samples
        return export_table(samples, self.reviews.current_state(samples[["sample_id", "label"]]))

    def publish_view(self, name: str, sample_ids, note: str = "") -> Path:
        """Publish a named list of samples; it appears in the Review page's view picker."""
        from mlfix.review.views import publish_view

        return publish_view(self.dir, name, sample_ids, note=note,
                            known_ids=self.samples["sample_id"].to_numpy())

    def views(self) -> dict[str, dict]:
        """Published views: ``{name: {"sample_ids", "note", "created"}}``."""
        from mlfix.review.views import list_views

        return list_views(self.dir)

    def serve(self, port: int | None = None, address: str = "localhost",
              timeout: float = 90, insecure: bool = False) -> AppServer:
        """Start the app on this project in a background process; returns once it answers.

        Returns a :class:`mlfix.service.server.AppServer`: ``.url`` (also its ``str()``), ``.stop()``;
        ``with project.serve() as app:`` stops it after the block, and it stops when Python exits.
        Its output goes to ``serve.log`` in the project (named in the error if it does not start).
        As ``mlfix serve``: a non-loopback ``address`` without sign-in raises ``UnsafeServeError``
        unless ``insecure=True``.
        """
        from mlfix.service.server import serve_app

        self._cache["server"] = app = serve_app(self.dir, port, address, log=self.dir / "serve.log",
                                                timeout=timeout, insecure=insecure, start_new_session=True)
        return app

    def progress_log(self, job: str) -> list[dict]:
        """Progress records of a job (``index``, ``train``) as written by :class:`~mlfix.progress.Progress`."""
        from mlfix.progress import read_progress

        return read_progress(self.dir / "progress" / f"{job}.jsonl")

