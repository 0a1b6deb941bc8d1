"""Synthetic data for the scoring tests: labelled blobs with planted errors, and their bags of words."""

from __future__ import annotations

import numpy as np

N_CLASSES, PER_CLASS, DIM, WORDS = 10, 40, 32, 256


def blobs_data(seed: int = 0, flip: float = 0.05):
    """10 classes x 40 samples in distinct directions, 5% labels flipped to another class."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (N_CLASSES, DIM)) * 3
    truth = np.repeat(np.arange(N_CLASSES), PER_CLASS)
    x = centers[truth] + rng.normal(0, 1, (len(truth), DIM))
    given_codes = truth.copy()
    planted = rng.choice(len(truth), int(flip * len(truth)), replace=False)
    given_codes[planted] = (truth[planted] + rng.integers(1, N_CLASSES, len(planted))) % N_CLASSES
    names = np.array([f"class{c}" for c in range(N_CLASSES)], dtype=object)
    bags = _bags(truth, rng)
    is_error = np.zeros(len(truth), dtype=bool)
    is_error[planted] = True
    return {"x": x.astype(np.float32), "labels": names[given_codes], "truth": names[truth],
            "ids": [f"img{i:03d}" for i in range(len(truth))], "bags": bags, "is_error": is_error}


def _bags(truth: np.ndarray, rng) -> np.ndarray:
    """Packed bags of words: each class owns 24 words; an image holds 12 of them and 6 random words."""
    own = rng.permutation(WORDS)[: N_CLASSES * 24].reshape(N_CLASSES, 24)
    bags = np.zeros((len(truth), WORDS), dtype=bool)
    for i, c in enumerate(truth):
        bags[i, rng.choice(own[c], 12, replace=False)] = True
        bags[i, rng.choice(WORDS, 6, replace=False)] = True
    return np.packbits(bags, axis=1, bitorder="little")


def noisy_blobs(flip: float, seed: int = 1):
    """Blobs that overlap (noise 2.5x) with many flipped labels: the first fit learns from the noise."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (4, DIM)) * 1.2
    truth = np.repeat(np.arange(4), 100)
    x = (centers[truth] + rng.normal(0, 1, (len(truth), DIM))).astype(np.float32)
    given = truth.copy()
    planted = rng.choice(len(truth), int(flip * len(truth)), replace=False)
    given[planted] = (truth[planted] + rng.integers(1, 4, len(planted))) % 4
    return x, given.astype(str).astype(object), truth.astype(str).astype(object), given != truth
