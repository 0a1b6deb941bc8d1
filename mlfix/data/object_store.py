"""Images on object storage: a data root that is a URI pyarrow reads (``s3://bucket/prefix``, ``gs://``,
``hdfs://``, ``abfs://``), for a Ray cluster whose nodes share no filesystem.

:class:`ObjectStore` lists the objects under the URI and reads one behind the same
:class:`~mlfix.data.images.DataRoot` as a folder or a zip: scanning, indexing on either engine,
thumbnails and the app read it unaware. Reads are ranged and buffered (:class:`RangeReader`): the
scan's header check fetches the first 64 KiB of an image, not the whole object; the size is checked
against ``limits.zip_member_bytes`` before anything is read. Paths are relative to the URI and go
through :func:`~mlfix.data.images.safe_relative_path` first, so nothing outside the prefix is read.

Credentials come from the environment the way pyarrow looks for them (for S3: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``~/.aws``, an instance role), never from the URI: the URI is saved in the
project and shown in the app, so one that carries a password or a secret in its query is refused.
Other options ride in its query, as pyarrow reads them (``?region=eu-west-1``,
``?endpoint_override=minio:9000&scheme=http`` for MinIO or another S3-compatible store). A store that
cannot be reached raises :class:`~mlfix.errors.ImageSourceUnavailable`: the image may be fine, so the
thumbnails do not remember it as broken.

    >>> is_remote("s3://bucket/photos"), is_remote("photos/"), is_remote("C:/photos")
    (True, False, False)
    >>> ObjectStore("s3://KEY:SECRET@bucket/photos")
    Traceback (most recent call last):
    ...
    ValueError: the image URI carries credentials (a password); ... (for S3: AWS_ACCESS_KEY_ID ...
    >>> ObjectStore("local:///etc")
    Traceback (most recent call last):
    ...
    ValueError: cannot read images from local:///etc: give a folder or a .zip, or a URI of s3, gs, ...
"""

from __future__ import annotations

import io
import re
from typing import BinaryIO
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from mlfix import limits
from mlfix.errors import ImageError, ImageSourceUnavailable

# A scheme of two letters or more: "C:/photos" is a Windows path, not a URI.
URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]+://")
# Object stores pyarrow reads. Not its local:// or mock:// filesystems: a local folder goes through
# DataRoot's own checks (links out of the root), never through pyarrow.
SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
# Query options that hold a secret (pyarrow reads some of them: S3's access_key, Azure's client_secret).
SECRET_OPTION = re.compile(r"secret|password|token|(^|_)key$|sas|credential", re.IGNORECASE)
BLOCK = 64 * 1024  # a read fetches at least this much: an image header is in the first block
# S3 seconds to connect, and to wait for a reply that has stopped coming (the AWS SDK's socket read
# timeout, not a whole transfer's): unset, an endpoint that accepts the connection and never answers
# held a call for ~90 s. A ranged read of one BLOCK answers well within either.
S3_CONNECT_TIMEOUT_S = 10.0
S3_REQUEST_TIMEOUT_S = 30.0
# The URI query options an S3 filesystem rebuilt with the timeouts keeps (pyarrow's constructor takes
# them). With any other (tls_verify_certificates, tls_ca_dir_path, smart_defaults) the filesystem is
# left as from_uri made it, without the timeouts, rather than silently without that option.
S3_KEPT_OPTIONS = frozenset({"region", "scheme", "endpoint_override", "allow_bucket_creation",
                             "allow_bucket_deletion", "tls_ca_file_path"})
HINT = ("Check the network, the endpoint and region in the URI's query (?endpoint_override=HOST:PORT, "
        "?region=...), and the credentials in the environment (for S3: AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY)")


def is_remote(location) -> bool:
    """Whether ``location`` names object storage (a URI other than ``file://``) rather than a local path."""
    text = str(location)
    return bool(URI.match(text)) and not text.lower().startswith("file://")


def normal_uri(uri: str) -> str:
    """``uri`` checked and written one way (no trailing slash on its path, whatever the query):
    ``ValueError`` for a scheme that is not object storage, credentials, a fragment or no bucket.

    >>> normal_uri("s3://bucket/photos/?region=eu-west-1")
    's3://bucket/photos?region=eu-west-1'
    """
    parts = urlsplit(str(uri).strip())
    if parts.scheme.lower() not in SCHEMES:
        raise ValueError(f"cannot read images from {uri}: give a folder or a .zip, or a URI of "
                         f"{', '.join(SCHEMES)} (object storage pyarrow reads)")
    secrets = [name for name, _ in parse_qsl(parts.query) if SECRET_OPTION.search(name)]
    if parts.password or secrets:
        what = "a password" if parts.password else ", ".join(secrets)
        raise ValueError(f"the image URI carries credentials ({what}); it is saved in the project and shown "
                         "in the app. Give them in the environment instead (for S3: AWS_ACCESS_KEY_ID and "
                         "AWS_SECRET_ACCESS_KEY, or ~/.aws)")
    if parts.fragment:
        raise ValueError(f"the image URI has a '#' part ({parts.fragment!r}), which would drop what follows: "
                         "percent-encode '#' in a name as %23")
    if not parts.netloc:
        raise ValueError(f"the image URI names no bucket or host: {uri}")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), parts.query, ""))


class ObjectStore:
    """Read-only access to the objects under one URI prefix (pyarrow's filesystems).

    Pickles as its URI (each Ray worker or DataLoader process opens its own connection, with its own
    credentials from its environment). Raises ``ValueError`` for a URI it will not read (see
    :func:`normal_uri`), ``FileNotFoundError`` when nothing is stored under the prefix, and
    :class:`~mlfix.errors.ImageSourceUnavailable` when the store cannot be reached.
    """

    def __init__(self, uri: str):
        self.uri = normal_uri(uri)
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

        found = _call(self.uri, lambda: self.filesystem.get_file_info(FileSelector(self.base, recursive=True)))
        start = len(self.base) + 1
        return [info.path[start:] for info in found if info.type == FileType.File]

    def open(self, rel: str) -> BinaryIO:
        """One object (``rel`` already made safe by the caller) as a seekable, buffered file: ranged
        reads of at least :data:`BLOCK` bytes. :class:`ImageError` when it is missing, a prefix or over
        the limit; :class:`ImageSourceUnavailable` when the store fails."""
        from pyarrow.fs import FileType

        info = self._info(f"{self.base}/{rel}")
        if info.type == FileType.NotFound:
            raise ImageError(f"file not found: {rel}")
        if info.type == FileType.Directory:
            raise ImageError(f"is a folder, not an image: {rel}")
        if info.type != FileType.File:
            raise ImageError(f"not a plain object: {rel}")
        if info.size is not None and info.size > limits.current().zip_member_bytes:
            raise ImageError(limits.too_big(rel, info.size, "is"))
        handle = _call(self.uri, lambda: self.filesystem.open_input_file(info.path))
        return io.BufferedReader(RangeReader(handle, self.uri), buffer_size=BLOCK)

    def _info(self, key: str):
        return _call(self.uri, lambda: self.filesystem.get_file_info(key))


class RangeReader(io.RawIOBase):
    """A pyarrow random-access file as a raw, seekable Python file (``read_at`` per read); wrap it in
    ``io.BufferedReader`` so small reads (an image header's) share one request."""

    def __init__(self, handle, uri: str):
        super().__init__()
        self.handle, self.uri, self.position = handle, uri, 0
        self.size = handle.size()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        start = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, start + offset)
        return self.position

    def readinto(self, buffer) -> int:
        wanted = min(len(buffer), self.size - self.position)
        if wanted <= 0:
            return 0
        data = _call(self.uri, lambda: self.handle.read_at(wanted, self.position))
        buffer[:len(data)] = data
        self.position += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self.handle.close()
        super().close()


def _call(uri: str, request):
    """``request()``, a failure of the store (network, credentials, any pyarrow error) as
    :class:`ImageSourceUnavailable` with what to check."""
    import pyarrow as pa

    try:
        return request()
    except (OSError, pa.ArrowException) as err:
        raise ImageSourceUnavailable(f"cannot reach {uri}: {str(err).strip()[:300]}. {HINT}") from None


def _connect(uri: str):
    """pyarrow's filesystem and base path for ``uri``; ``ValueError`` that says what is accepted."""
    try:
        import pyarrow as pa
        from pyarrow.fs import FileSystem
    except ImportError as err:
        raise ValueError(f"reading images from {uri} needs pyarrow (`pip install pyarrow`)") from err
    try:
        filesystem, base = FileSystem.from_uri(uri)
    except (OSError, ValueError, pa.ArrowException) as err:  # ArrowInvalid is a ValueError
        raise ValueError(f"cannot open the image source {uri}: {str(err).strip()[:300]}. Give a folder, a .zip, "
                         f"or a URI of {', '.join(SCHEMES)} (object storage pyarrow reads)") from None
    if not base.strip("/"):
        raise ValueError(f"the image URI names no bucket: {uri}")
    return _with_timeouts(filesystem, uri), base.rstrip("/")


def _with_timeouts(filesystem, uri: str):
    """An S3 filesystem rebuilt with :data:`S3_CONNECT_TIMEOUT_S` and :data:`S3_REQUEST_TIMEOUT_S`
    (pyarrow's ``from_uri`` takes no timeout, in its arguments or the URI's query). The filesystem's
    pickled options are its constructor's, so the URI's options in :data:`S3_KEPT_OPTIONS` are kept;
    the retries become the constructor's default (AWS standard, 3 attempts). Other filesystems, and an
    S3 URI with another option, as they are."""
    from pyarrow.fs import S3FileSystem

    options_in_uri = {name for name, _ in parse_qsl(urlsplit(uri).query)}
    if not isinstance(filesystem, S3FileSystem) or not options_in_uri <= S3_KEPT_OPTIONS:
        return filesystem
    rebuild, (options,) = filesystem.__reduce__()
    return rebuild({**options, "connect_timeout": S3_CONNECT_TIMEOUT_S, "request_timeout": S3_REQUEST_TIMEOUT_S})
