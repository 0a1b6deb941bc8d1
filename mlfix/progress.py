"""Progress of long work, to a terminal bar and to a JSON-lines file the app can read live.

Every pipeline stage takes an optional ``progress(done, total)`` callback. :class:`Progress` makes
such callbacks, one per stage, that drive a tqdm bar and append records to
``<project>/progress/<job>.jsonl``::

    {"job": "index", "stage": "features", "done": 512, "total": 1360, "time": 1764272000.1, ...}

Extra fields (``loss``, ``epoch``, ``images_per_s``) may be passed by a stage through
:meth:`Progress.record`. Writes are throttled (at most one record per ``min_interval`` seconds per
stage, plus the last one) so that a tight loop does not turn into file IO.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

ProgressFn = Callable[[int, int], None]

# What one step of a stage is, for the rate on its bar ("images/s"); stages not named here count
# "steps", and a stage of one step (codebook, bags) shows no rate at all.
STAGE_UNITS = {"scan": "images", "features": "images", "codebook sample": "images", "words": "images",
               "orders": "orderings", "train": "steps", "finetune cache": "images",
               "image quality": "images"}
IMAGE_UNIT = "images"


def _unit(stage: str) -> str:
    """The unit of a stage: ``orders (embedding)`` counts what ``orders`` counts.

    >>> _unit("features"), _unit("orders (embedding)"), _unit("scores")
    ('images', 'orderings', 'steps')
    """
    return STAGE_UNITS.get(stage) or STAGE_UNITS.get(stage.split(" (", 1)[0], "steps")


def _duration(seconds: float) -> str:
    """``75 -> '1m15s'``, ``4000 -> '1h06m'``, ``8 -> '8s'``."""
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """Terminal bars plus a progress log for one job (``index``, ``train``...)."""

    def __init__(self, job: str, log_dir: str | os.PathLike | None = None, terminal: bool = True,
                 min_interval: float = 0.5):
        self.job = job
        self.path = Path(log_dir) / f"{job}.jsonl" if log_dir is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")  # a new run of the job starts a new log
        self.terminal = terminal and sys.stderr is not None
        self.min_interval = min_interval
        self._bars: dict = {}
        self._last_write: dict[str, float] = {}
        self._planned: dict[str, int] = {}  # image stages still to come: stage -> images
        self._finished: set[str] = set()

    def stage(self, name: str) -> ProgressFn:
        """A ``progress(done, total)`` callback for one stage."""

        def callback(done: int, total: int, **extra) -> None:
            self.update(name, done, total, **extra)

        return callback

    def plan(self, stage: str, total: int) -> None:
        """Announce an image stage still to come (``total`` images), so that the overall estimate of
        the image stage running now includes it (the same images/s is assumed)."""
        self._planned[stage] = int(total)

    def note(self, text: str, stage: str | None = None) -> None:
        """One line for the user (advice, a choice made for them): printed above the bars, logged."""
        if self.terminal:
            from tqdm.auto import tqdm

            tqdm.write(f"{self.job}: {text}", file=sys.stderr)
        self.record(stage=stage, note=text)

    def update(self, stage: str, done: int, total: int, **extra) -> None:
        finished = total and done >= total
        self._planned.pop(stage, None)
        if finished:
            self._finished.add(stage)
        if self.terminal:
            self._bar(stage, done, total, extra)
        now = time.time()
        if finished or now - self._last_write.get(stage, 0.0) >= self.min_interval:
            self._last_write[stage] = now
            self.record(stage=stage, done=done, total=total, **extra)

    def record(self, **fields) -> None:
        """Append one record to the log (no throttling)."""
        if self.path is None:
            return
        line = json.dumps({"job": self.job, "time": time.time(), **fields}, default=float)
        with open(self.path, "a") as f:
            f.write(line + "\n")

    def _bar(self, stage: str, done: int, total: int, extra: dict) -> None:
        from tqdm.auto import tqdm

        bar = self._bars.get(stage)
        if bar is None:
            if stage in self._finished and total and done >= total and total <= 1:
                return  # a one-step stage that started and ended within this call: nothing to draw
            unit = _unit(stage)
            one_step = (total or 0) <= 1
            # The work before the first report is not timed: the bar starts from it (initial=done), so
            # the first rate is measured, not done / 0.001 s.
            bar = self._bars[stage] = tqdm(
                total=total, initial=done, desc=f"{self.job}: {stage}", unit=f" {unit}", dynamic_ncols=True,
                leave=True, file=sys.stderr,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}]" if one_step else None)
            shown = True  # tqdm draws a new bar at once
        else:
            if total and bar.total != total:
                bar.total = total
            if done >= bar.n:
                shown = bar.update(done - bar.n)  # through update(): tqdm's smoothed rate sees every step
            else:
                bar.n, shown = done, False  # went back (a restarted count): no rate from it
        postfix = {k: v for k, v in extra.items() if isinstance(v, (int, float, str))}
        left = self.seconds_left(stage, done, total)
        if left is not None and self._planned:
            postfix["all"] = f"~{_duration(left)} left"
        if postfix:
            bar.set_postfix(postfix, refresh=False)
        if not shown or postfix:
            bar.refresh()
        if total and done >= total:
            bar.close()

    def seconds_left(self, stage: str, done: int, total: int) -> float | None:
        """Estimated seconds until this stage and the image stages planned after it end (None until a
        rate is known, or for a stage that is not counted in images)."""
        bar = self._bars.get(stage)
        if bar is None or not total or _unit(stage) != IMAGE_UNIT:
            return None
        rate = bar.format_dict.get("rate")
        if not rate:
            return None
        later = sum(n for name, n in self._planned.items() if name != stage)
        return (max(0, total - done) + later) / rate

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


def read_progress(path: str | os.PathLike) -> list[dict]:
    """All records of a progress log; a half-written last line is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
