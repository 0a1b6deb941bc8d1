"""Thumbnails for the review grid, cached on disk in ``<project>/thumbs/``.

A thumbnail is a JPEG whose longer side is ``size`` pixels (aspect kept), stored under a name made
from a hash of the ``sample_id`` and the size, in one of 256 sub-folders (so that a project of a
million samples never puts a million files in one folder). A thumbnail is made the first time it is
asked for and then only read from disk: the page asks for the 100-200 it shows, never for all.

An image that cannot be read gets a grey placeholder with a cross instead (and a ``.bad`` marker
beside it, so that the broken file is not read again at every page view).

Links under ``thumbs/`` are never followed: a thumbnail, marker or sub-folder that is a symbolic link
(or anything but a plain file or folder) is not ours; it is replaced by a thumbnail made from the
image, and every write is a rename over the name, never a write through it. In the app, full-size
decodes for thumbnails wait for one of ``limits.decode_concurrency`` slots
(:func:`mlfix.data.images.decode_slot`).

Example (in the app, ``load`` is ``project.image`` and the folder ``<project>/thumbs``; see
:func:`for_project`):
    >>> import tempfile
    >>> photo = Image.new("RGB", (640, 480), "teal")
    >>> cache = ThumbnailCache(tempfile.mkdtemp(), load=lambda sample_id: photo, size=128)
    >>> paths = cache.ensure_many(["cats/001.png", "cats/002.png"])
    >>> paths[0].name, Image.open(paths[0]).size
    ('911c1d19e31b72de98705d3b_128.jpg', (128, 96))
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

from PIL import Image, ImageDraw
from mlfix.atomic import atomic_path, write_text_atomic
from mlfix.errors import ImageSourceUnavailable

DEFAULT_SIZE = 128
SOURCE_RETRY_S = 30.0  # after the image source failed, seconds before a thumbnail asks it again
JPEG_QUALITY = 85
PLACEHOLDER_GREY = (200, 200, 200)

LoadFn = Callable[[str], Image.Image]
_LOG = logging.getLogger(__name__)


def thumbnail_relpath(sample_id: str, size: int = DEFAULT_SIZE) -> str:
    """The thumbnail's path relative to the thumbs folder: ``<2 hex>/<hash>_<size>.jpg``.

    >>> thumbnail_relpath("cats/001.png", 128)
    '91/911c1d19e31b72de98705d3b_128.jpg'
    """
    if not isinstance(sample_id, str) or not sample_id:
        raise ValueError(f"sample_id must be a non-empty string, got {sample_id!r}")
    _check_size(size)
    digest = hashlib.sha1(sample_id.encode("utf-8")).hexdigest()[:24]
    return f"{digest[:2]}/{digest}_{int(size)}.jpg"


def make_thumbnail(image: Image.Image, size: int = DEFAULT_SIZE) -> Image.Image:
    """A copy of ``image`` in RGB whose longer side is at most ``size`` pixels (aspect kept).

    Small images are scaled *up* to ``size`` (with nearest-neighbour, so pixels stay crisp): a
    32 px image must still fill a 128 px tile.
    """
    _check_size(size)
    rgb = image.convert("RGB") if image.mode != "RGB" else image
    width, height = rgb.size
    scale = size / max(width, height)
    new = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    if scale > 1 and max(width, height) * 2 > size:
        resample = Image.Resampling.BICUBIC  # mild upscaling: smooth looks better than blocks
    return rgb.resize(new, resample, reducing_gap=3.0 if scale < 1 else None)


def placeholder(size: int = DEFAULT_SIZE) -> Image.Image:
    """A grey square with a dark cross: the thumbnail of an image that cannot be read."""
    _check_size(size)
    image = Image.new("RGB", (size, size), PLACEHOLDER_GREY)
    draw = ImageDraw.Draw(image)
    pad, width = size // 4, max(1, size // 24)
    draw.line((pad, pad, size - pad, size - pad), fill=(120, 120, 120), width=width)
    draw.line((pad, size - pad, size - pad, pad), fill=(120, 120, 120), width=width)
    return image


class ThumbnailCache:
    """Thumbnails of one size under one folder, made on demand with ``load(sample_id)``.

    Args:
        folder: where the thumbnails live (``<project>/thumbs``); created when needed.
        load: returns the full RGB image (or crop) of a sample; any exception it raises makes a
            placeholder thumbnail instead.
        size: longer side in pixels (16-1024).
        workers: threads used by :meth:`ensure_many` to make missing thumbnails.
    """

    def __init__(self, folder: str | os.PathLike, load: LoadFn, size: int = DEFAULT_SIZE,
                 workers: int = 4):
        _check_size(size)
        if not callable(load):
            raise TypeError("load must be a function sample_id -> PIL image (e.g. project.image)")
        self.folder = Path(folder)
        self.load = load
        self.size = int(size)
        self.workers = max(1, int(workers))
        self.errors: dict[str, str] = {}  # sample_id -> why its placeholder was made (this process)
        self._source_down_until = 0.0  # while the image source is down, no sample waits on its timeouts
        self._on_disk: set[str] = set()  # seen on disk by this object: no stat at the next page view

    def path(self, sample_id: str) -> Path:
        """Where the thumbnail of ``sample_id`` is (or will be) stored."""
        return self.folder / thumbnail_relpath(sample_id, self.size)

    def relpath(self, sample_id: str) -> str:
        return thumbnail_relpath(sample_id, self.size)

    def ensure(self, sample_id: str) -> Path:
        """The thumbnail's path, making the thumbnail first if it is not on disk yet."""
        target = self.path(sample_id)
        if is_plain_file(target):
            return target
        _own_folder(self.folder)
        _own_folder(target.parent)
        if time.monotonic() < self._source_down_until:  # each try costs seconds of the store's timeouts
            return self._unavailable()
        try:
            thumb = make_thumbnail(self.load(sample_id), self.size)
            bad = None
        except ImageSourceUnavailable as err:  # the store is down, not the image: nothing kept, retried later
            self.errors[sample_id] = f"{type(err).__name__}: {err}"
            self._source_down_until = time.monotonic() + SOURCE_RETRY_S
            return self._unavailable()
        except Exception as err:  # a broken image must not break the page
            thumb, bad = placeholder(self.size), f"{type(err).__name__}: {err}"
            self.errors[sample_id] = bad
            _LOG.warning("placeholder thumbnail for %r: %s", sample_id, bad)  # once: the marker stays
        _write_atomic(thumb, target)  # a rename: replaces a link, never writes through one
        if bad is not None:
            write_text_atomic(target.with_suffix(".bad"), bad)
        return target

    @property
    def unavailable_path(self) -> Path:
        """The placeholder shown while the image source cannot be reached (one file for all samples;
        a sample's own thumbnail is made once the source answers again)."""
        return self.folder / f"unavailable-{self.size}.jpg"

    def _unavailable(self) -> Path:
        target = self.unavailable_path
        if not is_plain_file(target):
            _write_atomic(placeholder(self.size), target)
        return target

    def ensure_many(self, sample_ids: Iterable[str]) -> list[Path]:
        """Paths of the thumbnails of ``sample_ids`` (same order), making the missing ones in threads.

        Only a ``stat`` per thumbnail the first time; later calls trust what this object has seen.
        """
        ids = list(sample_ids)
        paths = [self.path(s) for s in ids]
        missing = [i for i, (s, p) in enumerate(zip(ids, paths)) if s not in self._on_disk and not is_plain_file(p)]
        if len(missing) == 1 or self.workers == 1:
            made = [self.ensure(ids[i]) for i in missing]
        elif missing:
            with ThreadPoolExecutor(min(self.workers, len(missing))) as pool:
                made = list(pool.map(self.ensure, [ids[i] for i in missing]))
        else:
            made = []
        for i, path in zip(missing, made):
            paths[i] = path
        self._on_disk.update(s for s, p in zip(ids, paths) if p != self.unavailable_path)
        return paths

    def is_placeholder(self, sample_id: str) -> bool:
        """True if the stored thumbnail is a placeholder for an unreadable image."""
        return is_plain_file(self.path(sample_id).with_suffix(".bad"))


def for_project(project, size: int = DEFAULT_SIZE, workers: int = 4) -> ThumbnailCache:
    """The thumbnail cache of a :class:`mlfix.project.Project` (``<project>/thumbs``), one per
    project and size (reused, so its error notes survive page reruns).

    Decodes with ``project.image(sample_id, target_size=2 * size)`` (JPEG draft mode: large photos
    decode several times faster) when the project accepts ``target_size``.
    """
    key = (str(project.dir), int(size), id(project))
    cache = _CACHES.get(key)
    if cache is None:
        cache = ThumbnailCache(Path(project.dir) / "thumbs", _project_loader(project, size), size, workers)
        if len(_CACHES) > 32:  # a long-lived server opening many projects
            _CACHES.clear()
        _CACHES[key] = cache
    return cache


def thumbnail(project, sample_id: str, size: int = DEFAULT_SIZE) -> Path:
    """The path of one sample's thumbnail (made if needed); a placeholder for an unreadable image.

    Example: ``st.image(str(thumbnail(project, "cats/001.png", 96)))``
    """
    return for_project(project, size).ensure(sample_id)


_CACHES: dict[tuple, ThumbnailCache] = {}


def _project_loader(project, size: int) -> LoadFn:
    from mlfix.data.images import decode_slot  # the server process: bounded full-size decodes

    def load(sample_id: str) -> Image.Image:
        with decode_slot():
            try:
                return project.image(sample_id, target_size=2 * size)
            except TypeError:  # a project object whose image() takes no target_size
                return project.image(sample_id)

    return load


def is_plain_file(path: str | os.PathLike) -> bool:
    """True if ``path`` is a regular file itself (not a link to one, not a pipe or device)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def read_thumbnail(path: str | os.PathLike) -> bytes:
    """The bytes of a thumbnail file, refusing a symbolic link (``O_NOFOLLOW``) or a non-file."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError(f"not a plain file: {path}")
        return handle.read()


def _own_folder(folder: Path) -> None:
    """Make ``folder`` a real folder of ours: a link (or file) in its place is removed, never followed."""
    try:
        mode = os.lstat(folder).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISDIR(mode):
        os.unlink(folder)  # removes the link itself; what it pointed to is untouched
        mode = None
    if mode is None:
        folder.mkdir(parents=True, exist_ok=True)


def _write_atomic(image: Image.Image, target: Path) -> None:
    """Write a JPEG so that a reader (another tab, the web server) never sees half a file."""
    with atomic_path(target, suffix=".jpg") as tmp:
        image.save(tmp, "JPEG", quality=JPEG_QUALITY, optimize=True)


def _check_size(size: int) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or not 16 <= size <= 1024:
        raise ValueError(f"thumbnail size must be an integer from 16 to 1024 pixels, got {size!r}")
