"""Every error mlfix raises on purpose derives from :class:`MlfixError`.

Catch ``MlfixError`` to handle anything mlfix refuses with a message meant for the user; each class
also keeps the built-in base its callers relied on (``ValueError``, ``RuntimeError``,
``PermissionError``), so ``except ValueError`` still catches a bad checkpoint or a bad batch.
The message always says what is wrong and what to do.

    >>> issubclass(CheckpointError, ValueError) and issubclass(CheckpointError, MlfixError)
    True
"""

from __future__ import annotations

import datetime as _dt


class MlfixError(Exception):
    """Base class of mlfix's own errors; the message is safe to show to the user."""


class NotAProjectError(MlfixError):
    """The folder has no ``mlfix.toml`` (or an unreadable one)."""


class SettingsError(MlfixError, ValueError):
    """An index setting that is unknown or has an unusable value; the message names the setting."""


class ImageError(MlfixError):
    """An image that cannot be used; the message is the reason shown to the user."""


class UnsafePathError(ImageError):
    """A path that would leave the data root."""


class ImageSourceUnavailable(ImageError):
    """The image source (object storage) could not be reached or refused the credentials: the image
    itself may be fine, so nothing about it is remembered; the next read tries again."""


class CheckpointError(MlfixError, ValueError):
    """A checkpoint that cannot be read or does not fit the requested run; the message says why."""


class BatchError(MlfixError, ValueError):
    """A batch of grid actions whose shape is wrong as a whole (not one bad action inside it)."""


class ClaimTaken(MlfixError):
    """The page is held by someone else: ``by`` (reviewer) until ``until`` (UTC datetime)."""

    def __init__(self, label: str, page: int, by: str, until: _dt.datetime):
        self.label, self.page, self.by, self.until = label, page, by, until
        super().__init__(f"page {page + 1} of {label!r} is being reviewed by {by} until "
                         f"{until:%H:%M} UTC: take another page, or wait until then")


class StoreUnavailable(MlfixError, RuntimeError):
    """The decisions database cannot be reached (down, unreachable, locked for too long).

    Nothing of the failed call was stored: retry it with the same client ids once the database is
    back (a retry stores each decision once). The message names the database, never its password.
    """


class AuthError(MlfixError):
    """A sign-in that failed (wrong token, bad name, not allowed); the message is safe to show."""


class AuthConfigError(MlfixError, ValueError):
    """The server's auth settings are unusable; the message says what to change."""


class PermissionDenied(MlfixError, PermissionError):
    """An identity tried an action its role does not allow."""


class UnsafeServeError(MlfixError):
    """``mlfix serve`` refused to start: the network could reach a session without sign-in."""


class JobError(MlfixError):
    """A job cannot be started or controlled; the message says why and what to do."""


class JobRunningError(JobError):
    """A job is already running in this project."""


class NotIndexedError(MlfixError, RuntimeError):
    """The project has no index yet; the message says which command makes it."""


class NoReadableSamplesError(MlfixError, ValueError):
    """Every file of the data source failed (none left to index); the message lists the first
    reasons and where the full problems table is."""


class ExportError(MlfixError, ValueError):
    """An export that cannot be made (an unknown format, COCO for a project without boxes); the
    message says which format works instead."""


class WeightsUnavailableError(MlfixError, RuntimeError):
    """Pretrained weights that cannot be had here (no internet to the hub, not in the local cache);
    the message names the alternatives (``offline`` weights, ``random``)."""


class NotEnoughLabelsError(MlfixError, ValueError):
    """Label-error scores need labels in at least two classes (``Project.scores`` on an unlabeled or
    one-class project); the message says what works instead (the similarity order, and
    ``Project.health()`` for the checks that need no labels: duplicates, outliers, image quality)."""


class ClassListError(MlfixError, ValueError):
    """A class change that does not apply (a name already taken, a class that is not there, an empty
    name); the message says what to do instead (e.g. merge rather than rename onto an existing class)."""


class PredictionsError(MlfixError, ValueError):
    """A user's predicted probabilities or embeddings that do not fit the project (wrong shape, unknown
    or missing samples, missing classes, NaN); the message says what to fix."""


class EngineError(MlfixError, RuntimeError):
    """The extraction engine cannot run (the ray package missing, a Ray cluster that cannot be
    reached); the message says what to do (install ray, start a cluster, or use the local engine)."""
