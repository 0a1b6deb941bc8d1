"""Bags for the ordering tests: a hypothesis strategy with many ties, clustered bags, packing, and
the permutation check."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# The first example compiles the numba kernels (or loads them from the cache): no deadline.
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def small_bags(draw, max_n: int = 60, min_k: int = 1, max_k: int = 32):
    """bool (n, k) bags; small k and a low or high density make many ties."""
    n = draw(st.integers(0, max_n))
    k = draw(st.integers(min_k, max_k))
    density = draw(st.sampled_from([0.05, 0.2, 0.5, 0.9]))
    seed = draw(st.integers(0, 2**32 - 1))
    bags = np.random.default_rng(seed).random((n, k)) < density
    start = draw(st.integers(0, max(0, n - 1)))
    return bags, start


def pack(bags: np.ndarray, bitorder: str = "little") -> np.ndarray:
    return np.packbits(bags, axis=1, bitorder=bitorder)


def is_permutation(order_: np.ndarray, n: int) -> bool:
    return order_.dtype == np.int64 and np.array_equal(np.sort(order_), np.arange(n))


def clustered(n: int, k: int = 256, clusters: int = 8, words: int = 30, seed: int = 0) -> np.ndarray:
    """Bags whose words come mostly from a per-cluster vocabulary."""
    rng = np.random.default_rng(seed)
    vocab = [rng.choice(k, 60, replace=False) for _ in range(clusters)]
    bags = np.zeros((n, k), bool)
    for i, c in enumerate(rng.integers(0, clusters, n)):
        bags[i, rng.choice(vocab[c], words - 5, replace=False)] = True
        bags[i, rng.choice(k, 5, replace=False)] = True
    return bags
