"""Image IO confined to a data root: safe relative paths, :class:`DataRoot` (a folder or a ``.zip``),
and decoding any image (or a box of it) into 8-bit RGB.

Nothing outside the data root is ever read: absolute paths, ``..`` and links that leave the root are
refused with :class:`~mlfix.errors.UnsafePathError`. An image that cannot be used (missing, empty,
not an image, truncated, too small, a decompression bomb) raises :class:`~mlfix.errors.ImageError`
whose message is the reason shown to the user; decoding errors never become half-grey images.

    >>> import tempfile
    >>> from PIL import Image
    >>> folder = tempfile.mkdtemp()
    >>> Image.new("RGBA", (16, 12), (255, 0, 0, 0)).save(f"{folder}/a.png")
    >>> image = load_image(DataRoot(folder), {"path": "a.png", "box_x": 2, "box_y": 2, "box_w": 10, "box_h": 8})
    >>> image.mode, image.size, image.getpixel((0, 0))
    ('RGB', (10, 8), (255, 255, 255))
"""

from __future__ import annotations

import io
import os
import threading
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from mlfix.errors import ImageError, UnsafePathError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
MIN_SIDE = 8  # smaller images carry no usable visual words
MAX_PIXELS = 89_478_485  # PIL's own bomb threshold; a declared size above this is refused unread

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
    """Read-only access to the files under a folder or inside a zip, confined to that root.

    Safe to use from several threads and, after pickling, from DataLoader worker processes (each
    process opens its own zip handle).
    """

    def __init__(self, location: str | os.PathLike):
        self.location = Path(location).expanduser().resolve()
        if not self.location.exists():
            raise FileNotFoundError(f"image source not found: {self.location}")
        self.is_zip = self.location.is_file() and zipfile.is_zipfile(self.location)
        if self.location.is_file() and not self.is_zip:
            raise ValueError(f"image source must be a folder or a .zip file: {self.location}")
        self._local = threading.local()

    def __getstate__(self):
        return {"location": self.location, "is_zip": self.is_zip}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()

    def _zip(self) -> zipfile.ZipFile:
        handle = getattr(self._local, "zip", None)
        if handle is None or getattr(self._local, "pid", None) != os.getpid():
            handle = zipfile.ZipFile(self.location)
            self._local.zip, self._local.pid = handle, os.getpid()
        return handle

    def list_images(self) -> list[str]:
        """Relative posix paths of every image file under the root, sorted."""
        if self.is_zip:
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
        """The bytes of one file; :class:`ImageError` if missing or outside the root."""
        rel = safe_relative_path(path)
        if self.is_zip:
            try:
                return self._zip().read(rel)
            except KeyError:
                raise ImageError(f"file not found in zip: {rel}") from None
        full = (self.location / rel).resolve()
        if not full.is_relative_to(self.location):
            raise UnsafePathError(f"path leaves the data root through a link: {rel!r}")
        try:
            return full.read_bytes()
        except FileNotFoundError:
            raise ImageError(f"file not found: {rel}") from None
        except IsADirectoryError:
            raise ImageError(f"is a folder, not an image: {rel}") from None


def _is_hidden(path: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in path.split("/"))


def open_image_header(data: bytes) -> Image.Image:
    """Open an image lazily (header only) and check its declared size."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not an image, or an unknown image format") from None
    except Image.DecompressionBombError as err:
        raise ImageError(f"declared size too large (decompression bomb): {err}") from None
    except Exception as err:  # PIL raises many kinds on garbage
        raise ImageError(f"cannot read image header: {err}") from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageError(f"declared size {width}x{height} is too large (over {MAX_PIXELS:,} pixels)")
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

    ``target_size`` lets JPEG decode at a reduced scale (draft mode), which is several times faster
    for large photos that are resized down anyway.
    """
    image = open_image_header(data)
    try:
        if target_size and box is None and image.format == "JPEG":
            image.draft("RGB", (target_size, target_size))
        image = ImageOps.exif_transpose(image) or image
        image.load()
    except ImageError:
        raise
    except Exception as err:
        raise ImageError(f"cannot decode image (corrupt or truncated): {err}") from None
    if box is not None:
        x, y, w, h = box
        image = image.crop((int(round(x)), int(round(y)), int(round(x + w)), int(round(y + h))))
    return to_rgb(image)


def load_image(root: DataRoot, row: pd.Series | dict, target_size: int | None = None) -> Image.Image:
    """Load the RGB image (or crop) for one sample row of the samples table."""
    return decode_image(root.read_bytes(row["path"]), box=row_box(row), target_size=target_size)


def row_box(row: pd.Series | dict) -> tuple[float, float, float, float] | None:
    box = (row.get("box_x"), row.get("box_y"), row.get("box_w"), row.get("box_h"))
    if any(v is None or (isinstance(v, float) and np.isnan(v)) for v in box):
        return None
    return tuple(float(v) for v in box)  # type: ignore[return-value]
