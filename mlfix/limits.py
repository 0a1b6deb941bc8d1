"""Limits that keep one reviewer, one image or one archive from taking a hosted session down.

Each limit has a safe default, an environment variable to change it (``mlfix serve`` passes the
environment on to the app), and one place that enforces it; a refusal is a clear message in the UI
and a line in the server log, and never loses what was already acknowledged.

==============================  ===================================  =================================
limit                           environment variable                 enforced in
==============================  ===================================  =================================
``actions_per_batch``           ``MLFIX_MAX_ACTIONS_PER_BATCH``      :mod:`mlfix.review.actions`
``ids_per_action``              ``MLFIX_MAX_IDS_PER_ACTION``         :mod:`mlfix.review.actions`
``decisions_per_minute``        ``MLFIX_MAX_DECISIONS_PER_MINUTE``   :mod:`mlfix.review.actions`
``image_pixels``                ``MLFIX_MAX_IMAGE_PIXELS``           :mod:`mlfix.data.images`
``decode_concurrency``          ``MLFIX_DECODE_CONCURRENCY``         :mod:`mlfix.ui.imaging`
``zip_member_bytes``            ``MLFIX_MAX_ZIP_MEMBER_BYTES``       :mod:`mlfix.data.images`
``zip_member_ratio``            ``MLFIX_MAX_ZIP_MEMBER_RATIO``       :mod:`mlfix.data.images`
==============================  ===================================  =================================

Example:
    >>> Limits.from_env({"MLFIX_MAX_ACTIONS_PER_BATCH": "50"}).actions_per_batch
    50
    >>> Limits.from_env({"MLFIX_MAX_ACTIONS_PER_BATCH": "lots"})
    Traceback (most recent call last):
    ...
    mlfix.errors.SettingsError: MLFIX_MAX_ACTIONS_PER_BATCH must be a positive whole number, got 'lots'
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Mapping

from mlfix.errors import SettingsError

_ENV_NAMES = {
    "actions_per_batch": "MLFIX_MAX_ACTIONS_PER_BATCH",
    "ids_per_action": "MLFIX_MAX_IDS_PER_ACTION",
    "decisions_per_minute": "MLFIX_MAX_DECISIONS_PER_MINUTE",
    "image_pixels": "MLFIX_MAX_IMAGE_PIXELS",
    "decode_concurrency": "MLFIX_DECODE_CONCURRENCY",
    "zip_member_bytes": "MLFIX_MAX_ZIP_MEMBER_BYTES",
    "zip_member_ratio": "MLFIX_MAX_ZIP_MEMBER_RATIO",
}


@dataclass(frozen=True)
class Limits:
    """The limits of one process (see the module docstring); all are positive integers."""

    actions_per_batch: int = 200          # a grid batch carries what one tab did since its last ack
    ids_per_action: int = 1000            # one key press labels at most a page or a run of images
    decisions_per_minute: int = 3000      # per reviewer: a fast human makes ~100; a script, thousands
    image_pixels: int = 64_000_000        # 8000 x 8000; PIL's own bomb limit is 89.5M and only warns
    decode_concurrency: int = 2           # full-size decodes at once in the server process
    zip_member_bytes: int = 256 * 2**20   # one image inside an archive, uncompressed (or one image file)
    zip_member_ratio: int = 200           # uncompressed / compressed size of one member over 1 MB

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Limits":
        """The defaults, overridden by any ``MLFIX_MAX_*`` variable set (SettingsError if not a positive int)."""
        environ = os.environ if environ is None else environ
        values = {}
        for spec in fields(cls):
            name = _ENV_NAMES[spec.name]
            raw = environ.get(name)
            if raw is None or raw.strip() == "":
                continue
            try:
                value = int(raw)
            except ValueError:
                value = 0
            if value <= 0:
                raise SettingsError(f"{name} must be a positive whole number, got {raw!r}")
            values[spec.name] = value
        return cls(**values)

    @staticmethod
    def env_name(field_name: str) -> str:
        """The environment variable of a limit: ``env_name("image_pixels") == "MLFIX_MAX_IMAGE_PIXELS"``."""
        return _ENV_NAMES[field_name]


def current() -> Limits:
    """The limits of this process, from the environment (cheap: read on each call, so tests can set it)."""
    return Limits.from_env()


def megabytes(size: int) -> str:
    """``megabytes(3 * 2**20) == '3.0 MB'``; under 1 MB, in bytes: ``megabytes(2000) == '2,000 bytes'``."""
    return f"{size / 2**20:,.1f} MB" if size >= 2**20 else f"{size:,} bytes"


def too_big(name: str, size: int, verb: str) -> str:
    """Why a file of ``size`` bytes is not read: over ``zip_member_bytes``, and which variable raises it.

    >>> too_big("a.png", 2000, "is").startswith("a.png is 2,000 bytes, over the limit of")
    True
    """
    limit = current().zip_member_bytes
    return (f"{name} {verb} {megabytes(size)}, over the limit of {megabytes(limit)} per image "
            f"({Limits.env_name('zip_member_bytes')}); not read")
