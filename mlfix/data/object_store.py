"""Images on object storage: a data root that is a URI pyarrow reads (``s3://bucket/prefix``, ``gs://``,
``hdfs://``, ``abfs://``), for a Ray cluster whose nodes share no filesystem.

:class:`ObjectStore` lists the files under the URI and fetches one object whole (one request; the
size is checked against ``limits.zip_member_bytes`` before anything is read), behind the same
:class:`~mlfix.data.images.DataRoot` as a folder or a zip: scanning, indexing on either engine,
thumbnails and the app read it unaware. Paths are relative to the URI and go through
:func:`~mlfix.data.images.safe_relative_path` first, so nothing outside the prefix is read.

Credentials come from the environment the way pyarrow looks for them (for S3: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``~/.aws``, an instance role), never from the URI: the URI is saved in the
project and shown in the app, so one that carries a key (``s3://KEY:SECRET@bucket``) is refused.
Other options ride in its query, as pyarrow reads them (``?region=eu-west-1``,
``?endpoint_override=minio:9000&scheme=http`` for MinIO or another S3-compatible store).

    >>> is_remote("s3://bucket/photos"), is_remote("photos/"), is_remote("C:/photos")
    (True, False, False)
    >>> ObjectStore("s3://KEY:SECRET@bucket/photos")
    Traceback (most recent call last):
    ...
    ValueError: the image URI carries credentials (s3://KEY:...@...); ... (for S3: AWS_ACCESS_KEY_ID ...
"""

from __future__ import annotations

import io
import re
from typing import BinaryIO
from urllib.parse import urlsplit

from mlfix import limits
from mlfix.errors import ImageError

# A scheme of two letters or more: "C:/photos" is a Windows path, not a URI.
URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]+://")


def is_remote(location) -> bool:
    """Whether ``location`` names object storage (a URI other than ``file://``) rather than a local path."""
    text = str(location)
    return bool(URI.match(text)) and not text.lower().startswith("file://")


class ObjectStore:
    """Read-only access to the objects under one URI prefix (pyarrow's filesystems).

    Pickles as its URI (each Ray worker or DataLoader process opens its own connection, with its own
    credentials from its environment). Raises ``ValueError`` for a URI pyarrow cannot read or one
    with credentials in it, ``FileNotFoundError`` when nothing is stored under the prefix.
    """

    def __init__(self, uri: str):
        self.uri = str(uri).rstrip("/")
        parts = urlsplit(self.uri)
        if parts.username or parts.password:
            raise ValueError(f"the image URI carries credentials ({parts.scheme}://{parts.username}:...@...); it is "
                             "saved in the project and shown in the app. Give them in the environment instead (for "
                             "S3: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or ~/.aws)")
        self._filesystem, self.base = _connect(self.uri)
        from pyarrow.fs import FileType

        kind = self._info(self.base).type
        if kind == FileType.File:
            raise ValueError(f"image source must be a folder (a prefix) of images, not one object: {self.uri}")
        if kind != FileType.Directory:
            raise FileNotFoundError(f"image source not found: nothing is stored under {self.uri}")

    def __getstate__(self):
        return {"uri": self.uri, "base": self.base}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._filesystem = None

    @property
    def filesystem(self):
        if self._filesystem is None:
            self._filesystem, _ = _connect(self.uri)
        return self._filesystem

    def list_files(self) -> list[str]:
        """Every object under the prefix, as a path relative to it (unsorted)."""
        from pyarrow.fs import FileSelector, FileType

        try:
            found = self.filesystem.get_file_info(FileSelector(self.base, recursive=True))
        except OSError as err:
            raise ImageError(f"cannot list {self.uri}: {err}") from None
        start = len(self.base) + 1
        return [info.path[start:] for info in found if info.type == FileType.File]

    def open(self, rel: str) -> BinaryIO:
        """One object (``rel`` already made safe by the caller), fetched whole after its size is checked:
        :class:`ImageError` when it is missing, a prefix, over the limit, or the store fails."""
        from pyarrow.fs import FileType

        key = f"{self.base}/{rel}"
        info = self._info(key)
        if info.type == FileType.NotFound:
            raise ImageError(f"file not found: {rel}")
        if info.type != FileType.File:
            raise ImageError(f"is a folder, not an image: {rel}")
        if info.size is not None and info.size > limits.current().zip_member_bytes:
            raise ImageError(limits.too_big(rel, info.size, "is"))
        try:
            with self.filesystem.open_input_stream(key) as stream:
                data = stream.read(limits.current().zip_member_bytes + 1)
        except OSError as err:
            raise ImageError(f"cannot read {rel}: {err}") from None
        if len(data) > limits.current().zip_member_bytes:  # the object grew since its size was read
            raise ImageError(limits.too_big(rel, len(data), "is"))
        return io.BytesIO(data)

    def _info(self, key: str):
        try:
            return self.filesystem.get_file_info(key)
        except OSError as err:
            raise ImageError(f"cannot reach {self.uri}: {err}") from None


def _connect(uri: str):
    """pyarrow's filesystem and base path for ``uri``; ``ValueError`` that says what is accepted."""
    try:
        from pyarrow.fs import FileSystem
    except ImportError as err:
        raise ValueError(f"reading images from {uri} needs pyarrow (`pip install pyarrow`)") from err
    try:
        filesystem, base = FileSystem.from_uri(uri)
    except (OSError, ValueError) as err:  # ArrowInvalid is a ValueError
        raise ValueError(f"cannot open the image source {uri}: {err}. Give a folder, a .zip, or a URI "
                         "pyarrow reads (s3://bucket/prefix, gs://, hdfs://, abfs://)") from None
    return filesystem, base.rstrip("/")
