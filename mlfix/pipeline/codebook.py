"""Visual words: cluster cell vectors into a codebook, assign every cell, make bags of words.

The method (from the talk mlfix grows from): cluster the backbone's cell vectors into ``k`` visual
words with KMeans; each image becomes the set of words that occur in its grid, a ``k``-bit vector.
Bags are stored packed, ``np.packbits(axis=1, bitorder="little")``: (N, k/8) uint8.

KMeans is faiss's (seeded). Like faiss, it trains on at most ``max_points_per_centroid * k`` cells
(256 * 1024 = 262,144 by default), sampled at random; :attr:`Codebook.fit_info_` says how many.

Example:
    >>> rng = np.random.default_rng(0)
    >>> cells = rng.normal(size=(4000, 16)).astype(np.float32)        # (M, C) cell vectors
    >>> codebook = Codebook(k=64, seed=0).fit(cells)
    >>> grid_cells = rng.normal(size=(5, 4, 4, 16)).astype(np.float32)  # (N, h, w, C)
    >>> words = codebook.assign(grid_cells)                           # (N, h, w) uint16
    >>> words.shape, words.dtype
    ((5, 4, 4), dtype('uint16'))
    >>> pack_bags(words, codebook.k).shape                           # (N, k/8) uint8
    (5, 8)
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from mlfix.progress import ProgressFn

MAX_WORDS = 65_535  # word ids are stored as uint16
MIN_CELLS_PER_WORD = 39  # below this faiss warns that KMeans has too few points per centroid


class Codebook:
    """KMeans visual words over cell vectors (scikit-learn style: settings in ``__init__``).

    Args:
        k: number of visual words (a multiple of 8, at most 65,535).
        seed: KMeans seed; the same cells and seed give the same codebook.
        niter: KMeans iterations.
        max_points_per_centroid: training sample cap per word (faiss's own default is 256).

    Attributes:
        centroids_: (k, C) float32 after :meth:`fit`.
        fit_info_: dict with ``cells_total``, ``cells_used``, ``seconds`` and the settings, plus
            ``advice`` (one line for the user) when there were fewer than :data:`MIN_CELLS_PER_WORD`
            cells per word: the words are rough, and it names a ``--words`` that fits the set.
    """

    def __init__(self, k: int = 1024, seed: int = 0, niter: int = 20, max_points_per_centroid: int = 256):
        if not 8 <= k <= MAX_WORDS or k % 8:
            raise ValueError(f"k (number of visual words) must be a multiple of 8 in [8, {MAX_WORDS}], got {k}")
        if niter < 1:
            raise ValueError(f"niter must be at least 1, got {niter}")
        self.k, self.seed, self.niter = k, seed, niter
        self.max_points_per_centroid = max_points_per_centroid

    @property
    def sample_size(self) -> int:
        return self.k * self.max_points_per_centroid

    def fit(self, cells: np.ndarray) -> "Codebook":
        """Fit on (M, C) cell vectors; ``M`` beyond :attr:`sample_size` is subsampled (seeded)."""
        import time

        import faiss

        cells, total = training_sample(cells, self.k, self.sample_size, np.random.default_rng(self.seed))
        data = np.ascontiguousarray(cells, dtype=np.float32)
        start = time.perf_counter()
        # faiss prints a raw warning below MIN_CELLS_PER_WORD points per centroid; fit_info_["advice"]
        # says it in mlfix's words instead, so faiss's own threshold is lowered to what there is.
        kmeans = faiss.Kmeans(data.shape[1], self.k, niter=self.niter, seed=self.seed, verbose=False,
                              max_points_per_centroid=self.max_points_per_centroid, spherical=False,
                              min_points_per_centroid=max(1, min(MIN_CELLS_PER_WORD, len(data) // self.k)))
        kmeans.train(data)
        self.centroids_ = np.asarray(kmeans.centroids, dtype=np.float32)
        self.fit_info_ = {"cells_total": int(total), "cells_used": int(len(data)), "k": self.k,
                          "niter": self.niter, "seed": self.seed,
                          "seconds": round(time.perf_counter() - start, 3)}
        if len(data) < MIN_CELLS_PER_WORD * self.k:
            self.fit_info_["advice"] = small_set_advice(len(data), self.k)
        return self

    @classmethod
    def from_centroids(cls, centroids: np.ndarray, **settings) -> "Codebook":
        codebook = cls(k=len(centroids), **settings)
        codebook.centroids_ = np.ascontiguousarray(centroids, dtype=np.float32)
        return codebook

    def state(self) -> dict[str, np.ndarray]:
        """What :meth:`assign` needs, as arrays (as :meth:`VQCodebook.state <mlfix.pipeline.vq.VQCodebook.state>`)."""
        return {"centroids": self.centroids_}

    @classmethod
    def from_state(cls, state) -> "Codebook":
        return cls.from_centroids(state["centroids"])

    def assign(self, cells: np.ndarray) -> np.ndarray:
        """Nearest word of every cell: (..., C) -> (...) uint16."""
        import faiss

        if not hasattr(self, "centroids_"):
            raise RuntimeError("the codebook is not fitted yet: call fit(cells) first")
        shape = cells.shape[:-1]
        flat = np.ascontiguousarray(cells.reshape(-1, cells.shape[-1]), dtype=np.float32)
        index = faiss.IndexFlatL2(self.centroids_.shape[1])
        index.add(self.centroids_)
        _, nearest = index.search(flat, 1)
        return nearest[:, 0].astype(np.uint16).reshape(shape)


def training_sample(cells: np.ndarray, k: int, sample_size: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """``(sample, total)``: at most ``sample_size`` of the (M, C) ``cells`` (seeded by ``rng``, in order)
    to learn ``k`` words from, or ValueError for cells that cannot make them (any codebook)."""
    cells = np.asarray(cells)
    if cells.ndim != 2:
        raise ValueError(f"cells must be a 2-d array (M, C), got shape {cells.shape}")
    if len(cells) < k:
        raise ValueError(f"{len(cells)} cells cannot make {k} visual words; "
                         f"use fewer words (e.g. --words {_suggest_k(len(cells))}) or more images")
    total = len(cells)
    if total > sample_size:
        cells = cells[np.sort(rng.choice(total, sample_size, replace=False))]
    return cells, total


SAMPLE_IMAGES_FACTOR = 1.25  # images drawn for the KMeans sample: a margin for images that fail to decode
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def sample_plan(n_images: int, cells_per_image: int, sample_size: int, seed: int) -> tuple[np.ndarray, int]:
    """Which images feed the KMeans sample, and how many cells of each: ``(image_rows, keep)``.

    ``image_rows`` is a sorted (M,) int64 seeded subset of ``range(n_images)``, enough images for
    ``sample_size`` cells with a 25% margin for images that fail to decode; ``keep`` (at most
    ``cells_per_image``) cells of each go to the sample (:func:`sample_cells`). Every engine and
    route draws the same plan, so they fit the codebook on the same cells.

    >>> rows, keep = sample_plan(1000, 16, 640, seed=0)
    >>> len(rows), keep, bool((np.diff(rows) > 0).all())
    (50, 13, True)
    """
    images_needed = min(n_images, math.ceil(SAMPLE_IMAGES_FACTOR * sample_size / cells_per_image))
    rng = np.random.default_rng(seed)
    image_rows = np.sort(rng.choice(n_images, images_needed, replace=False)).astype(np.int64)
    keep = min(cells_per_image, max(1, math.ceil(sample_size / max(1, images_needed))))
    return image_rows, keep


def sample_cells(rows: np.ndarray, cells: np.ndarray, keep: int, seed: int) -> np.ndarray:
    """``keep`` cells of each image, chosen by ``(seed, row)`` alone: (B, ..., C) -> (B * keep, C).

    ``rows`` (B,) are the images' positions in the sample table. Each image's choice is the ``keep``
    smallest of a hash of ``(seed, row, cell)`` (SplitMix64, Steele et al. 2014), so the sample of an
    image does not depend on which batch it came in or in what order: concatenating the result of
    batches in row order gives the same array however the rows were split.

    >>> cells = np.arange(2 * 4 * 1, dtype=np.float32).reshape(2, 4, 1)
    >>> a = sample_cells(np.array([7, 9]), cells, 2, seed=0)
    >>> b = np.concatenate([sample_cells(np.array([7]), cells[:1], 2, 0), sample_cells(np.array([9]), cells[1:], 2, 0)])
    >>> a.shape, bool((a == b).all())
    ((4, 1), True)
    """
    rows = np.asarray(rows, dtype=np.int64)
    flat = cells.reshape(len(rows), -1, cells.shape[-1])
    per_image = flat.shape[1]
    keys = _splitmix(_splitmix(np.uint64(seed % 2**64) ^ rows.astype(np.uint64))[:, None]
                     + np.arange(per_image, dtype=np.uint64)[None, :])
    choice = np.argsort(keys, axis=1, kind="stable")[:, :min(keep, per_image)]
    return np.take_along_axis(flat, choice[..., None], axis=1).reshape(-1, flat.shape[-1])


def _splitmix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = np.asarray(x, dtype=np.uint64) + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _suggest_k(cells: int) -> int:
    return max(8, min(1024, (cells // 40) // 8 * 8))


def small_set_advice(cells: int, k: int) -> str:
    """One line for a codebook fitted on fewer than :data:`MIN_CELLS_PER_WORD` cells per word.

    >>> small_set_advice(640, 32)
    'visual words: 640 image cells for 32 words is 20 per word (KMeans wants 39); the words are rough. --words 16 fits this set (or add images, or a larger --image-size for more cells per image)'
    """
    fits = max(8, cells // MIN_CELLS_PER_WORD // 8 * 8)
    return (f"visual words: {cells:,} image cells for {k:,} words is {cells // k} per word (KMeans wants "
            f"{MIN_CELLS_PER_WORD}); the words are rough. --words {fits} fits this set "
            "(or add images, or a larger --image-size for more cells per image)")


def pack_bags(words: np.ndarray, k: int, chunk: int = 65_536) -> np.ndarray:
    """Bags of words from word grids: (N, h, w) or (N, cells) ids -> (N, k/8) packed uint8."""
    if k % 8:
        raise ValueError(f"k must be a multiple of 8, got {k}")
    flat = words.reshape(len(words), -1)
    packed = np.zeros((len(words), k // 8), dtype=np.uint8)
    for start in range(0, len(words), chunk):
        block = np.asarray(flat[start:start + chunk])
        present = np.zeros((len(block), k), dtype=bool)
        present[np.arange(len(block))[:, None], block.astype(np.int64)] = True
        packed[start:start + len(block)] = np.packbits(present, axis=1, bitorder="little")
    return packed


def unpack_bags(packed: np.ndarray, k: int | None = None) -> np.ndarray:
    """Packed bags (N, k/8) uint8 -> (N, k) bool."""
    bits = np.unpackbits(packed, axis=1, bitorder="little").astype(bool)
    return bits if k is None else bits[:, :k]


def word_counts(words: np.ndarray, k: int) -> np.ndarray:
    """How many cells carry each word: (k,) int64."""
    return np.bincount(np.asarray(words).ravel().astype(np.int64), minlength=k)


def images_per_word(packed: np.ndarray, k: int, chunk: int = 65_536) -> np.ndarray:
    """In how many images each word occurs: (k,) int64."""
    counts = np.zeros(k, dtype=np.int64)
    for start in range(0, len(packed), chunk):
        counts += unpack_bags(packed[start:start + chunk], k).sum(axis=0)
    return counts
