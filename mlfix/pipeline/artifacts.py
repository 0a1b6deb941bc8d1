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

ENGINE_FILE = "features/engine.json"  # which engine made the features: mlfix status and the Training page


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


def write_engine(directory: Path, record: dict) -> None:
    """Record which engine ran the last features pass: ``{"engine", "address", "actors", "gpus",
    "images", "seconds"}`` (``engine`` is ``local`` or ``ray``)."""
    write_json_atomic(Path(directory) / ENGINE_FILE, record, indent=1)


def read_engine(directory: Path) -> dict | None:
    """The engine record of the project folder ``directory`` (:func:`write_engine`), or None when no
    features pass recorded one (a project indexed before the record existed, or not indexed).

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> read_engine(folder) is None
    True
    >>> write_engine(folder, {"engine": "ray", "address": None, "actors": 1, "gpus": 0, "images": 40, "seconds": 2.5})
    >>> read_engine(folder)["engine"]
    'ray'
    """
    record = read_key(Path(directory) / ENGINE_FILE)
    return record if isinstance(record, dict) else None


def engine_text(record: dict) -> str:
    """A features pass's engine record (``features/engine.json``) in words.

    >>> engine_text({"engine": "ray", "address": "auto", "actors": 1, "gpus": 0, "images": 40, "seconds": 12.34})
    'ray at auto, 1 actor, 0 GPUs, 40 images in 12.3 s'
    >>> engine_text({"engine": "local", "address": None, "actors": 1, "gpus": 1, "images": 1200, "seconds": 61})
    'local, 1 GPU, 1,200 images in 61.0 s'
    """
    def count(value, one: str) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return None
        return f"{value:,} {one}{'' if value == 1 else 's'}"

    engine = str(record.get("engine", "?"))
    parts = [engine + (f" at {record.get('address') or 'a local Ray'}" if engine == "ray" else "")]
    if engine == "ray":
        parts.append(count(record.get("actors"), "actor"))
    parts.append(count(record.get("gpus"), "GPU"))
    images, seconds = count(record.get("images"), "image"), record.get("seconds")
    if images and isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
        images += f" in {seconds:.1f} s"
    parts.append(images)
    return ", ".join(part for part in parts if part)
