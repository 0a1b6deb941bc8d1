"""What a features pass leaves beside its arrays, the same for every engine (local, Ray): the image
quality table, the samples' readable/unreadable status and the problems table, and the error when no
image could be read. :mod:`mlfix.pipeline.index` and :mod:`mlfix.pipeline.ray_engine` both write
through these, so a project does not know which engine made it.

``run`` is an :class:`~mlfix.pipeline.index.IndexRun` (its ``dir``, ``samples``, ``problems``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mlfix.data.quality import QUALITY_FILE, QUALITY_KEY, quality_frame
from mlfix.data.scan import NOTE_STAGES, problems_frame
from mlfix.pipeline.artifacts import atomic_parquet, atomic_save_npy, write_key

FIRST_REASONS = 5  # problems quoted when every file failed


def no_readable_samples(directory: Path, problems: pd.DataFrame | None = None) -> None:
    """Raise :class:`NoReadableSamplesError` quoting the first reasons of the problems table."""
    from mlfix.errors import NoReadableSamplesError

    path = directory / "problems.parquet"
    if problems is None:
        problems = pd.read_parquet(path) if path.exists() else problems_frame([])
    problems = problems[~problems["stage"].isin(NOTE_STAGES)]
    lines = [f"  {row.path if isinstance(row.path, str) else row.sample_id}: {row.reason}"
             for row in problems.head(FIRST_REASONS).itertuples()]
    more = f"\n  ... and {len(problems) - FIRST_REASONS} more" if len(problems) > FIRST_REASONS else ""
    first = ("; the first reasons:\n" + "\n".join(lines) + more) if lines else ""
    raise NoReadableSamplesError(
        f"project {directory} has no readable samples: all {len(problems)} files failed{first}\n"
        f"Fix the files (or the labels CSV / COCO paths) and run again; the full table is {path} "
        "(project.problems in Python, the Dataset page in the app).")


def write_quality(run, table: pd.DataFrame, feature_key: dict) -> None:
    """The images' quality statistics (:mod:`mlfix.data.quality`), keyed by the features that came with them."""
    atomic_parquet(table, run.dir / QUALITY_FILE)
    write_key(run.dir / QUALITY_KEY, feature_key)


def record_decode_failures(run, ok: np.ndarray, failures: pd.DataFrame) -> None:
    """Each sample's status (ok / unreadable) into samples.parquet, this pass's decode failures in place
    of the last pass's in problems.parquet; ``run.samples`` follows."""
    samples = run.samples.copy()
    samples["status"] = np.where(ok, "ok", "unreadable")
    samples["status"] = samples["status"].astype("string")
    problems = run.problems
    problems = problems[problems["stage"] != "decode"]
    atomic_parquet(samples, run.dir / "samples.parquet")
    atomic_parquet(pd.concat([problems, failures], ignore_index=True), run.dir / "problems.parquet")
    run.samples = samples


def record_features_pass(run, ok: np.ndarray, hashes: np.ndarray, stats: np.ndarray, failures: pd.DataFrame,
                         feature_key: dict) -> None:
    """Everything a full features pass records beside pooled.npy, whichever engine ran it: ok.npy, the
    quality table, the samples' status and the problems; the error when not one image decoded."""
    atomic_save_npy(run.dir / "features" / "ok.npy", ok)
    write_quality(run, quality_frame(hashes, stats), feature_key)
    record_decode_failures(run, ok, failures)
    if not ok.any():
        no_readable_samples(run.dir, run.problems)
