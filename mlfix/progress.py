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

    def stage(self, name: str) -> ProgressFn:
        """A ``progress(done, total)`` callback for one stage."""

        def callback(done: int, total: int, **extra) -> None:
            self.update(name, done, total, **extra)

        return callback

    def update(self, stage: str, done: int, total: int, **extra) -> None:
        if self.terminal:
            self._bar(stage, done, total, extra)
        now = time.time()
        finished = total and done >= total
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
            bar = self._bars[stage] = tqdm(total=total, desc=f"{self.job}: {stage}", unit="it",
                                           dynamic_ncols=True, leave=True)
        if total and bar.total != total:
            bar.total = total
        bar.n = done
        if extra:
            bar.set_postfix({k: v for k, v in extra.items() if isinstance(v, (int, float, str))},
                            refresh=False)
        bar.refresh()
        if total and done >= total:
            bar.close()

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
