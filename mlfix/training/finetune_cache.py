"""The frozen trunk's outputs, computed once per image and its mirror image, kept on disk.

Fine-tuning (:mod:`mlfix.training.finetune`) trains the tail of the network for several folds and
epochs; the trunk (:func:`mlfix.training.finetune_model.split_backbone`) is frozen, so its output
for an image never changes: :class:`TrunkCache` computes it once, for the image and for its mirror
image (the flip augmentation, and the flip-averaged prediction), and stores it as float16 in a
memory-mapped ``trunk.npy`` of shape (N, 2, *map) (N, 1, *map without flips). An interrupted run keeps what was computed:
``trunk.json`` records how many rows are done and under which key, and a rerun continues from there.

Size: Lite0 cut before its last stage at 224 px stores 2 x 192 x 7 x 7 halves per image, 37 KB
(370 MB for 10k images); the sample-based mode (``max_train``) caches only the training subset and
:func:`stream_trunk` runs the trunk over the other images as they are predicted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from mlfix.atomic import write_json_atomic
from mlfix.progress import ProgressFn

SAVE_EVERY = 20  # batches between updates of trunk.json while the cache fills


def _loader(root, samples: pd.DataFrame, image_size: int, batch_size: int, workers: int | None, device):
    from mlfix.pipeline.features import SampleImages, make_loader

    return make_loader(SampleImages(root, samples, image_size), batch_size, workers, device.type)


def trunk_views(trunk, images, device, channels_last: bool, flip: bool = True):
    """(B, V, *map) float16: the trunk's output for each image and (``flip``, V = 2) its mirror image."""
    import torch

    with torch.no_grad(), autocast(device):
        x = images.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if not flip:
            return trunk(x)[:, None].to(torch.float16)
        both = trunk(torch.cat([x, torch.flip(x, dims=[3])]))
    b = images.shape[0]
    return torch.stack([both[:b], both[b:]], dim=1).to(torch.float16)


def autocast(device):
    """Mixed precision on CUDA (bfloat16 where supported, else float16); nothing on the CPU."""
    import contextlib

    import torch

    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


class TrunkCache:
    """``views[i]`` (2, *map) float16 for row i of ``samples``; ``failed`` {row: reason}."""

    def __init__(self, folder: Path, key: dict):
        self.folder, self.key = Path(folder), key
        self.path, self.meta_path = self.folder / "trunk.npy", self.folder / "trunk.json"
        self.views: np.ndarray | None = None
        self.failed: dict[int, str] = {}

    def fill(self, trunk, root, samples: pd.DataFrame, image_size: int, device, batch_size: int = 64,
             workers: int | None = None, progress: ProgressFn | None = None,
             channels_last: bool = False, flip: bool = True) -> "TrunkCache":
        """Compute the rows not cached yet (all of them when the key changed); returns self."""
        meta, n = self._read_meta(), len(samples)
        done = self._done(meta, n)
        self.failed = {int(k): v for k, v in (meta or {}).get("failed", {}).items()} if done else {}
        if done:
            self.views = np.load(self.path, mmap_mode="r+")
        else:
            shape = self._map_shape(trunk, image_size, device, channels_last, flip)
            self.folder.mkdir(parents=True, exist_ok=True)
            self.views = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float16, shape=(n, *shape))
        if progress:
            progress(done, n)
        loader = _loader(root, samples.iloc[done:], image_size, batch_size, workers, device)
        filled = done
        try:
            for batch_number, (index, images, errors) in enumerate(loader, start=1):
                rows = index.numpy() + done
                self.views[rows] = trunk_views(trunk, images, device, channels_last, flip).cpu().numpy()
                self.failed.update({int(r): e for r, e in zip(rows, errors) if e})
                filled = int(rows[-1]) + 1
                if batch_number % SAVE_EVERY == 0:
                    self._save_meta(filled)
                if progress:
                    progress(filled, n)
        except KeyboardInterrupt:  # Ctrl-C: keep the rows filled so far, as said ("what was computed is kept")
            self._save_meta(filled)
            raise
        self.views.flush()
        self._save_meta(n)
        self.views = np.load(self.path, mmap_mode="r")
        return self

    def missing(self, n: int) -> int:
        """How many of ``n`` rows :meth:`fill` would still compute (all of them when the key changed)."""
        return n - self._done(self._read_meta(), n)

    def _done(self, meta: dict | None, n: int) -> int:
        """Rows of ``n`` already cached under this key (0 when the key, the file or its shape differ)."""
        done = meta["done"] if meta and meta.get("key") == self.key and self.path.exists() else 0
        return done if done and self._shape_ok(n) else 0

    def _map_shape(self, trunk, image_size: int, device, channels_last: bool, flip: bool) -> tuple[int, ...]:
        """(V, *map) of one image."""
        import torch

        probe = torch.zeros(1, 3, image_size, image_size)
        return tuple(trunk_views(trunk, probe, device, channels_last, flip).shape[1:])

    def _shape_ok(self, n: int) -> bool:
        try:
            return np.load(self.path, mmap_mode="r").shape[0] == n
        except (OSError, ValueError):
            return False

    def _read_meta(self) -> dict | None:
        try:
            return json.loads(self.meta_path.read_text())
        except (OSError, ValueError):
            return None

    def _save_meta(self, done: int) -> None:
        if self.views is not None and hasattr(self.views, "flush"):
            self.views.flush()
        write_json_atomic(self.meta_path, {"key": self.key, "done": done,
                                           "failed": {str(k): v for k, v in self.failed.items()}})


def stream_trunk(trunk, root, samples: pd.DataFrame, image_size: int, device, batch_size: int = 64,
                 workers: int | None = None, channels_last: bool = False, flip: bool = True
                 ) -> Iterator[tuple[np.ndarray, "object", list[str]]]:
    """``(rows, views (B, V, *map) float16 tensor, errors)`` batches for images not in a cache."""
    for index, images, errors in _loader(root, samples, image_size, batch_size, workers, device):
        yield index.numpy(), trunk_views(trunk, images, device, channels_last, flip), list(errors)


def remove_folder_files(folder: Path, keep: Callable[[Path], bool] = lambda p: False) -> None:
    """Delete the files of a finished or outdated run (not the folder, not what ``keep`` keeps)."""
    if not folder.exists():
        return
    for path in folder.iterdir():
        if path.is_file() and not keep(path):
            os.unlink(path)
