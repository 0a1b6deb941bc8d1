"""The Ray engine's work items: chunks of the sample table, their decode task, the model actor, shards.

A *chunk* is ``batch_size`` consecutive rows of what a pass runs over (the KMeans sample's images,
or every image), one Ray row each: the backbone sees exactly the batches the local engine feeds it,
so the two engines agree bit for bit. :func:`decode_chunk` (a CPU task) decodes a chunk with the
local engine's own :class:`~mlfix.pipeline.features.SampleImages`; :class:`ChunkModel` (an actor,
the model loaded once) runs the forward pass with the local engine's own ``_forward`` and returns
either the chunk's codebook sample cells or, with the codebook, its pooled vectors and word grids:
the cells never leave the actor. The driver writes each finished chunk as one shard file
(:func:`write_shard`), so a driver that dies loses no finished chunk, and a rerun of the same key
picks up from the shards. Shards are written by the driver, not the actors: no shared filesystem
is needed between the nodes, and an actor killed mid-write cannot leave a damaged one.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> write_shard(folder, 3, {"rows": np.arange(2), "pooled": np.ones((2, 4), np.float16)})
    >>> finished_chunks(folder), read_shard(folder, 3)["pooled"].shape
    ([3], (2, 4))
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mlfix.atomic import atomic_path

BOX_COLUMNS = ["box_x", "box_y", "box_w", "box_h"]
SHARD_SUFFIX = ".npz"


def chunk_items(samples: pd.DataFrame, rows: np.ndarray, batch_size: int, skip: set[int] = frozenset()) -> list[dict]:
    """One Ray row per ``batch_size`` consecutive entries of ``rows`` (positions in ``samples``),
    leaving out the chunk numbers in ``skip``: ``{"chunk", "rows", "path", "box"}``."""
    paths = samples["path"].to_numpy()
    boxes = samples[BOX_COLUMNS].to_numpy(dtype=np.float64, na_value=np.nan)
    items = []
    for chunk, start in enumerate(range(0, len(rows), batch_size)):
        if chunk not in skip:
            part = np.asarray(rows[start:start + batch_size], dtype=np.int64)
            items.append({"chunk": chunk, "rows": part, "path": paths[part].tolist(), "box": boxes[part]})
    return items


def decode_chunk(item: dict, root, image_size: int, statistics: bool) -> dict:
    """Decode one chunk (a Ray task): the images (B, 3, S, S) float32 as the local engine's
    DataLoader batches them, the errors ('' when decoded), and with ``statistics`` the quality
    statistics (B, len(QUALITY_STATS)) and pixel hashes (B,)."""
    from torch.utils.data import default_collate

    from mlfix.pipeline.features import SampleImages

    table = pd.DataFrame(item["box"], columns=BOX_COLUMNS)
    table.insert(0, "path", list(item["path"]))
    dataset = SampleImages(root, table, image_size, statistics=statistics)
    _, images, errors, *measured = default_collate([dataset[i] for i in range(len(dataset))])
    out = {"chunk": item["chunk"], "rows": item["rows"], "images": images.numpy(), "errors": list(errors)}
    if statistics:
        out["stats"], out["hashes"] = measured[0].numpy(), measured[1].numpy().astype(np.int64)
    return out


class ChunkModel:
    """The backbone in an actor: built once, then one forward pass per chunk.

    Without ``codebook`` (a :func:`~mlfix.pipeline.codebooks.codebook_state`, or its ``ray.put``
    reference): returns the chunk's codebook sample (``sample_cells`` with ``keep`` and ``seed``). With it: the pooled vectors (float16) and word grids (uint16), zero rows for the
    images that did not decode, like the local engine's arrays; ``grid`` is (cells per side, cell
    channels, pooled dimension). ``pause`` (seconds after each chunk)
    only slows the actor down, for tests that kill it mid-run.
    """

    def __init__(self, model, device: str, threads: int | None, tta_flip: bool, grid: tuple[int, int, int],
                 keep: int = 0, seed: int = 0, codebook=None, pause: float = 0.0):
        import ray
        import torch

        from mlfix.pipeline.codebooks import codebook_from_state

        if threads:
            torch.set_num_threads(threads)  # Ray sets one thread per reserved CPU; use what the driver chose
        model = ray.get(model) if isinstance(model, ray.ObjectRef) else model
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().to(memory_format=torch.channels_last)
        self.tta_flip, self.keep, self.seed, self.pause = tta_flip, keep, seed, pause
        self.side, self.channels, self.dim = grid  # the shapes of a chunk none of whose images decoded
        state = ray.get(codebook) if isinstance(codebook, ray.ObjectRef) else codebook
        self.codebook = None if state is None else codebook_from_state(state)

    def __call__(self, item: dict) -> dict:
        import torch

        from mlfix.pipeline.codebook import sample_cells
        from mlfix.pipeline.features import _forward

        rows = np.asarray(item["rows"], dtype=np.int64)
        good = np.array([not e for e in item["errors"]], dtype=bool)
        out = {"chunk": item["chunk"], "rows": rows, "errors": list(item["errors"]), "pid": os.getpid()}
        cells = vectors = None
        if good.any():
            batch = torch.from_numpy(np.asarray(item["images"])[good]).to(self.device, non_blocking=True)
            with torch.inference_mode():
                cells, vectors = _forward(self.model, batch.contiguous(memory_format=torch.channels_last),
                                          self.tta_flip)
            cells = cells.permute(0, 2, 3, 1).float().cpu().numpy()
        if self.codebook is None:
            out["cells"] = (sample_cells(rows[good], cells, self.keep, self.seed) if cells is not None
                            else np.zeros((0, self.channels), dtype=np.float32))
        else:
            out.update(self._words(rows, good, cells, vectors), stats=item["stats"], hashes=item["hashes"])
        if self.pause:
            time.sleep(self.pause)
        return out

    def _words(self, rows: np.ndarray, good: np.ndarray, cells, vectors) -> dict:
        from mlfix.pipeline.codebooks import assign_words

        pooled = np.zeros((len(rows), self.dim), dtype=np.float16)
        words = np.zeros((len(rows), self.side, self.side), dtype=np.uint16)
        if cells is not None:
            pooled[good] = vectors.float().cpu().numpy().astype(np.float16)
            words[good] = assign_words(self.codebook, cells)
        return {"ok": good, "pooled": pooled, "words": words}


def shard_path(folder: Path, chunk: int) -> Path:
    return Path(folder) / f"chunk-{chunk:08d}{SHARD_SUFFIX}"


def write_shard(folder: Path, chunk: int, arrays: dict) -> None:
    """One finished chunk's arrays, atomically (a reader sees all of it or no file)."""
    with atomic_path(shard_path(folder, chunk), suffix=SHARD_SUFFIX) as tmp:
        np.savez(tmp, **{name: np.asarray(value) for name, value in arrays.items()})


def read_shard(folder: Path, chunk: int) -> dict:
    with np.load(shard_path(folder, chunk), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def finished_chunks(folder: Path) -> list[int]:
    """The chunk numbers whose shard is in ``folder``, sorted."""
    if not Path(folder).is_dir():
        return []
    return sorted(int(p.name[len("chunk-"):-len(SHARD_SUFFIX)]) for p in Path(folder).glob(f"chunk-*{SHARD_SUFFIX}"))


class NpyStream:
    """Write a ``.npy`` file of known shape front to back, a block of rows at a time (flat memory:
    no memory map whose dirty pages grow with N)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype):
        self.file = open(path, "wb")
        self.dtype = np.dtype(dtype)
        np.lib.format.write_array_header_2_0(self.file, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                         "fortran_order": False, "shape": tuple(shape)})

    def write(self, block: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())

    def close(self) -> None:
        self.file.close()
