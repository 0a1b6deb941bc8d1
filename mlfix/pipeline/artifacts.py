"""Artifacts of a project folder and the keys that say what made them.

Each pipeline artifact (``features/pooled.npy``, ``codebook/bags.npy``, ``orders/*.npy``,
``scores.parquet`` ...) is written atomically (:mod:`mlfix.atomic`) and then a key file
(``*.key.json``) beside it records the settings and inputs that made it. The key is written after
the artifact, so a run killed mid-write leaves no artifact that looks valid, and a rerun recomputes
only the stages whose key changed, whichever engine ran them.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> write_key(folder / "stage.key.json", {"words": 1024, "seed": 0})
    >>> read_key(folder / "stage.key.json") == {"words": 1024, "seed": 0}
    True
    >>> read_key(folder / "missing.key.json") is None
    True
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from mlfix.atomic import atomic_path, write_json_atomic


def atomic_parquet(table: pd.DataFrame, path: Path) -> None:
    """Write ``table`` (without its index) to ``path`` atomically."""
    with atomic_path(path, suffix=".parquet") as tmp:
        table.to_parquet(tmp, index=False)


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` to ``path`` atomically."""
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array)


def frame_digest(table: pd.DataFrame, columns: list[str]) -> str:
    """A short content hash of some columns (vectorised)."""
    hashed = pd.util.hash_pandas_object(table[columns], index=False).to_numpy()
    return hashlib.sha1(hashed.tobytes()).hexdigest()[:16]


def read_key(path: Path) -> dict | None:
    """The key stored at ``path``, or None when it is missing or unreadable (then the stage reruns)."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_key(path: Path, key: dict) -> None:
    """Store ``key`` at ``path`` (after the artifact it describes)."""
    write_json_atomic(path, key, sort_keys=True, default=str)


def same_key(path: Path, key: dict) -> bool:
    """Whether the stored key at ``path`` equals ``key`` as it would be stored (JSON round trip)."""
    return read_key(path) == json.loads(json.dumps(key, sort_keys=True, default=str))
