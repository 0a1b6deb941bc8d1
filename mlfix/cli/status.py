"""``mlfix status``: what a project holds: its data, the index and its settings, scores, the dataset's
health (per check, the samples flagged and at which threshold), reviews, a job.

Read only: it opens the decisions store only when one exists, and starts nothing; the health summary
shown is the last one computed (by ``mlfix scores`` or ``project.health()``), unless ``--health``
asks to compute it (the checks that need no labels run on an unlabeled set too).
"""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from mlfix.pipeline.artifacts import engine_text, read_engine, read_key

if TYPE_CHECKING:
    from mlfix.project import Project

CLASSES_SHOWN = 12


def add_parser(commands) -> None:
    p = commands.add_parser("status", help="what is indexed, with which settings; scores, reviews, a running job")
    p.add_argument("--project", required=True, help="project folder")
    p.add_argument("--health", action="store_true",
                   help="compute the health summary (duplicates, leaks, outliers, image quality, label checks) "
                        "when it is missing or stale, instead of showing the last one")
    p.set_defaults(run=run)


def run(args) -> int:
    from mlfix.project import Project

    from mlfix.ui.text import visible  # labels, reviewers and reasons are data: no escape sequence reaches the terminal

    print("\n".join(map(visible, status_lines(Project.open(args.project), health=args.health))))
    return 0


def status_lines(project: "Project", health: bool = False) -> list[str]:
    """The status of ``project`` (a :class:`~mlfix.project.Project`) as lines of plain text;
    ``health``: compute the health summary when it is not up to date (else show the last one)."""
    lines = [f"project   {project.dir}"]
    lines += _data_lines(project)
    lines += _index_lines(project)
    lines += _engine_lines(project)
    lines += _scores_lines(project)
    lines += _health_lines(project, health)
    lines += _finetune_lines(project)
    lines += _decision_lines(project)
    lines += _job_lines(project)
    return lines


def _data_lines(project) -> list[str]:
    from mlfix.data.scan import NOTE_STAGES

    source = project.source
    where = f"images {source.get('images')}"
    if source.get("labels"):
        where += f", labels {source['labels']}"
    if source.get("coco"):
        where += f", COCO {source['coco']}"
    samples, problems = project.samples, project.problems
    readable = int((samples["status"] == "ok").sum())
    unreadable = len(samples) - readable
    notes = problems[problems["stage"].isin(NOTE_STAGES)]
    skipped = len(problems) - len(notes)
    counts = f"{len(samples):,} ({readable:,} readable"
    counts += f", {unreadable:,} unreadable)" if unreadable else ")"
    problem_text = f"{skipped:,} files skipped" + (f", {len(notes):,} boxes clipped" if len(notes) else "")
    if len(problems):
        problem_text += f" (see {project.dir / 'problems.parquet'})"
    labels = samples["label"]
    per_class = labels.dropna().value_counts().sort_index()
    if per_class.empty:
        classes = "none: the images are unlabeled (the similarity order works; scores need labels)"
    else:
        shown = ", ".join(f"{name} {count:,}" for name, count in per_class.head(CLASSES_SHOWN).items())
        more = f", ... and {len(per_class) - CLASSES_SHOWN} more" if len(per_class) > CLASSES_SHOWN else ""
        unlabeled = int(labels.isna().sum())
        classes = f"{len(per_class)}: {shown}{more}" + (f"; {unlabeled:,} unlabeled" if unlabeled else "")
    return [f"data      {where}", f"samples   {counts}", f"problems  {problem_text}", f"classes   {classes}"]


def _when(path: Path) -> str:
    """``2026-12-01 15:03 UTC (5 min ago)`` for a file's modification time."""
    stamp = path.stat().st_mtime
    text = dt.datetime.fromtimestamp(stamp, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"{text} ({_ago(time.time() - stamp)})"


def _ago(seconds: float) -> str:
    """
    >>> _ago(20), _ago(300), _ago(7200), _ago(3 * 86400)
    ('just now', '5 min ago', '2 h ago', '3 days ago')
    """
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    return f"{int(seconds // 86400)} days ago"


def _weights_text(weights) -> str:
    if isinstance(weights, dict) and weights.get("file"):
        path = Path(weights["file"])
        return f"trained ({path})" if path.parent.name == "models" else f"file {path}"
    return str(weights)


def _index_lines(project) -> list[str]:
    orders_key = project.dir / "orders" / "orders.key.json"
    if not project.is_indexed:
        return [f"index     not built yet: run `mlfix index --project {project.dir}`"]
    key = read_key(project.dir / "features" / "words.key.json") or {}
    built = (f"built {_when(orders_key)} with backbone {key.get('backbone', '?')}, weights "
             f"{_weights_text(key.get('weights', '?'))}, image size {key.get('image_size', '?')} px, "
             f"{key.get('words', '?')} words, tta_flip {'on' if key.get('tta_flip') else 'off'}")
    lines = [f"index     {built}"]
    fit = read_key(project.dir / "codebook" / "fit.json") or {}
    if fit.get("advice"):
        lines.append(f"          {fit['advice']}")
    settings = project.settings
    asked = {"backbone": settings.backbone, "words": settings.words, "tta_flip": bool(settings.tta_flip)}
    if isinstance(settings.image_size, int):
        asked["image_size"] = settings.image_size
    differ = [f"{name} {value}" for name, value in asked.items()
              if key and (key.get(name, False if name == "tta_flip" else None) != value)]
    if differ:
        lines.append(f"          mlfix.toml now asks for {', '.join(differ)}: run `mlfix index --project "
                     f"{project.dir}` to rebuild with them")
    return lines


def _engine_lines(project) -> list[str]:
    """Which engine extracted the features, from ``features/engine.json`` (none before a features pass)."""
    record = read_engine(project.dir)
    if not isinstance(record, dict):
        return []
    line = f"engine    {engine_text(record)}"
    settings = project.settings
    if (settings.engine, settings.ray_address) != (record.get("engine"), record.get("address")) \
            and (settings.engine == "ray" or record.get("engine") == "ray"):
        where = f" at {settings.ray_address}" if settings.engine == "ray" and settings.ray_address else ""
        line += f"; mlfix.toml now asks for {settings.engine}{where} (the results are the same)"
    return [line]


def _scores_lines(project) -> list[str]:
    path, key_path = project.dir / "scores.parquet", project.dir / "scores.key.json"
    if not path.exists():
        why = project.scores_unavailable() if project.is_indexed else None
        if why:  # an unlabeled set: `mlfix scores` would refuse, so do not send the user there
            return [f"scores    none: {why.split(';')[0]} (the health checks need no labels: "
                    f"`mlfix status --health --project {project.dir}`)"]
        how = f"run `mlfix scores --project {project.dir}`" if project.is_indexed else \
            "index first, then `mlfix scores`"
        return [f"scores    none yet: {how}"]
    key = read_key(key_path) or {}
    index_key = read_key(project.dir / "orders" / "orders.key.json")
    freshness = "up to date"
    if key.get("index") != index_key:
        freshness = "older than the index: `mlfix scores` recomputes them"
    else:
        last = _last_decision_id(project)
        if last is not None and last != key.get("decisions"):
            freshness = "older than the latest decisions: `mlfix scores` recomputes them"
    return [f"scores    computed {_when(path)}, {freshness}"]


def _health_lines(project, compute: bool) -> list[str]:
    """The health summary as a compact table (check, flagged, threshold; the reason a check was
    skipped), computed first when ``compute``."""
    from mlfix.errors import MlfixError

    if not project.is_indexed:
        return []
    if compute:
        try:
            project.health()
        except (MlfixError, ValueError) as err:  # e.g. no readable image: say so, keep the rest
            return [f"health    cannot be checked: {err}"]
    summary = project.cached_health()
    if summary is None:
        return [f"health    not checked yet: `mlfix status --health --project {project.dir}` (or `mlfix scores`) "
                "checks for duplicates, leaks, outliers and bad images"]
    key = read_key(project.dir / "health.key.json") or {}
    stale = key.get("index") != read_key(project.dir / "orders" / "orders.key.json") or \
        _last_decision_id(project) not in (None, key.get("decisions"))
    ran = summary[summary["skipped"].isna()]
    flagged = int(ran["flagged"].fillna(0).sum())
    lines = [f"health    {len(summary)} checks: {len(ran)} ran, {len(summary) - len(ran)} skipped; "
             f"{flagged:,} flags; computed {_when(project.dir / 'health.parquet')}"
             + ("; older than the index or decisions: `mlfix status --health` recomputes it" if stale else "")]
    lines.append(f"          {'check':<16} {'flagged':>8}  threshold")
    for row in summary.itertuples(index=False):
        if isinstance(row.skipped, str):
            lines.append(f"          {row.check:<16} skipped: {row.skipped}")
        else:
            count = "-" if pd.isna(row.flagged) else f"{int(row.flagged):,}"
            limit = "-" if pd.isna(row.threshold) else f"{row.threshold:.3g}"
            lines.append(f"          {row.check:<16} {count:>8}  {limit}")
            if isinstance(getattr(row, "note", None), str):
                lines.append(f"          {'':<16} note: {row.note}")
    if flagged and not (project.dir / "scores.parquet").exists() and (project.dir / "health_samples.parquet").exists():
        lines.append(f"          which samples: {project.dir / 'health_samples.parquet'} (flag_<check>, reason_<check> "
                     "columns), or the app's Dataset page")
    return lines


def _finetune_lines(project) -> list[str]:
    """The last fine-tuning result (``mlfix finetune``), or where an unfinished run stands."""
    from mlfix.training.finetune import summary_text
    from mlfix.training.finetune import FinetuneResult

    folder = project.dir / "finetune"
    result = FinetuneResult.load(folder)
    if result is not None:
        return [f"finetune  {summary_text(result.summary)}, {_when(folder / 'result.json')}; "
                f"{project.finetune_use()}"]
    if any(folder.glob("fold*.pt")):
        return ["finetune  unfinished: `mlfix finetune` resumes it"]
    return []


def _has_store(project) -> bool:
    from mlfix.review.store import ENV_DB_URL

    return bool(os.environ.get(ENV_DB_URL)) or (project.dir / "reviews.db").exists()


def _last_decision_id(project) -> int | None:
    if not _has_store(project):
        return 0
    try:
        return project.reviews.last_id()
    except Exception:  # an unreachable database: said in the decisions line
        return None


def _decision_lines(project) -> list[str]:
    if not _has_store(project):
        return [f"decisions none yet: review in the app (`mlfix serve --project {project.dir}`)"]
    try:
        decisions = project.decisions()
    except Exception as err:  # StoreUnavailable, a damaged file: say so, keep the rest of the status
        return [f"decisions cannot be read: {err}"]
    if decisions.empty:
        return [f"decisions none yet: review in the app (`mlfix serve --project {project.dir}`)"]
    kinds = decisions["kind"].value_counts()
    by_kind = ", ".join(f"{kind} {count:,}" for kind, count in kinds.items())
    reviewers = decisions["reviewer"].value_counts()
    who = ", ".join(f"{name} {count:,}" for name, count in reviewers.items())
    return [f"decisions {len(decisions):,} ({by_kind}) by {len(reviewers)} reviewer"
            f"{'s' if len(reviewers) != 1 else ''}: {who}"]


def _job_lines(project) -> list[str]:
    from mlfix.service.jobs import a_job, job_status

    status = job_status(project.dir, tail_bytes=0)
    if status.state == "none":
        return ["job       none running"]
    kind = status.kind or "background"
    started = status.record.get("started")
    since = ""
    if isinstance(started, (int, float)):
        since = " since " + dt.datetime.fromtimestamp(started, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if status.running:
        records = project.progress_log(kind)
        stage = next((r for r in reversed(records) if "done" in r and "total" in r), None)
        where = f"; {stage['stage']} {stage['done']:,}/{stage['total']:,}" if stage else ""
        return [f"job       {a_job(status.kind)} is running{since} (pid {status.record.get('pid')}){where}"]
    return [f"job       none running; the last one ({kind}{since}) {status.state}: {status.message}"]
