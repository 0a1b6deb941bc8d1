"""Health checks (issue 17): planted defects, duplicates in CIFAR-10N, what the checks cost, the user's model.

    python -m bench.health                       # all four sections (about 20-30 min on 2 cores)
    python -m bench.health --quick               # a smoke test: 150 flowers, 1,000 CIFAR-10N, small sizes
    python -m bench.health --only planted        # or duplicates, cost, user_model
    python -m bench.health --out /tmp/health     # where the contact sheet of duplicate groups goes

Sections (JSON lines via bench.common.emit, metric ``<section>.<...>``):

1. ``planted``: flowers17 (all 1,360 photos; --quick a seeded 150) with planted defects at seed 0
   (bench/health_plant.py: exact and near copies under another label in the other split, an
   all-black image, darkened, over-exposed, blurred, 5:1 stretched, 16 px, grayscale images, smooth
   colour noise and GTSRB signs as far outliers), written to a temporary folder with a ``split``
   column; indexed as ``mlfix index`` would (Project.create + index, offline EfficientNet-Lite0 at
   128 px; --quick 64 px) and scored (``project.scores()``, ``project.health()``). Per check:
   precision and recall of its flag (the default threshold) and ``recall_at_planted`` (the share of
   planted cases among the first |planted| by its score). ``label_queue``: the share of the copy
   pairs' members among the first of the default queue (``score``).
2. ``duplicates``: the 50,000 CIFAR-10N training images (--cifar-n fewer; --quick the first 500), pooled vectors of
   the offline Lite0 at 32 px (the images' own size; the index would choose more, which 2 cores
   cannot do for 50k here): groups and images flagged at the default near threshold, exact copies
   (same pixels), groups under more than one clean label; a PNG contact sheet of 12 groups (seed 0).
3. ``cost``: seconds per 1,000 images of the extraction pass with and without the quality statistics
   (``extract(..., statistics=True/False)``, same images, same process, 3 alternated runs, median) on
   flowers17 photos at 224 px and CIFAR-10N at 32 px (only ``extract`` is timed: the scan and the
   model load are not); and of the health checks on the CIFAR table (section 2).
4. ``user_model``: CIFAR-10N first 3,000 (--quick 300), 64 px: the built-in probe's out-of-fold
   probabilities saved to a CSV, loaded back with ``project.add_predictions``; detection AUROC/AP
   (truth: ``clean_label``) of each probe-based check with both, and the difference (goal: 0).
"""

from __future__ import annotations

import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import SHARED_DATA, emit, parser, require_shared, timer
from bench.health_plant import EXPECTED, Source, check_figures, plant, queue_recall

BENCH = "health"
SEED = 0
LITE0 = "efficientnet_lite0"
SHEET_GROUPS, SHEET_MEMBERS, SHEET_SCALE = 12, 6, 3
REPEATS = 3  # alternated extraction runs with and without the statistics (the median of each is kept)


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def shared_source(name: str, n: int | None = None) -> Source:
    """A shared set's zip and ``path, label`` table (a seeded ``n`` rows, in file order)."""
    table = pd.read_csv(SHARED_DATA / name / "labels.csv", dtype=str, keep_default_na=False)
    if n is not None and n < len(table):
        table = table.iloc[np.sort(np.random.default_rng(SEED).choice(len(table), n, replace=False))]
    return Source(SHARED_DATA / name / "images.zip", table[["path", "label"]].reset_index(drop=True))


def index_project(folder: Path, images: Path, labels: Path, image_size: int, words: int):
    from mlfix.project import Project

    project = Project.create(folder, images=images, labels=labels, backbone=LITE0, weights="offline",
                             image_size=image_size, words=words, seed=SEED)
    with timer() as took:
        project.index()
    return project, took()


# ---- 1. planted defects ----------------------------------------------------------------------------

def unplanted_groups_sheet(scores: pd.DataFrame, kinds: np.ndarray, folder: Path, path: Path) -> Path | None:
    """A contact sheet of the duplicate groups with no planted member (the set's own copies, or false
    groups), captions label and split; None when there is none."""
    from PIL import Image

    groups = scores["group_duplicates"].to_numpy(dtype=np.int64)
    planted_groups = np.unique(groups[(groups >= 0) & (kinds != "clean")])
    candidates = np.setdiff1d(np.unique(groups[groups >= 0]), planted_groups)
    if not len(candidates):
        return None
    info = scores.set_index("sample_id")
    return contact_sheet(scores, lambda sid: Image.open(folder / info.at[sid, "path"]),
                         lambda sid: f"{info.at[sid, 'label']}\n{Path(info.at[sid, 'path']).stem}", path, candidates)


def planted(quick: bool, out: Path) -> None:
    if require_shared("flowers17") is None:
        return
    n, size, words = (150, 64, 16) if quick else (None, 128, 64)
    source = shared_source("flowers17", n)
    foreign = shared_source("gtsrb35") if require_shared("gtsrb35") is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        table = plant(source, Path(tmp) / "data", seed=SEED, foreign=foreign)
        log(f"planted: {len(table)} images, {int((table['kind'] != 'clean').sum())} planted; indexing")
        project, seconds = index_project(Path(tmp) / "project", Path(tmp) / "data",
                                         Path(tmp) / "data" / "labels.csv", size, words)
        scores, health = project.scores(), project.health()
        kinds = table.set_index("path")["kind"].reindex(scores["path"]).fillna("clean").to_numpy()
        sheet = unplanted_groups_sheet(scores, kinds, Path(tmp) / "data", out / f"health_flowers17_unplanted_groups"
                                       f"{'_quick' if quick else ''}.png")
    setup = {"data": "flowers17" + (" seeded 150" if quick else ""), "planted_seed": SEED, "size": size,
             "backbone": f"{LITE0} offline", "images": len(table),
             "planted_kinds": table["kind"].value_counts().to_dict(), "index_seconds": round(seconds, 1)}
    skipped = dict(zip(health["check"], health["skipped"])) if "skipped" in health else {}
    for check in EXPECTED:
        if f"flag_{check}" not in scores:
            emit(BENCH, f"planted.{check}.skipped", None, "", len(scores), reason=skipped.get(check), **setup)
            continue
        figures = check_figures(scores[f"flag_{check}"].fillna(False).to_numpy(dtype=bool),
                                scores[f"score_{check}"].to_numpy(), kinds, check)
        extra = {k: figures.pop(k) for k in ("planted", "flagged", "unplanted_flagged")}
        threshold = health.set_index("check")["threshold"].get(check) if "threshold" in health else None
        for metric, value in figures.items():
            emit(BENCH, f"planted.{check}.{metric}", value, "share", len(scores), threshold=threshold,
                 must=list(EXPECTED[check][0]), may=list(EXPECTED[check][1]), **extra, **setup)
    emit(BENCH, "planted.duplicates.unplanted_groups_sheet", None if sheet is None else str(sheet), "path",
         len(scores), **setup)
    for name, wanted in (("copy_pairs", ("exact_original", "exact_copy", "near_original", "near_copy")),
                         ("relabelled_copies", ("exact_copy", "near_copy"))):
        emit(BENCH, f"planted.label_queue.{name}_in_first", queue_recall(scores["score"].to_numpy(), kinds, wanted),
             "share", len(scores), queue="default score (combined + conflicting duplicate groups first)",
             **setup)


# ---- 2. duplicates among CIFAR-10N -----------------------------------------------------------------

def prepare(name: str, n: int | None):
    """(samples, data root, backbone) of the first ``n`` images of a shared set (offline Lite0)."""
    import torch

    from mlfix.data.images import DataRoot
    from mlfix.data.scan import scan
    from mlfix.pipeline.backbone import create_backbone

    torch.manual_seed(SEED)
    table = pd.read_csv(SHARED_DATA / name / "labels.csv", dtype=str, keep_default_na=False).iloc[:n]
    with tempfile.TemporaryDirectory() as tmp:
        table[["path", "label"]].to_csv(Path(tmp) / "labels.csv", index=False)
        result = scan(SHARED_DATA / name / "images.zip", labels=Path(tmp) / "labels.csv")
    samples = result.samples.merge(table.drop(columns="label"), on="path", how="left")
    return samples, DataRoot(result.source["images"]), create_backbone(LITE0, weights="offline")


def extract_set(name: str, n: int | None, size: int, statistics: bool = True):
    """(samples, Extraction) of the first ``n`` images of a shared set."""
    from mlfix.pipeline.features import extract

    samples, root, backbone = prepare(name, n)
    return samples, extract(root, samples, backbone, size, batch_size=256, statistics=statistics)


def image_meta(samples: pd.DataFrame, found) -> pd.DataFrame:
    """The ``meta`` resource of the scores (interfaces section 2) from a scan and an extraction."""
    from mlfix.data.quality import QUALITY_STATS

    meta = pd.DataFrame({"width": samples["width"].astype("int64"), "height": samples["height"].astype("int64"),
                         "split": pd.array([pd.NA] * len(samples), dtype="string"),
                         "content_hash": found.content_hash})
    for i, column in enumerate(QUALITY_STATS):
        meta[column] = found.stats[:, i]
    return meta


def duplicates(quick: bool, out: Path, cifar_n: int = 50_000) -> None:
    from PIL import Image

    from mlfix.scoring.health_checks import HEALTH_CHECKS
    from mlfix.scoring.neighbours import embedding_neighbours
    from mlfix.scoring.registry import DEFAULT_K, compute_scores

    if require_shared("cifar10n") is None:
        return
    n, size = (500 if quick else cifar_n), 32
    checks_run = [c for c in HEALTH_CHECKS if c != "leak"]  # the training images only: no splits
    with timer() as took:
        samples, found = extract_set("cifar10n", n, size)
    n = len(samples)
    log(f"duplicates: extracted {n} in {took():.0f} s")
    x, ids = np.asarray(found.pooled, dtype=np.float32), samples["sample_id"].to_numpy()
    with timer() as search:
        neighbours = embedding_neighbours(x, DEFAULT_K)
    with timer() as checks:
        table = compute_scores(x, samples["label"].to_numpy(), ids, methods=checks_run,
                               neighbours=neighbours, meta=image_meta(samples, found))
    from mlfix.scoring.duplicates import NEAR_DUPLICATE_COSINE

    setup = {"data": f"cifar10n first {n}", "size": size, "backbone": f"{LITE0} offline",
             "labels": "label (CIFAR-10N random_label1)", "threshold": NEAR_DUPLICATE_COSINE}
    for metric, (value, unit, extra) in group_figures(table, samples, found.content_hash).items():
        emit(BENCH, f"duplicates.{metric}", value, unit, n, **extra, **setup)
    flagged = {c: int(table[f"flag_{c}"].fillna(False).sum()) for c in checks_run if f"flag_{c}" in table}
    emit(BENCH, "duplicates.flagged_per_check", flagged, "images", n, **setup)
    per_1000 = 1000 / n
    emit(BENCH, "cost.health_checks_s_per_1000", round(checks() * per_1000, 3), "s", n,
         checks=checks_run, neighbours_search_s_per_1000=round(search() * per_1000, 3), **setup)
    info = samples.set_index("sample_id")
    with zipfile.ZipFile(SHARED_DATA / "cifar10n" / "images.zip") as z:
        sheet = contact_sheet(table, lambda sid: Image.open(z.open(info.at[sid, "path"])),
                              lambda sid: f"{info.at[sid, 'label']}\n{info.at[sid, 'clean_label']}",
                              out / f"health_cifar10n_groups{'_quick' if quick else ''}.png")
    emit(BENCH, "duplicates.contact_sheet", str(sheet), "path", n, **setup)


def group_figures(table: pd.DataFrame, samples: pd.DataFrame, content_hash: np.ndarray) -> dict:
    """``metric -> (value, unit, extra setup)``: the groups, their images, the exact copies (same
    pixels), the groups under several given labels and under several clean labels."""
    groups = table["group_duplicates"].to_numpy(dtype=np.int64)
    members = groups >= 0
    hashes = pd.Series(content_hash)
    exact = hashes.duplicated(keep=False) & (hashes != 0)
    clean = samples.set_index("sample_id")["clean_label"].reindex(table["sample_id"]).to_numpy()
    sizes = pd.Series(groups[members]).value_counts()
    conflict = pd.Series(table["conflict_duplicates"].to_numpy()[members]).groupby(groups[members]).any()
    clean_mixed = pd.DataFrame({"g": groups[members], "c": clean[members]}).groupby("g")["c"].nunique() > 1
    return {"groups": (int(len(sizes)), "groups", {"largest": int(sizes.max()) if len(sizes) else 0}),
            "images_in_groups": (int(members.sum()), "images", {}),
            "exact_copies": (int(exact.sum()), "images", {"exact_groups": int(hashes[exact].nunique())}),
            "groups_with_conflicting_labels": (int(conflict.sum()), "groups", {}),
            "groups_with_conflicting_clean_labels": (int(clean_mixed.sum()), "groups", {})}


def contact_sheet(table: pd.DataFrame, read, caption, path: Path, candidates: np.ndarray | None = None) -> Path:
    """A PNG of up to 12 duplicate groups (a seeded sample of ``candidates``, default all), one row each:
    up to 6 members (``read(sample_id)`` -> PIL image, shown 96 px) with ``caption(sample_id)`` under
    each, the group's size and closest cosine at the row's start."""
    from PIL import Image, ImageDraw

    groups = table["group_duplicates"].to_numpy(dtype=np.int64)
    ids = np.unique(groups[groups >= 0]) if candidates is None else np.asarray(candidates)
    chosen = np.sort(np.random.default_rng(SEED).choice(ids, min(SHEET_GROUPS, len(ids)), replace=False))
    cell, text = 32 * SHEET_SCALE, 24
    sheet = Image.new("RGB", (80 + SHEET_MEMBERS * (cell + 4), max(1, len(chosen)) * (cell + text + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, g in enumerate(chosen):
        rows = table[groups == g]
        y = r * (cell + text + 4)
        draw.text((4, y + 4), f"group {g}\n{len(rows)} imgs\ncos {rows['score_duplicates'].max():.3f}", fill="black")
        for c, sid in enumerate(rows["sample_id"].head(SHEET_MEMBERS)):
            image = read(sid).convert("RGB")
            image.thumbnail((cell, cell), Image.Resampling.NEAREST if max(image.size) < cell else Image.Resampling.BILINEAR)
            image = image.resize((cell, cell), Image.Resampling.NEAREST) if max(image.size) < cell else image
            x = 80 + c * (cell + 4)
            sheet.paste(image, (x, y))
            draw.text((x, y + cell + 1), caption(sid), fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


# ---- 3. what the statistics cost --------------------------------------------------------------------

def cost(quick: bool) -> None:
    runs = [("flowers17", 32, 64)] if quick else [("flowers17", 256, 224), ("cifar10n", 2000, 32)]
    for name, n, size in runs:
        if require_shared(name) is None:
            continue
        from mlfix.pipeline.features import extract

        seconds: dict[bool, list[float]] = {False: [], True: []}
        samples, root, backbone = prepare(name, n)
        extract(root, samples.iloc[:64], backbone, size, batch_size=256, statistics=False)  # warm-up
        for statistics in (False, True) * REPEATS:
            with timer() as took:
                extract(root, samples, backbone, size, batch_size=256, statistics=statistics)
            seconds[statistics].append(took())
        without, with_ = (float(np.median(seconds[flag])) for flag in (False, True))
        work = statistics_seconds(root, samples, size)
        setup = {"data": name, "size": size, "backbone": f"{LITE0} offline", "batch_size": 256,
                 "runs_s": {"without": [round(s, 2) for s in seconds[False]],
                            "with": [round(s, 2) for s in seconds[True]]}, "load": _load()}
        emit(BENCH, f"cost.{name}.extract_s_per_1000_without_statistics", round(without * 1000 / n, 2), "s", n, **setup)
        emit(BENCH, f"cost.{name}.extract_s_per_1000_with_statistics", round(with_ * 1000 / n, 2), "s", n, **setup)
        emit(BENCH, f"cost.{name}.statistics_ratio", round(with_ / without, 3), "ratio", n, goal=1.10,
             how=f"median of {REPEATS} alternated runs each", **setup)
        emit(BENCH, f"cost.{name}.statistics_s_per_1000", round(work * 1000 / n, 2), "s", n,
             how="image_statistics + pixel_hash alone, one thread, on the decoded images", **setup)
        emit(BENCH, f"cost.{name}.statistics_ratio_bound", round(1 + work / without, 3), "ratio", n, goal=1.10,
             how="1 + (statistics work alone) / (extraction without): the ratio if none of it overlaps", **setup)


def statistics_seconds(root, samples: pd.DataFrame, size: int) -> float:
    """Seconds of the quality statistics and pixel hash alone over the samples' decoded images."""
    from mlfix.data.images import load_image
    from mlfix.data.quality import image_statistics, pixel_hash

    images = [load_image(root, row, target_size=size) for row in samples.to_dict("records")]
    with timer() as took:
        for image in images:
            image_statistics(image)
            pixel_hash(image)
    return took()


def _load() -> float:
    import os

    return round(os.getloadavg()[0], 1)


# ---- 4. the user's own model ------------------------------------------------------------------------

def user_model(quick: bool) -> None:
    from bench.detect import detection_metrics
    from mlfix.scoring.probe import out_of_fold_probabilities

    if require_shared("cifar10n") is None:
        return
    n, size, words = (300, 32, 16) if quick else (3000, 64, 16)
    table = pd.read_csv(SHARED_DATA / "cifar10n" / "labels.csv", dtype=str, keep_default_na=False).iloc[:n]
    with tempfile.TemporaryDirectory() as tmp:
        table[["path", "label"]].to_csv(Path(tmp) / "labels.csv", index=False)
        project, _ = index_project(Path(tmp) / "project", SHARED_DATA / "cifar10n" / "images.zip",
                                   Path(tmp) / "labels.csv", size, words)
        before = project.scores()
        rows = np.flatnonzero(project.readable())
        samples = project.samples.iloc[rows]
        oof = out_of_fold_probabilities(np.asarray(project.pooled()[rows], dtype=np.float32),
                                        samples["label"].to_numpy(), folds=5, seed=project.settings.seed)
        file = Path(tmp) / "probe_oof.csv"
        frame = pd.DataFrame(oof.probs, columns=[str(c) for c in oof.classes])
        frame.insert(0, "sample_id", samples["sample_id"].to_numpy())
        frame.to_csv(file, index=False, float_format="%.17g")
        project.add_predictions(pd.read_csv(file, dtype={"sample_id": str}), name="probe_copy")
        after = project.scores()
        used = bool(project.scores_use_predictions())
        # a control: the same rows shuffled between samples must change the figures (the file is used)
        shuffled = frame.assign(sample_id=np.random.default_rng(SEED).permutation(frame["sample_id"].to_numpy()))
        project.add_predictions(shuffled, name="shuffled")
        control = project.scores()
    truth = table.set_index("path")["clean_label"]
    setup = {"data": f"cifar10n first {n}", "size": size, "backbone": f"{LITE0} offline", "file": "CSV, %.17g",
             "truth": "clean_label", "labels": "label (random_label1)"}
    for column in ("score_loss", "score_cleanlab", "score", "score_knn"):
        if column not in before or column not in after:
            continue
        figures = [detection_metrics((t["label"] != truth.reindex(t["path"]).to_numpy()).to_numpy(),
                                     t[column].to_numpy()) for t in (before, after, control)]
        name = "combined" if column == "score" else column.removeprefix("score_")
        for metric in ("auroc", "ap"):
            emit(BENCH, f"user_model.{name}.{metric}_builtin", figures[0][metric], "", n, **setup)
            emit(BENCH, f"user_model.{name}.{metric}_loaded", figures[1][metric], "", n, **setup)
            emit(BENCH, f"user_model.{name}.{metric}_difference", round(figures[1][metric] - figures[0][metric], 6),
                 "", n, scores_use_predictions=used, **setup)
            emit(BENCH, f"user_model.{name}.{metric}_control_shuffled_rows", figures[2][metric], "", n, **setup)


SECTIONS = {"planted": planted, "duplicates": duplicates, "cost": cost, "user_model": user_model}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--only", choices=sorted(SECTIONS), nargs="+", help="some sections")
    p.add_argument("--out", type=Path, default=Path("/tmp"), help="folder of the contact sheet PNG")
    p.add_argument("--cifar-n", type=int, default=50_000, help="CIFAR-10N images searched for duplicates")
    args = p.parse_args(argv)
    for name, run in SECTIONS.items():
        if not args.only or name in args.only:
            if name == "duplicates":
                run(args.quick, args.out, args.cifar_n)
            elif name == "planted":
                run(args.quick, args.out)
            else:
                run(args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
