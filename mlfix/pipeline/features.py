"""Batched, streamed feature extraction: a pooled vector per image and its grid of cell vectors.

:func:`extract` runs a :class:`~mlfix.pipeline.backbone.Backbone` over the samples with a DataLoader
(decoding in worker processes), in ``inference_mode`` and ``channels_last``. Pooled vectors are
returned (or written to a memory-mapped ``.npy``); cell vectors are never all held in memory: each
batch's cells go to the ``on_cells(rows, cells)`` callback, which samples, stores or assigns them.

``tta_flip=True`` also runs each image's mirror image and averages the two (the mirror's cells are
flipped back first): test-time augmentation that makes the features blind to which way an image
faces, for twice the forward passes.

Images that fail to decode are skipped and reported (``ok`` is False for them), never the end of a run.

The same pass measures each decoded image for the quality checks (:mod:`mlfix.data.quality`: a few
statistics on a 64 px copy and a pixel hash for exact copies), in the decoding workers, at no extra
decode; ``statistics=False`` skips that (to measure what it costs).

Example (20 of the demo's digits; ``project.root`` and ``project.samples`` are what it needs):
    >>> import pathlib, tempfile
    >>> from mlfix.demo import write_digits
    >>> from mlfix.project import Project
    >>> from mlfix.pipeline.backbone import create_backbone
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = write_digits(folder / "images", limit=20)
    >>> project = Project.create(folder / "review", images=folder / "images")
    >>> seen = []
    >>> result = extract(project.root, project.samples, create_backbone("resnet18"), image_size=64,
    ...                  workers=0, on_cells=lambda rows, cells: seen.append(cells.shape))
    >>> result.pooled.shape, bool(result.ok.all()), result.grid
    ((20, 512), True, (4, 4))
    >>> result.stats.shape, bool((result.content_hash != 0).all())    # quality statistics, pixel hashes
    ((20, 8), True)
    >>> seen                                            # one batch of cells: (B, h, w, C)
    [(20, 4, 4, 256)]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from mlfix.data.images import DataRoot, load_image
from mlfix.data.quality import QUALITY_STATS, image_statistics, no_statistics, pixel_hash
from mlfix.data.scan import problems_frame
from mlfix.errors import ImageError
from mlfix.progress import ProgressFn

CellsFn = Callable[[np.ndarray, np.ndarray], None]


@dataclass
class Extraction:
    """What :func:`extract` returns.

    pooled: (N, D) float16, zero rows where ``ok`` is False.
    ok: (N,) bool, False for images that could not be decoded.
    problems: DataFrame[sample_id, path, stage, reason] for those images.
    grid: (h, w) cells per image.
    stats: (N, len(QUALITY_STATS)) float32 quality statistics (:mod:`mlfix.data.quality`), NaN rows
        for unreadable images; None when extracted with ``statistics=False``.
    content_hash: (N,) int64 pixel hashes, 0 for unreadable images; None with ``statistics=False``.
    """

    pooled: np.ndarray
    ok: np.ndarray
    problems: pd.DataFrame
    grid: tuple[int, int]
    stats: np.ndarray | None = None
    content_hash: np.ndarray | None = None


class SampleImages:
    """A torch-style map dataset: row i of the samples table -> (i, image tensor, error text).

    With ``statistics=True``: (i, image tensor, error text, stats, pixel hash), ``stats`` the
    (len(QUALITY_STATS),) float32 :func:`~mlfix.data.quality.image_statistics` of the decoded image
    (NaN when it failed) and the int :func:`~mlfix.data.quality.pixel_hash` (0 when it failed).
    """

    def __init__(self, root: DataRoot, samples: pd.DataFrame, image_size: int, transform=None,
                 statistics: bool = False):
        from mlfix.pipeline.backbone import image_transform

        self.root = root
        self.rows = samples[["path", "box_x", "box_y", "box_w", "box_h"]].to_dict("records")
        self.image_size = image_size
        self.transform = transform or image_transform(image_size)
        self.statistics = statistics

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        import torch

        try:
            image = load_image(self.root, self.rows[i], target_size=self.image_size)
            item = (i, self.transform(image), "")
        except (ImageError, OSError, ValueError) as err:
            item = (i, torch.zeros(3, self.image_size, self.image_size), str(err) or type(err).__name__)
            return item + (no_statistics(), 0) if self.statistics else item
        return item + (image_statistics(image), pixel_hash(image)) if self.statistics else item


def default_workers() -> int:
    """Decoding workers: leave the cores to the model on small machines."""
    return min(4, max(1, (os.cpu_count() or 2) // 2))


def make_loader(dataset, batch_size: int, workers: int | None, device_type: str):
    from torch.utils.data import DataLoader

    workers = default_workers() if workers is None else workers
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=device_type == "cuda", persistent_workers=False,
                      prefetch_factor=4 if workers > 0 else None)


def extract(root: DataRoot, samples: pd.DataFrame, backbone, image_size: int, batch_size: int = 64,
            workers: int | None = None, on_cells: CellsFn | None = None,
            progress: ProgressFn | None = None, device: str | None = None,
            pooled_out: str | os.PathLike | None = None, tta_flip: bool = False,
            statistics: bool = True) -> Extraction:
    """Run ``backbone`` over every sample; return pooled vectors and stream cell vectors.

    Args:
        root: the data root the sample paths are relative to.
        samples: rows with ``path`` and ``box_*`` columns (the samples table or a subset).
        backbone: a :class:`~mlfix.pipeline.backbone.Backbone`.
        image_size: square input size in pixels; small images are resized up to it.
        batch_size: images per forward pass.
        workers: DataLoader decoding processes (default: half the cores, at most 4).
        on_cells: called per batch as ``on_cells(rows, cells)`` with ``rows`` (B',) int64 positions
            in ``samples`` of the images that decoded, and ``cells`` (B', h, w, C) float32.
        progress: ``progress(done, total)`` after every batch.
        device: ``cuda`` / ``cpu``; default: CUDA when available.
        pooled_out: optional ``.npy`` path; pooled vectors are written there (memory-mapped).
        tta_flip: average each image's features with its mirror image's (see the module docstring).
        statistics: also measure each image for the quality checks (``stats``, ``content_hash``).
    """
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    n = len(samples)
    model = backbone.to(device).eval().to(memory_format=torch.channels_last)
    side = backbone.grid_size(image_size)
    pooled = _pooled_array(n, backbone.pooled_dim, pooled_out)
    ok = np.zeros(n, dtype=bool)
    failures: list[pd.DataFrame] = []
    stats = np.full((n, len(QUALITY_STATS)), np.nan, dtype=np.float32) if statistics else None
    hashes = np.zeros(n, dtype=np.int64) if statistics else None
    loader = make_loader(SampleImages(root, samples, image_size, statistics=statistics), batch_size, workers,
                         device.type)
    done = 0
    with torch.inference_mode():
        for rows, images, errors, *measured in loader:
            rows = rows.numpy()
            if statistics:
                stats[rows], hashes[rows] = measured[0].numpy(), measured[1].numpy()
            good = np.array([not e for e in errors], dtype=bool)
            if not good.all():
                failures.append(decode_failures(samples, rows, errors))
            if good.any():
                batch = images[torch.from_numpy(good)].to(device, non_blocking=True)
                cells, vectors = _forward(model, batch.contiguous(memory_format=torch.channels_last), tta_flip)
                side = int(cells.shape[-1])
                pooled[rows[good]] = vectors.float().cpu().numpy().astype(np.float16)
                ok[rows[good]] = True
                if on_cells is not None:
                    on_cells(rows[good], cells.permute(0, 2, 3, 1).float().cpu().numpy())
            done += len(rows)
            if progress:
                progress(done, n)
    if isinstance(pooled, np.memmap):
        pooled.flush()
    return Extraction(pooled=pooled, ok=ok, problems=pd.concat([problems_frame([]), *failures], ignore_index=True),
                      grid=(side, side), stats=stats,
                      content_hash=hashes)


def decode_failures(samples: pd.DataFrame, rows: np.ndarray, errors) -> pd.DataFrame:
    """The problems table's rows (stage ``decode``) of the images at ``rows`` (positions in ``samples``)
    whose error text is not ''; ``sample_id`` None when ``samples`` has no such column."""
    errors = np.asarray(errors, dtype=str)
    table = samples.iloc[np.asarray(rows, dtype=np.int64)[errors != ""]]
    ids = table["sample_id"] if "sample_id" in table else [None] * len(table)
    return problems_frame([{"sample_id": s, "path": p, "stage": "decode", "reason": r} for s, p, r in
                           zip(ids, table["path"], errors[errors != ""])])


def _forward(model, batch, tta_flip: bool):
    """(cells, pooled) of a batch; with ``tta_flip`` the mean over the batch and its mirror image."""
    import torch

    cells, pooled = model(batch)
    if not tta_flip:
        return cells, pooled
    mirror_cells, mirror_pooled = model(torch.flip(batch, dims=[3]))
    return (cells + torch.flip(mirror_cells, dims=[3])) / 2, (pooled + mirror_pooled) / 2


def _pooled_array(n: int, dim: int, path: str | os.PathLike | None) -> np.ndarray:
    if path is None:
        return np.zeros((n, dim), dtype=np.float16)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim))
    array[:] = 0
    return array
