"""Folders held by a running server process: several servers share one app folder without removing
each other's files.

The app's thumbnail mirrors (``static/mlfix-thumbs/<key>``, :mod:`mlfix.ui.grid`) of a server that
has stopped are removed by the next server; two servers started from the same installation (two
``mlfix serve`` behind a load balancer on one machine) must not remove each other's. A process
*holds* a folder with a shared ``flock`` on ``<folder>/.alive`` for as long as it runs: the kernel
drops the lock when the process ends, however it ends (no pid file to go stale, no pid reuse).
Another process asks :func:`held_elsewhere`, which tries an exclusive lock without waiting.
Without ``flock`` (Windows) nothing is held and every folder reads as free.

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp()) / "mirror"
    >>> hold(folder); held_elsewhere(folder)   # held by this process: not "elsewhere"
    False
    >>> release(folder)
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; folders are never held
    fcntl = None

MARKER = ".alive"
_HELD: dict[str, int] = {}  # folder -> the descriptor holding its lock (this process)
_LOCK = threading.Lock()


def hold(folder: str | os.PathLike) -> None:
    """Create ``folder`` (when missing) and hold it while this process runs (idempotent; a folder that
    cannot be written is left as it is)."""
    try:
        _hold(Path(folder))
    except OSError:  # e.g. a read-only app folder: nothing is mirrored there either
        pass


def _hold(folder: Path) -> None:
    if fcntl is None:
        folder.mkdir(parents=True, exist_ok=True)
        return
    with _LOCK:
        if str(folder) in _HELD:
            return
        for _ in range(3):  # another process may remove a folder nobody held yet: make it again
            folder.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(folder / MARKER, os.O_RDONLY | os.O_CREAT, 0o644)
            except FileNotFoundError:
                continue
            fcntl.flock(fd, fcntl.LOCK_SH)
            try:
                same = os.fstat(fd).st_ino == os.stat(folder / MARKER).st_ino
            except FileNotFoundError:
                same = False
            if same:
                _HELD[str(folder)] = fd
                return
            os.close(fd)


def held_elsewhere(folder: str | os.PathLike) -> bool:
    """Whether another running process holds ``folder`` (False for this process's own folders)."""
    if fcntl is None or str(Path(folder)) in _HELD:
        return False
    try:
        fd = os.open(Path(folder) / MARKER, os.O_RDONLY)
    except OSError:  # no marker (not a held folder), or not ours to read
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)  # (drops the probe's lock too)


def release(folder: str | os.PathLike) -> None:
    """Stop holding ``folder`` (before removing it)."""
    with _LOCK:
        fd = _HELD.pop(str(Path(folder)), None)
    if fd is not None:
        os.close(fd)
