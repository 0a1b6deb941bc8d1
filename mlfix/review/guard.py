"""What the action applier checks before a grid batch may touch the store, besides its shape.

- :class:`RateLimiter`: decisions per reviewer per minute (``limits.decisions_per_minute``), a token
  bucket per reviewer shared by all their tabs; the clock is injectable, so tests need no sleeping.
- :func:`reviewer_tag`: the opaque tag the grid is rendered with and stamps on every action it makes,
  so a batch queued by one reviewer is never stored under the name of whoever signs in next in
  that tab (after a server restart, say).
- :class:`ActionChecks`: why one action may not be applied (made by another reviewer, a label not
  of the project, images not in the project or not shown to this tab), as the message shown.
- :func:`short`: a value cut to a length fit for a message (a hostile id can be a megabyte).
- :data:`log`: the server log; every refusal is one line there.

Example:
    >>> now = [0.0]
    >>> bucket = RateLimiter(per_minute=60, clock=lambda: now[0])
    >>> bucket.take("ann", 60), bucket.take("ann", 1)
    (True, False)
    >>> now[0] = 1.0; bucket.take("ann", 1)      # a second later: one more decision allowed
    True
    >>> reviewer_tag("ann") == reviewer_tag("ann") != reviewer_tag("bob")
    True
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import Any, Callable, Collection

log = logging.getLogger("mlfix.review")
_MAX_TRACKED = 10_000  # reviewers remembered by a limiter (a full bucket needs no entry)


def reviewer_tag(reviewer: str) -> str:
    """A short opaque tag of a reviewer's name: the same name always gives the same tag."""
    return hashlib.sha256(f"mlfix-reviewer\0{reviewer}".encode("utf-8", "surrogatepass")).hexdigest()[:16]


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (a hostile id can be a megabyte)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class RateLimiter:
    """At most ``per_minute`` decisions per reviewer per minute, in bursts of up to ``per_minute``.

    A token bucket per reviewer: it holds ``per_minute`` tokens and refills ``per_minute / 60`` per
    second; :meth:`take` takes ``n`` tokens, all or none. Thread-safe (Streamlit runs sessions on
    several threads). ``clock``: seconds, monotonic (default :func:`time.monotonic`).
    """

    def __init__(self, per_minute: int, clock: Callable[[], float] | None = None) -> None:
        if isinstance(per_minute, bool) or not isinstance(per_minute, int) or per_minute < 1:
            raise ValueError(f"per_minute must be a positive int, got {per_minute!r}")
        self.per_minute = per_minute
        self.clock = clock or time.monotonic
        self._buckets: dict[str, tuple[float, float]] = {}  # reviewer -> (tokens, at)
        self._lock = threading.Lock()

    def _tokens(self, reviewer: str, now: float) -> float:
        tokens, at = self._buckets.get(reviewer, (float(self.per_minute), now))
        return min(float(self.per_minute), tokens + max(0.0, now - at) * self.per_minute / 60.0)

    def take(self, reviewer: str, n: int) -> bool:
        """Take ``n`` decisions from ``reviewer``'s allowance: True when allowed (and counted)."""
        with self._lock:
            now = self.clock()
            tokens = self._tokens(reviewer, now)
            if n > tokens:
                self._buckets[reviewer] = (tokens, now)
                return False
            self._buckets[reviewer] = (tokens - n, now)
            if len(self._buckets) > _MAX_TRACKED:  # forget the fullest buckets first
                full = sorted(self._buckets, key=lambda r: -self._tokens(r, now))[:len(self._buckets) // 2]
                for name in full:
                    self._buckets.pop(name, None)
            return True

    def wait_s(self, reviewer: str, n: int) -> float:
        """Seconds until ``n`` decisions would be allowed (0 when they are now)."""
        with self._lock:
            missing = min(n, self.per_minute) - self._tokens(reviewer, self.clock())
        return max(0.0, missing * 60.0 / self.per_minute)


_SHARED: dict[int, RateLimiter] = {}
_SHARED_LOCK = threading.Lock()


def shared_limiter(per_minute: int) -> RateLimiter:
    """The process's limiter for ``per_minute`` (one per value: all sessions of the server share it)."""
    with _SHARED_LOCK:
        if per_minute not in _SHARED:
            _SHARED[per_minute] = RateLimiter(per_minute)
        return _SHARED[per_minute]


class ActionChecks:
    """Why a grid action (:class:`mlfix.review.actions.Action`) may not be applied (None when it may).

    ``known`` and ``shown``: membership tests of the project's and the tab's sample ids (or None);
    ``tag``: the signed-in reviewer's :func:`reviewer_tag`.
    """

    def __init__(self, labels: set[str], known, shown, tag: str) -> None:
        self.labels, self.known, self.shown, self.tag = labels, known, shown, tag

    def problem(self, action: Any) -> str | None:
        if action.malformed is not None:
            return action.malformed
        if action.by is not None and action.by != self.tag:
            return (f"action {action.seq} ({action.kind}) was made in this tab by another reviewer, before "
                    f"you signed in, so it was not stored under your name")
        if action.kind == "relabel" and action.label not in self.labels:
            shown = ", ".join(sorted(self.labels)[:12]) + (" ..." if len(self.labels) > 12 else "")
            return (f"{short(action.label)} is not a label of this project, so nothing was stored; "
                    f"choose one of the palette: {shown}")
        for check, why in ((self.known, "are not in this project"),
                           (self.shown, "were not on a page shown to you in this tab")):
            if check is None:
                continue
            outside = [s for s in action.sample_ids if not check(s)]
            if outside:
                return (f"{len(outside)} image(s) {why} ({short(outside[0])}...), so nothing of that "
                        f"{action.kind} was stored; reload the page and decide on the images it shows")
        return None


def membership(known: Collection[str] | Callable[[str], bool] | None) -> Callable[[str], bool] | None:
    """A membership test from a collection of ids or a function (None stays None)."""
    if known is None:
        return None
    if callable(known):
        return known
    known_set = known if isinstance(known, (set, frozenset, dict)) else set(known)
    return known_set.__contains__
