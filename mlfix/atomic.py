"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file mlfix writes goes through :func:`atomic_path`: the content is written to a temporary
name in the same folder, then renamed over the target (``os.replace`` is atomic on one file
system). A process killed mid-write leaves at most a stray ``.*.tmp`` file, never a damaged
artifact, checkpoint or view.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> write_text_atomic(folder / "a.json", '{"x": 1}')
    >>> (folder / "a.json").read_text()
    '{"x": 1}'
    >>> sorted(p.name for p in folder.iterdir())   # no temporary file is left behind
    ['a.json']
"""

from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "", fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error, rename it over ``path``.

    ``suffix`` ends the temporary name (``np.save`` appends ``.npy`` to a name without it). With
    ``fsync`` the data reach the disk before the rename (checkpoints: a power cut keeps the old one).
    On an error the temporary file is removed and the error propagates; ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp{suffix}")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, data: Any, **dumps_options) -> None:
    """Write ``data`` as JSON to ``path`` atomically (``dumps_options`` go to :func:`json.dumps`)."""
    write_text_atomic(path, json.dumps(data, **dumps_options))
