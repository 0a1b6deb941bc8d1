"""Image IO confined to a data root: safe relative paths, :class:`DataRoot` (a folder or a ``.zip``),
and decoding any image (or a box of it) into 8-bit RGB.

Nothing outside the data root is ever read: absolute paths, ``..`` and links that leave the root are
refused with :class:`~mlfix.errors.UnsafePathError`. An image that cannot be used (missing, empty,
not an image, truncated, too small, a decompression bomb) raises :class:`~mlfix.errors.ImageError`
whose message is the reason shown to the user; decoding errors never become half-grey images.

Nothing hostile is read into memory either (:mod:`mlfix.limits`): a zip member whose declared size is
over ``zip_member_bytes`` or that expands more than ``zip_member_ratio`` times (a zip bomb) is refused
before it is read, every read stops at ``zip_member_bytes`` (declared sizes can lie), and an image
whose header declares more than ``image_pixels`` pixels is refused before it is decoded.

    >>> import tempfile
    >>> from PIL import Image
    >>> folder = tempfile.mkdtemp()
    >>> Image.new("RGBA", (16, 12), (255, 0, 0, 0)).save(f"{folder}/a.png")
    >>> image = load_image(DataRoot(folder), {"path": "a.png", "box_x": 2, "box_y": 2, "box_w": 10, "box_h": 8})
    >>> image.mode, image.size, image.getpixel((0, 0))
    ('RGB', (10, 8), (255, 255, 255))
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import threading
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator
from urllib.parse import unquote, urlsplit

import numpy as np
import pandas as pd
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from mlfix import limits
from mlfix.data.object_store import ObjectStore, is_remote
from mlfix.errors import ImageError, UnsafePathError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
MIN_SIDE = 8  # smaller images carry no usable visual words
RATIO_FLOOR = 2**20  # a member this small cannot exhaust memory: its compression ratio is not checked
CHUNK = 2**20

# Decoding errors must surface as errors, never as half-grey images.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def safe_relative_path(path: str) -> str:
    """Normalise a dataset-relative path; raise :class:`UnsafePathError` if it leaves the root.

    >>> safe_relative_path("cats/./a.png")
    'cats/a.png'
    >>> safe_relative_path("../etc/passwd")
    Traceback (most recent call last):
    ...
    mlfix.errors.UnsafePathError: path leaves the data root: '../etc/passwd'
    """
    text = str(path).replace("\\", "/").strip()
    if not text:
        raise UnsafePathError("empty path")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        raise UnsafePathError(f"absolute path is not allowed: {text!r}")
    parts: list[str] = []
    for part in PurePosixPath(text).parts:
        if part in ("", "."):
            continue
        if part == "..":
            raise UnsafePathError(f"path leaves the data root: {text!r}")
        parts.append(part)
    if not parts:
        raise UnsafePathError(f"empty path: {text!r}")
    return "/".join(parts)


class DataRoot:
    """Read-only access to the files under a folder, inside a zip, or under an object-storage URI
    (``s3://bucket/prefix``: :class:`~mlfix.data.object_store.ObjectStore`), confined to that root.

    Safe to use from several threads and, after pickling, from DataLoader worker processes and Ray
    workers (each process opens its own zip handle or store connection). ``location`` is the
    resolved folder or zip path, or the URI as given.
    """

    def __init__(self, location: str | os.PathLike):
        self.store = ObjectStore(str(location)) if is_remote(location) else None
        self.is_zip = False
        self._local = threading.local()
        if self.store is not None:
            self.location = self.store.uri
            return
        text = str(location)
        self.location = Path(unquote(urlsplit(text).path) if text.lower().startswith("file://") else text)
        self.location = self.location.expanduser().resolve()
        if not self.location.exists():
            raise FileNotFoundError(f"image source not found: {self.location}")
        self.is_zip = self.location.is_file() and zipfile.is_zipfile(self.location)
        if self.location.is_file() and not self.is_zip:
            raise ValueError(f"image source must be a folder or a .zip file: {self.location}")

    def __getstate__(self):
        return {"location": self.location, "is_zip": self.is_zip, "store": self.store}

    def __setstate__(self, state):
        self.__dict__.update({"store": None, **state})
        self._local = threading.local()

    def _zip(self) -> zipfile.ZipFile:
        handle = getattr(self._local, "zip", None)
        if handle is None or getattr(self._local, "pid", None) != os.getpid():
            handle = zipfile.ZipFile(self.location)
            self._local.zip, self._local.pid = handle, os.getpid()
        return handle

    def list_images(self) -> list[str]:
        """Relative posix paths of every image file under the root, sorted."""
        if self.store is not None:
            names = self.store.list_files()
        elif self.is_zip:
            names = [n for n in self._zip().namelist() if not n.endswith("/")]
        else:
            names = [
                Path(dirpath, f).relative_to(self.location).as_posix()
                for dirpath, _, files in os.walk(self.location)
                for f in files
            ]
        return sorted(
            n for n in names if Path(n).suffix.lower() in IMAGE_EXTENSIONS and not _is_hidden(n)
        )

    def read_bytes(self, path: str) -> bytes:
        """The bytes of one file, read with a bound (``limits.zip_member_bytes``); :class:`ImageError`
        if missing, refused by the limits, or outside the root."""
        with self.open(path) as handle:
            return read_bounded(handle, limits.current().zip_member_bytes, safe_relative_path(path))

    def open(self, path: str) -> BinaryIO:
        """A binary file object of one file, after the checks that need no reading (in a zip: the
        declared size and ratio, links; in a folder: links out of the root, the file's kind and size)."""
        rel = safe_relative_path(path)
        if self.store is not None:
            return self.store.open(rel)
        if self.is_zip:
            try:
                info = self._zip().getinfo(rel)
            except KeyError:
                raise ImageError(f"file not found in zip: {rel}") from None
            check_zip_member(info)
            try:
                return self._zip().open(info)
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError) as err:
                raise ImageError(f"cannot read zip member {rel}: {err}") from None
        full = (self.location / rel).resolve()
        if not full.is_relative_to(self.location):
            raise UnsafePathError(f"path leaves the data root through a link: {rel!r}")
        try:  # O_NONBLOCK: opening a FIFO named like an image must not wait for a writer
            handle = os.fdopen(os.open(full, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb")
        except FileNotFoundError:
            raise ImageError(f"file not found: {rel}") from None
        except IsADirectoryError:
            raise ImageError(f"is a folder, not an image: {rel}") from None
        except OSError as err:
            raise ImageError(f"cannot open {rel}: {err.strerror or err}") from None
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > limits.current().zip_member_bytes:
            handle.close()
            if not stat.S_ISREG(info.st_mode):
                raise ImageError(f"not a regular file (a device, pipe or socket): {rel}")
            raise ImageError(limits.too_big(rel, info.st_size, "is"))
        return handle


def check_zip_member(info: zipfile.ZipInfo) -> None:
    """Refuse a zip member before reading it: a link, a folder, an encrypted member, a declared size
    over ``limits.zip_member_bytes``, or (above 1 MB) a ratio over ``limits.zip_member_ratio``."""
    name, mode = info.filename, info.external_attr >> 16
    if info.is_dir():
        raise ImageError(f"is a folder, not an image: {name}")
    if stat.S_ISLNK(mode):
        raise ImageError(f"zip member is a symbolic link, not an image: {name}")
    if info.flag_bits & 0x1:
        raise ImageError(f"zip member is encrypted: {name}")
    if info.file_size > limits.current().zip_member_bytes:
        raise ImageError(limits.too_big(f"zip member {name}", info.file_size, "declares"))
    ratio = info.file_size / max(1, info.compress_size)
    most = limits.current().zip_member_ratio
    if info.file_size > RATIO_FLOOR and ratio > most:
        raise ImageError(f"zip member {name} expands {ratio:,.0f} times ({limits.megabytes(info.compress_size)} to "
                         f"{limits.megabytes(info.file_size)}), over the limit of {most:,} "
                         f"({limits.Limits.env_name('zip_member_ratio')}): a zip bomb? not read")


def read_bounded(handle: BinaryIO, limit: int, name: str) -> bytes:
    """Read ``handle`` to its end, but never more than ``limit`` bytes (:class:`ImageError` past it:
    a zip member may declare less than it holds); a damaged zip member is an ImageError too."""
    chunks, total = [], 0
    try:
        while True:
            chunk = handle.read(min(CHUNK, limit + 1 - total))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise ImageError(f"{name} holds more than the limit of {limits.megabytes(limit)} per image "
                                 f"({limits.Limits.env_name('zip_member_bytes')}); reading stopped")
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
        raise ImageError(f"cannot read {name}: {err}") from None


def _is_hidden(path: str) -> bool:
    # ".." is not hidden: a name that climbs out is kept, to be refused with its reason
    return any((part.startswith(".") and part != "..") or part == "__MACOSX" for part in path.split("/"))


def open_image_header(data: bytes | BinaryIO) -> Image.Image:
    """Open an image lazily (header only: bytes or a file object) and check its declared size
    against ``limits.image_pixels`` and :data:`MIN_SIDE` before anything is decoded."""
    if isinstance(data, (bytes, bytearray)):
        data = io.BytesIO(data)
    try:
        if not data.read(1):
            raise ImageError("empty file (0 bytes)")
        data.seek(0)
        image = Image.open(data)
    except UnidentifiedImageError:
        raise ImageError("not an image, or an unknown image format") from None
    except Image.DecompressionBombError as err:
        raise ImageError(f"declared size too large (decompression bomb): {err}") from None
    except ImageError:
        raise
    except Exception as err:  # PIL raises many kinds on garbage; a damaged zip member too
        raise ImageError(f"cannot read image header: {err}") from None
    width, height = image.size
    most = limits.current().image_pixels
    if width * height > most:
        raise ImageError(f"image too large to decode: {width}x{height} is {width * height:,} pixels, over "
                         f"the limit of {most:,} ({limits.Limits.env_name('image_pixels')})")
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"image too small ({width}x{height} px; at least {MIN_SIDE} px a side)")
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode (palette, grey, CMYK, 16-bit, float, alpha) to 8-bit RGB.

    Transparent pixels become white, 16-bit and float images are scaled by their own range.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float32)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        return Image.fromarray(scaled.astype(np.uint8), "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(data: bytes, box: tuple[float, float, float, float] | None = None,
                 target_size: int | None = None) -> Image.Image:
    """Decode bytes into an RGB image, optionally cropped to ``box`` = (x, y, w, h).

    ``target_size`` lets JPEG decode at a reduced scale (draft mode: 1/2, 1/4 or 1/8, several times
    faster and smaller for large photos that are resized down anyway); a box is then scaled with it,
    so that the crop is still at least ``target_size`` on its longer side.
    """
    image = open_image_header(data)
    full_width, scale = image.size[0], 1.0
    try:
        if target_size and image.format == "JPEG":
            image.draft("RGB", _draft_request(image.size, box, target_size))
            scale = image.size[0] / full_width  # the same on both sides (1/2, 1/4 or 1/8)
        image = ImageOps.exif_transpose(image) or image
        image.load()
    except ImageError:
        raise
    except Exception as err:
        raise ImageError(f"cannot decode image (corrupt or truncated): {err}") from None
    if box is not None:
        x, y, w, h = (value * scale for value in box)
        image = image.crop((int(round(x)), int(round(y)), int(round(x + w)), int(round(y + h))))
    return to_rgb(image)


def _draft_request(size: tuple[int, int], box: tuple[float, float, float, float] | None,
                   target_size: int) -> tuple[int, int]:
    """The size to ask JPEG draft mode for, so that ``box`` (or the whole image) keeps at least
    ``target_size`` pixels on its longer side.

    >>> _draft_request((4000, 3000), None, 256)
    (256, 256)
    >>> _draft_request((4000, 3000), (0, 0, 400, 200), 256)
    (2560, 1920)
    """
    if box is None:
        return (target_size, target_size)
    scale = min(1.0, target_size / max(1.0, max(box[2], box[3])))
    return (int(round(size[0] * scale)), int(round(size[1] * scale)))


def load_image(root: DataRoot, row: pd.Series | dict, target_size: int | None = None) -> Image.Image:
    """Load the RGB image (or crop) for one sample row of the samples table."""
    return decode_image(root.read_bytes(row["path"]), box=row_box(row), target_size=target_size)


def row_box(row: pd.Series | dict) -> tuple[float, float, float, float] | None:
    box = (row.get("box_x"), row.get("box_y"), row.get("box_w"), row.get("box_h"))
    if any(v is None or (isinstance(v, float) and np.isnan(v)) for v in box):
        return None
    return tuple(float(v) for v in box)  # type: ignore[return-value]


_SLOTS_LOCK = threading.Lock()
_SLOTS: dict[int, threading.BoundedSemaphore] = {}  # decode_concurrency -> its semaphore


@contextlib.contextmanager
def decode_slot() -> Iterator[None]:
    """Hold one of ``limits.decode_concurrency`` full-size decode slots of this process.

    Every tab's thumbnails are made in the server process; a page of large images decoded by every
    thread at once would take the memory of all of them together. Wrap a full-size decode in it::

        with decode_slot():
            image = project.image(sample_id)
    """
    most = limits.current().decode_concurrency
    with _SLOTS_LOCK:
        slots = _SLOTS.setdefault(most, threading.BoundedSemaphore(most))
    with slots:
        yield
