"""The input every ordering shares: bags checked and turned into packed ``uint64`` rows, a checked
start row, and the compiled kernels (loaded lazily).

A bag is one bit per visual word. It comes as ``bool`` (N, k), one column per word, or as ``uint8``
(N, ceil(k/8)) packed bits; :func:`as_words` turns either into C-contiguous, aligned ``uint64``
rows, zero padded, on which the kernels count shared words with ``popcount(x & y)``.

    >>> import numpy as np
    >>> as_words(np.ones((2, 3), bool)).tolist()
    [[7], [7]]
    >>> check_start(1, n=2)
    1
"""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np

PACKING_HINT = ("pass bool (N, k) bags, one column per word, or uint8 (N, ceil(k/8)) packed bits "
                "from np.packbits(bags, axis=1, bitorder='little')")


def as_words(bags: np.ndarray, name: str = "bags") -> np.ndarray:
    """Bags as a C-contiguous, aligned uint64 array (N, W) of packed bits, zero padded."""
    if not isinstance(bags, np.ndarray):
        raise TypeError(f"{name} must be a numpy array; {PACKING_HINT}")
    if bags.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N images, words), got shape {bags.shape}; {PACKING_HINT}")
    if bags.dtype == np.bool_:
        packed = np.packbits(bags, axis=1, bitorder="little")
    elif bags.dtype == np.uint8:
        packed = bags
    else:
        raise TypeError(f"{name} has dtype {bags.dtype}; {PACKING_HINT} "
                        "(0/1 integers: use bags.astype(bool))")
    n, nbytes = packed.shape
    width = max(1, math.ceil(nbytes / 8))
    if nbytes == width * 8 and packed.flags.c_contiguous:
        words = packed.view(np.uint64)
        if words.flags.aligned:
            return words
        return words.copy()
    padded = np.zeros((n, width * 8), np.uint8)
    padded[:, :nbytes] = packed
    return padded.view(np.uint64)


def check_start(start, n: int) -> int:
    """``start`` as an int row index of ``n`` rows; TypeError or ValueError saying what to pass."""
    if isinstance(start, (bool, np.bool_)) or not isinstance(start, (int, np.integer)):
        raise TypeError(f"start must be an integer row index, got {type(start).__name__}")
    start = int(start)
    if n == 0:
        if start != 0:
            raise ValueError(f"start={start} but there are no images; use start=0")
        return 0
    if not 0 <= start < n:
        raise ValueError(f"start={start} is out of range for {n} images; use 0 <= start < {n}")
    return start


def check_int_options(**options: tuple[object, int]) -> None:
    """``name=(value, low)``: ValueError unless each value is an integer >= its ``low``."""
    for label, (value, low) in options.items():
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{label} must be an integer >= {low}, got {value!r}")


def load_kernels() -> ModuleType:
    """:mod:`mlfix.pipeline.ordering.kernels`, imported on first use: importing numba takes a second."""
    from mlfix.pipeline.ordering import kernels

    return kernels
