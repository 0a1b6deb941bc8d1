"""Planted defects for bench/health.py: image transforms, the planted set and the figures against it.

Everything here is a pure function of its inputs and a seed (no mlfix import), so tests can check it
on a few generated images: tests/bench/test_health_bench.py.

The planted set is written into a temporary folder (never the repository): ``images/<n>.<ext>`` and a
``labels.csv`` with ``path, label, split``. Unchanged images keep their original bytes; an exact copy
has the same bytes as its original, a different label and the other split; every other defect
*replaces* its source image (so a blurred or darkened image has no near copy left in the set, and the
duplicate check is judged only on the copies planted as such).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance, ImageFilter

# kind -> how many per 1,000 source images (at least 1 each); "black" is always one image
PLANTED = {"exact": 15, "near": 15, "dark": 7, "black": 0, "overexposed": 7, "blurred": 7, "stretched": 7,
           "tiny": 7, "grayscale": 7, "noise": 4, "foreign": 4}
COPY_KINDS = ("exact", "near")  # each adds a second image beside its original
TINY_SIDE = 16
FOREIGN_SIDE = 224  # images of another set are scaled up to this (the shared sets are 32-35 px: not tiny)

# check -> (the kinds it must flag, the kinds it may flag without counting as a false alarm)
COPIES = ("exact_original", "exact_copy", "near_original", "near_copy")
QUALITY = ("black", "dark", "overexposed", "blurred", "stretched", "tiny", "grayscale")
OUTLIERS = ("noise", "foreign")
EXPECTED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "duplicates": (COPIES, ()),
    "leak": (COPIES, ()),
    "outlier": (OUTLIERS, QUALITY),
    "class_outlier": (OUTLIERS + ("exact_copy", "near_copy"), QUALITY + ("exact_original", "near_original")),
    "dark": (("black", "dark"), ()),
    "overexposed": (("overexposed",), ()),
    "blurry": (("blurred",), ("black", "dark", "tiny", "overexposed", "noise", "foreign")),
    "low_information": (("black", "dark"), ("overexposed", "blurred", "tiny")),
    "odd_aspect": (("stretched",), ()),
    "tiny": (("tiny",), ()),
    "grayscale": (("grayscale",), ("black", "dark")),
}


# ---- transforms (PIL in, PIL out) ----------------------------------------------------------------

def near_copy(image: Image.Image) -> Image.Image:
    """A slight crop (4% off each side) resized to 90%: re-encoded later at JPEG quality 70."""
    w, h = image.size
    dx, dy = round(w * 0.04), round(h * 0.04)
    cropped = image.crop((dx, dy, w - dx, h - dy))
    return cropped.resize((max(8, round(cropped.width * 0.9)), max(8, round(cropped.height * 0.9))),
                          Image.Resampling.BILINEAR)


def darken(image: Image.Image) -> Image.Image:
    """3% of the brightness: nearly black, the content still there."""
    return ImageEnhance.Brightness(image).enhance(0.03)


def black(image: Image.Image) -> Image.Image:
    """An all-black image of the same size."""
    return Image.new("RGB", image.size)


def overexpose(image: Image.Image) -> Image.Image:
    """Brightness x4: most pixels clip to white."""
    return ImageEnhance.Brightness(image).enhance(4.0)


def blur(image: Image.Image) -> Image.Image:
    """A Gaussian blur of radius 1/40 of the short side (12 px on a 500 px photo, at least 2)."""
    return image.filter(ImageFilter.GaussianBlur(max(2.0, min(image.size) / 40)))


def stretch(image: Image.Image) -> Image.Image:
    """Aspect 5:1: the long side kept, the other a fifth of it."""
    side = max(image.size)
    return image.resize((side, max(8, side // 5)), Image.Resampling.BILINEAR)


def tiny(image: Image.Image) -> Image.Image:
    """Shrunk to ``TINY_SIDE`` x ``TINY_SIDE`` pixels."""
    return image.resize((TINY_SIDE, TINY_SIDE), Image.Resampling.BILINEAR)


def grayscale(image: Image.Image) -> Image.Image:
    """One channel (saved as a grayscale JPEG)."""
    return image.convert("L")


def noise_image(rng: np.random.Generator, side: int = 256) -> Image.Image:
    """Smooth colour noise: random values on a coarse grid (4 to 32 cells a side) scaled up."""
    cells = int(rng.integers(4, 33))
    coarse = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC)


TRANSFORMS = {"near": near_copy, "dark": darken, "black": black, "overexposed": overexpose, "blurred": blur,
              "stretched": stretch, "tiny": tiny, "grayscale": grayscale}


# ---- the planted set ---------------------------------------------------------------------------

@dataclass
class Source:
    """A shared set read from its zip: ``table`` has ``path, label`` (member names in ``zip_path``)."""

    zip_path: Path
    table: pd.DataFrame

    def read(self, path: str) -> bytes:
        with zipfile.ZipFile(self.zip_path) as z:
            return z.read(path)


def counts_for(n: int) -> dict[str, int]:
    """How many of each kind to plant among ``n`` source images.

    >>> counts_for(1000)["exact"], counts_for(150)["exact"], counts_for(150)["black"]
    (15, 2, 1)
    """
    out = {kind: max(1, round(per * n / 1000)) for kind, per in PLANTED.items()}
    out["black"] = 1
    return out


def choose(n: int, counts: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Disjoint source rows per kind that needs one (every kind but the outliers).

    >>> picked = choose(100, {"exact": 3, "dark": 2, "noise": 4}, np.random.default_rng(0))
    >>> sorted(picked), len(set(np.concatenate(list(picked.values()))))
    (['dark', 'exact'], 5)
    """
    kinds = [k for k in counts if k not in OUTLIERS]
    need = sum(counts[k] for k in kinds)
    if need > n:
        raise ValueError(f"{need} planted defects need at least {need} source images, got {n}")
    rows = rng.permutation(n)[:need]
    starts = np.cumsum([0] + [counts[k] for k in kinds])
    return {k: np.sort(rows[a:b]) for k, a, b in zip(kinds, starts[:-1], starts[1:])}


def other_label(label: str, classes: list[str], rng: np.random.Generator) -> str:
    """A class drawn at random among the others."""
    others = [c for c in classes if c != label]
    return others[int(rng.integers(len(others)))]


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def plant(source: Source, out: Path, seed: int = 0, foreign: Source | None = None,
          test_share: float = 0.2) -> pd.DataFrame:
    """Write the planted set into ``out`` (``images/`` and ``labels.csv``); return its table.

    Columns: ``path, label, split, kind, source`` (kind: ``clean``, ``exact_original``, ``exact_copy``,
    ``near_original``, ``near_copy`` or a defect of ``TRANSFORMS``/``OUTLIERS``; source: the shared
    path it came from, None for noise). Copies carry another label and the other split (originals
    in train, copies in test); the rest are in test with probability ``test_share``.
    """
    rng = np.random.default_rng(seed)
    table = source.table.reset_index(drop=True)
    classes = sorted(table["label"].unique())
    counts = counts_for(len(table))
    picked = choose(len(table), counts, rng)
    kind = np.full(len(table), "clean", dtype=object)
    for name, rows in picked.items():
        kind[rows] = name
    split = np.where(rng.random(len(table)) < test_share, "test", "train").astype(object)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records: list[dict] = []

    def write(data: bytes, label: str, split_: str, kind_: str, origin: str | None, ext: str) -> None:
        path = f"images/{len(records):05d}.{ext}"
        (out / path).write_bytes(data)
        records.append({"path": path, "label": label, "split": split_, "kind": kind_, "source": origin})

    with zipfile.ZipFile(source.zip_path) as z:
        for i, row in enumerate(table.itertuples(index=False)):
            data, ext = z.read(row.path), Path(row.path).suffix.lstrip(".").lower() or "jpg"
            k = kind[i]
            if k in COPY_KINDS:
                write(data, row.label, "train", f"{k}_original", row.path, ext)
                copy = data if k == "exact" else _jpeg(near_copy(Image.open(io.BytesIO(data)).convert("RGB")), 70)
                write(copy, other_label(row.label, classes, rng), "test", f"{k}_copy", row.path,
                      ext if k == "exact" else "jpg")
            elif k in TRANSFORMS:
                image = TRANSFORMS[k](Image.open(io.BytesIO(data)).convert("RGB"))
                write(_jpeg(image), row.label, split[i], k, row.path, "jpg")
            else:
                write(data, row.label, split[i], "clean", row.path, ext)
    for _ in range(counts["noise"]):
        write(_jpeg(noise_image(rng)), classes[int(rng.integers(len(classes)))], "train", "noise", None, "jpg")
    if foreign is not None:
        rows = rng.choice(len(foreign.table), counts["foreign"], replace=False)
        with zipfile.ZipFile(foreign.zip_path) as z:
            for r in rows:
                member = foreign.table["path"].iloc[r]
                image = Image.open(io.BytesIO(z.read(member))).convert("RGB")
                image = image.resize((FOREIGN_SIDE, FOREIGN_SIDE), Image.Resampling.BICUBIC)
                write(_jpeg(image), classes[int(rng.integers(len(classes)))], "train", "foreign", member, "jpg")
    planted = pd.DataFrame(records)
    planted[["path", "label", "split"]].to_csv(out / "labels.csv", index=False)
    return planted


# ---- figures ------------------------------------------------------------------------------------

def check_figures(flag: np.ndarray, score: np.ndarray, kinds: np.ndarray, check: str) -> dict:
    """Precision and recall of a check's flags against the planted kinds (``EXPECTED[check]``), and
    ``recall_at_planted``: the share of the planted cases among the first |planted| by score.

    Precision counts a flag as right when the sample is a planted case or a tolerated kind; flags on
    unplanted images count as wrong (the set's own defects, if any, lower it: ``unplanted_flagged``).

    >>> kinds = np.array(["clean", "tiny", "tiny", "black", "clean"])
    >>> check_figures(np.array([0, 1, 0, 0, 1], bool), np.array([.1, .9, .3, .2, .5]), kinds, "tiny")
    {'precision': 0.5, 'recall': 0.5, 'recall_at_planted': 0.5, 'planted': 2, 'flagged': 2, 'unplanted_flagged': 1}
    """
    must, may = EXPECTED[check]
    planted = np.isin(kinds, must)
    allowed = planted | np.isin(kinds, may)
    flag = np.asarray(flag, dtype=bool)
    n_planted, n_flagged = int(planted.sum()), int(flag.sum())
    score = np.nan_to_num(np.asarray(score, dtype=np.float64), nan=-np.inf)
    top = np.argsort(-score, kind="stable")[:n_planted]
    return {"precision": round(float((flag & allowed).sum() / n_flagged), 4) if n_flagged else None,
            "recall": round(float((flag & planted).sum() / n_planted), 4) if n_planted else None,
            "recall_at_planted": round(float(planted[top].mean()), 4) if n_planted else None,
            "planted": n_planted, "flagged": n_flagged, "unplanted_flagged": int((flag & ~allowed).sum())}


def queue_recall(score: np.ndarray, kinds: np.ndarray, wanted: tuple[str, ...] = COPIES) -> float | None:
    """Share of the ``wanted`` kinds among the first len(wanted rows) of the queue sorted by ``score``.

    >>> queue_recall(np.array([.9, .1, .8, .7]), np.array(["exact_copy", "clean", "clean", "exact_original"]))
    0.5
    """
    wanted_rows = np.isin(kinds, wanted)
    n = int(wanted_rows.sum())
    if not n:
        return None
    order = np.argsort(-np.nan_to_num(np.asarray(score, dtype=np.float64), nan=-np.inf), kind="stable")
    return round(float(wanted_rows[order[:n]].mean()), 4)
