"""Clusters of the pooled embeddings: groups of similar images to name as classes in one step.

A project without labels (or with mostly wrong ones) is labelled fastest a group at a time: the
Clusters page shows one row of examples per cluster, the reviewer types a class name, and every
member gets that label; then they go through each cluster's members, most typical first, so that
the odd ones out gather at the end.

- :func:`choose_k` — the number of clusters for N images: about ``sqrt(N / 2)``, capped at
  :data:`MAX_CLUSTERS` (enough groups to keep classes apart, few enough rows to name by hand);
- :func:`cluster_embeddings` — spherical KMeans (faiss, seeded) on the unit rows; clusters numbered
  largest first; each member's cosine similarity to its cluster's centre;
- :func:`member_order` — the rows of the clusters, cluster by cluster, most typical first;
- :func:`cached_clusters` — the same on a project's pooled vectors, cached under ``clusters/`` with a
  key (:mod:`mlfix.pipeline.artifacts`): recomputed only when the index or ``k`` changed.

Example (three groups of directions, found again; the largest first):
    >>> rng = np.random.default_rng(0)
    >>> x = np.repeat(np.eye(3, 6), [30, 20, 10], axis=0) + rng.normal(0, 0.1, (60, 6))
    >>> found = cluster_embeddings(x, k=3)
    >>> np.bincount(found.assign).tolist(), len(set(found.assign[:30]))
    ([30, 20, 10], 1)
    >>> member_order(found)[:3].tolist() == np.flatnonzero(found.assign == 0)[
    ...     np.argsort(-found.similarity[found.assign == 0], kind="stable")][:3].tolist()
    True
    >>> choose_k(1360), choose_k(10_000), choose_k(1)
    (26, 70, 1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlfix.pipeline.artifacts import atomic_save_npy, same_key, write_key
from mlfix.pipeline.ordering.embedding import check_embeddings, unit_rows

VERSION = 1  # in the cache key: bump when the clusters a given input gets change
MAX_CLUSTERS = 70  # rows a person names by hand; sqrt(N / 2) reaches it at N = 9,800
ITERATIONS = 25
FOLDER = "clusters"


@dataclass(frozen=True)
class Clusters:
    """``assign`` (N,) int64 cluster of each row (-1: not clustered, e.g. an unreadable image),
    ``similarity`` (N,) float32 cosine to its cluster's centre (NaN when not clustered), ``k``."""

    assign: np.ndarray
    similarity: np.ndarray
    k: int

    def members(self, cluster: int) -> np.ndarray:
        """Rows of one cluster, most typical (nearest its centre) first; ties by row."""
        rows = np.flatnonzero(self.assign == cluster)
        return rows[np.argsort(-self.similarity[rows], kind="stable")]

    def sizes(self) -> np.ndarray:
        """(k,) members per cluster (largest first, by construction)."""
        return np.bincount(self.assign[self.assign >= 0], minlength=self.k)


def choose_k(n: int, cap: int = MAX_CLUSTERS) -> int:
    """About ``sqrt(n / 2)`` clusters, at least 1 (2 once there are 2 images), at most ``cap`` and ``n``."""
    if n < 1:
        raise ValueError(f"clusters need at least one image, got n={n}")
    return int(min(n, cap, max(2 if n >= 2 else 1, round(math.sqrt(n / 2)))))


def cluster_embeddings(embeddings: np.ndarray, k: int | None = None, seed: int = 0,
                       iterations: int = ITERATIONS) -> Clusters:
    """Spherical KMeans on the unit rows of ``embeddings`` (N, D); ``k`` None: :func:`choose_k`.

    Clusters are renumbered by size, largest first (ties by their first row), so that the same input
    and seed give the same numbering. Zero rows have similarity 0 to every centre.
    """
    import faiss

    x = check_embeddings(np.asarray(embeddings))
    n = x.shape[0]
    k = choose_k(n) if k is None else int(k)
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of images ({n}), got {k}")
    unit = np.ascontiguousarray(unit_rows(x), dtype=np.float32)
    if k == 1:
        centre = unit.mean(axis=0, keepdims=True)
        centres = centre / max(float(np.linalg.norm(centre)), 1e-12)
    else:
        kmeans = faiss.Kmeans(unit.shape[1], k, niter=iterations, seed=seed, spherical=True, verbose=False,
                              min_points_per_centroid=1, max_points_per_centroid=256)
        kmeans.train(unit)
        centres = kmeans.centroids
    similarity = unit @ centres.T
    raw = similarity.argmax(axis=1)
    return _renumbered(raw, similarity[np.arange(n), raw].astype(np.float32), k)


def _renumbered(raw: np.ndarray, similarity: np.ndarray, k: int) -> Clusters:
    """Clusters numbered by size, largest first; empty clusters dropped (``k`` counts the rest)."""
    sizes = np.bincount(raw, minlength=k)
    first = np.full(k, len(raw))
    np.minimum.at(first, raw, np.arange(len(raw)))
    ranked = np.lexsort((first, -sizes))
    ranked = ranked[sizes[ranked] > 0]
    new = np.full(k, -1, dtype=np.int64)
    new[ranked] = np.arange(len(ranked))
    return Clusters(new[raw], similarity, int(len(ranked)))


def member_order(clusters: Clusters) -> np.ndarray:
    """Every clustered row, cluster by cluster (0 first), each cluster most typical first."""
    rows = np.flatnonzero(clusters.assign >= 0)
    return rows[np.lexsort((rows, -clusters.similarity[rows], clusters.assign[rows]))]


def cached_clusters(project_dir: str | Path, pooled: np.ndarray, readable: np.ndarray, index_key: dict | None,
                    k: int | None = None, seed: int = 0) -> Clusters:
    """:func:`cluster_embeddings` of a project's readable rows, cached in ``<project>/clusters/``.

    ``index_key``: the key of the index that made ``pooled`` (``orders/orders.key.json``); the
    cache is reused while it, ``k``, ``seed`` and :data:`VERSION` are the same. Unreadable rows get
    cluster -1.
    """
    folder = Path(project_dir) / FOLDER
    readable = np.asarray(readable, dtype=bool)
    rows = np.flatnonzero(readable)
    k = choose_k(len(rows)) if k is None else int(k)
    key = {"version": VERSION, "index": index_key, "k": k, "seed": seed, "rows": int(len(rows))}
    if same_key(folder / "clusters.key.json", key):
        assign = np.load(folder / "assign.npy")
        return Clusters(assign, np.load(folder / "similarity.npy"), int(assign.max(initial=-1)) + 1)
    found = cluster_embeddings(np.asarray(pooled[rows], dtype=np.float32), k=k, seed=seed)
    assign = np.full(len(readable), -1, dtype=np.int64)
    similarity = np.full(len(readable), np.nan, dtype=np.float32)
    assign[rows], similarity[rows] = found.assign, found.similarity
    folder.mkdir(parents=True, exist_ok=True)
    atomic_save_npy(folder / "assign.npy", assign)
    atomic_save_npy(folder / "similarity.npy", similarity)
    write_key(folder / "clusters.key.json", key)
    return Clusters(assign, similarity, found.k)
