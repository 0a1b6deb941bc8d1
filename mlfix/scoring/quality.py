"""Image-quality checks: dark, overexposed, blurry, low information, odd aspect, tiny, grayscale.

The issue types are CleanVision's (cleanlab/cleanvision: dark, light, blurry, low_information,
odd_aspect_ratio, odd_size, grayscale), computed from the per-image statistics the extraction pass
records (:mod:`mlfix.data.quality`) and the image sizes of the sample table: no pass over the images.

Every check returns the table of the score contract, one row per sample in input order:
``DataFrame[sample_id, score, suggested_label, flag, reason]``; ``score`` in [0, 1], higher = worse,
NaN where the check does not apply (an image that could not be decoded); ``suggested_label`` None;
``flag`` = ``score >= THRESHOLDS[check]``; ``reason`` says the number (None when not flagged).

What is normal depends on the set: a set of white-background product shots is mostly near-white, a
set of digits mostly ink on paper, a set of thumbnails all soft. So the scores measure how far an
image is from the set's typical image (its median), towards the defect:

- ``dark`` / ``overexposed``: the share of near-black / near-white pixels beyond the set's median
  share, as a fraction of the way to all of them (an all-black image scores 1); ``overexposed`` also
  by mean brightness beyond the set's median, the larger of the two: an over-exposed photo clips its
  highlights but its coloured parts stay under white (flowers17 photos at 4x brightness: 17-96% of
  pixels near white, median 47%, but mean brightness 0.68-0.99 against a typical 0.39);
- ``blurry``: robust z-score (median, MAD) of log(Laplacian variance / luma variance) below the set's
  median, mapped to [0, 1) as 1 - 2^(-z/3) (z = 3 -> 0.5); dividing by the luma variance makes it
  blind to exposure and contrast; flat images (no contrast) are not applicable (``low_information``);
- ``low_information``: 1 - entropy / the set's median entropy (a flat single-colour image scores 1);
- ``odd_aspect``: 1 - 1/r, r the image's aspect ratio over the set's median one (r = 3 -> 0.67);
- ``tiny``: how much smaller the shorter side is than the set's median one (1 - side / median), for
  images under :data:`TINY_SIDE` px, or absolutely (1 - side / :data:`ABSOLUTE_SIDE`), the larger;
- ``grayscale``: how gray (1 - channel spread / :data:`COLOUR_SPREAD`) times the share of the set in
  colour: a gray image is flagged only in a set that is mostly colour (flat images: not applicable).

    >>> import numpy as np
    >>> meta = pd.DataFrame({"width": [64, 64, 64, 64, 200], "height": [64, 64, 64, 48, 20]})
    >>> table = quality_check("odd_aspect", meta, np.array(["a", "b", "c", "d", "e"]))
    >>> table["flag"].tolist(), table["reason"].iloc[4]
    ([False, False, False, False, True], 'odd aspect ratio 10.0:1 (200x20 px; typical here 1.0:1)')
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from mlfix.errors import MlfixError

QUALITY_CHECKS: dict[str, tuple[str, ...]] = {
    "dark": ("dark_fraction", "brightness"),
    "overexposed": ("bright_fraction", "brightness"),
    "blurry": ("sharpness", "contrast"),
    "low_information": ("entropy",),
    "odd_aspect": ("width", "height"),
    "tiny": ("width", "height"),
    "grayscale": ("channel_spread", "contrast"),
}
THRESHOLDS: dict[str, float] = {"dark": 0.8, "overexposed": 0.6, "blurry": 0.5, "low_information": 0.7,
                                "odd_aspect": 2 / 3, "tiny": 0.6, "grayscale": 0.75}
BLUR_HALF_Z = 3.0  # robust z at which the blurry score is 0.5
MIN_LOG_SPREAD = 0.5  # floor of the robust spread of log sharpness: a uniform set flags nothing for noise
FLAT_CONTRAST = 0.02  # luma std under which an image is flat: its sharpness and its colour mean nothing
TINY_SIDE = 64  # px: a shorter side at least this long is never tiny relative to the set
ABSOLUTE_SIDE = 32  # px: the absolute part of tiny, 1 - side / ABSOLUTE_SIDE
MIN_HEADROOM = 0.2  # dark / overexposed: where the typical image is over 84% black, none is too dark
COLOUR_SPREAD = 0.05  # mean channel spread at which an image counts as colour


class QualityCheckError(MlfixError, ValueError):
    """A quality check asked for something the metadata cannot serve; the message says what to do."""


def quality_check(name: str, meta: pd.DataFrame, sample_ids: np.ndarray) -> pd.DataFrame:
    """Run the quality check ``name`` over ``meta`` (one row per sample; the columns of
    ``QUALITY_CHECKS[name]``) and return the contract's table for ``sample_ids``."""
    if name not in QUALITY_CHECKS:
        raise QualityCheckError(f"unknown quality check {name!r}; the checks are {', '.join(QUALITY_CHECKS)}")
    missing = [column for column in QUALITY_CHECKS[name] if column not in meta.columns]
    if missing:
        raise QualityCheckError(f"the {name} check needs the columns {', '.join(missing)} of the image metadata; "
                                "index the project again (`mlfix index`) to measure the images")
    ids = np.asarray(list(sample_ids), dtype=object)
    if len(ids) != len(meta):
        raise QualityCheckError(f"sample_ids has {len(ids)} entries but the metadata {len(meta)} rows; "
                                "pass one id per metadata row")
    columns = {c: pd.to_numeric(meta[c], errors="coerce").to_numpy(dtype=np.float64)
               for c in QUALITY_CHECKS[name]}
    score, reason = _CHECKS[name](**columns)
    score = np.clip(score, 0.0, 1.0)
    flag = np.nan_to_num(score, nan=-1.0) >= THRESHOLDS[name]
    reasons = np.full(len(ids), None, dtype=object)
    if flag.any():
        reasons[flag] = reason(flag).to_numpy(dtype=object)
    return pd.DataFrame({"sample_id": ids, "score": score, "suggested_label": np.full(len(ids), None, dtype=object),
                         "flag": flag, "reason": pd.Series(reasons, dtype=object)})  # None, not NaN, when not flagged


Reason = Callable[[np.ndarray], pd.Series]


def _median(values: np.ndarray) -> float:
    """The median of the finite values (NaN when there are none)."""
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if len(finite) else float("nan")


def _percent(values: np.ndarray, digits: int = 0) -> pd.Series:
    return pd.Series(100 * np.asarray(values)).map(f"{{:.{digits}f}}%".format)


def _beyond_typical(fraction: np.ndarray) -> np.ndarray:
    """The share beyond the set's median share, as a fraction of the way to 1 (at least
    :data:`MIN_HEADROOM` of it: in a set of night skies, nothing is too dark)."""
    typical = _median(fraction)
    return (fraction - typical) / max(1.0 - typical, MIN_HEADROOM)


def _exposure(fraction: np.ndarray, brightness: np.ndarray, problem: str, extreme: str) -> tuple[np.ndarray, Reason]:
    """``problem``: ``fraction`` of pixels near ``extreme`` beyond the set's typical share."""
    typical = _median(fraction)

    def reason(flag: np.ndarray) -> pd.Series:
        return (f"{problem}: " + _percent(fraction[flag]) + f" of pixels near {extreme} (typical here "
                + f"{100 * typical:.0f}%, mean brightness " + _percent(brightness[flag]) + ")")

    return _beyond_typical(fraction), reason


def _dark(dark_fraction: np.ndarray, brightness: np.ndarray) -> tuple[np.ndarray, Reason]:
    return _exposure(dark_fraction, brightness, "too dark", "black")


def _overexposed(bright_fraction: np.ndarray, brightness: np.ndarray) -> tuple[np.ndarray, Reason]:
    score, reason = _exposure(bright_fraction, brightness, "overexposed", "white")
    return np.fmax(score, _beyond_typical(brightness)), reason


def _blurry(sharpness: np.ndarray, contrast: np.ndarray) -> tuple[np.ndarray, Reason]:
    """Robust z-score of log(Laplacian variance / luma variance) below the set's median."""
    flat = ~(contrast >= FLAT_CONTRAST)  # NaN contrast too
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.log(np.maximum(sharpness, 1e-6) / np.square(contrast * 255.0))
    relative[flat] = np.nan
    centre = _median(relative)
    spread = max(1.4826 * _median(np.abs(relative - centre)), MIN_LOG_SPREAD)
    z = (centre - relative) / spread
    score = 1.0 - np.exp2(-np.maximum(z, 0.0) / BLUR_HALF_Z)

    def reason(flag: np.ndarray) -> pd.Series:
        times = pd.Series(np.exp(centre - relative[flag])).map("{:.0f}".format)
        return ("blurry: " + times + "x less fine detail than the set's typical image (robust z "
                + pd.Series(z[flag]).map("{:.1f}".format) + ")")

    return score, reason


def _low_information(entropy: np.ndarray) -> tuple[np.ndarray, Reason]:
    typical = _median(entropy)
    score = 1.0 - entropy / typical if typical > 0 else np.where(np.isnan(entropy), np.nan, 0.0)

    def reason(flag: np.ndarray) -> pd.Series:
        return ("low information: entropy " + pd.Series(entropy[flag]).map("{:.1f}".format)
                + f" bits (typical here {typical:.1f})")

    return score, reason


def _odd_aspect(width: np.ndarray, height: np.ndarray) -> tuple[np.ndarray, Reason]:
    with np.errstate(divide="ignore", invalid="ignore"):
        log_aspect = np.log(width / height)
    log_aspect[~np.isfinite(log_aspect)] = np.nan
    typical = _median(log_aspect)
    score = 1.0 - np.exp(-np.abs(log_aspect - typical))

    def reason(flag: np.ndarray) -> pd.Series:
        w, h = width[flag], height[flag]
        ratio = pd.Series(np.maximum(w, h) / np.minimum(w, h)).map("{:.1f}".format)
        typical_ratio = np.exp(abs(typical))
        return ("odd aspect ratio " + ratio + ":1 (" + _size(w, h) + f" px; typical here {typical_ratio:.1f}:1)")

    return score, reason


def _size(width: np.ndarray, height: np.ndarray) -> pd.Series:
    return pd.Series(width.astype(np.int64).astype(str)) + "x" + pd.Series(height.astype(np.int64).astype(str))


def _tiny(width: np.ndarray, height: np.ndarray) -> tuple[np.ndarray, Reason]:
    side = np.minimum(width, height)
    typical = _median(side)
    relative = np.where(side < TINY_SIDE, 1.0 - side / typical, 0.0)
    score = np.fmax(relative, 1.0 - side / ABSOLUTE_SIDE)
    score[np.isnan(side)] = np.nan

    def reason(flag: np.ndarray) -> pd.Series:
        return "tiny: " + _size(width[flag], height[flag]) + f" px (typical shorter side here {typical:.0f} px)"

    return score, reason


def _grayscale(channel_spread: np.ndarray, contrast: np.ndarray) -> tuple[np.ndarray, Reason]:
    known = np.isfinite(channel_spread)
    colour_share = float((channel_spread[known] >= COLOUR_SPREAD).mean()) if known.any() else 0.0
    score = (1.0 - np.clip(channel_spread / COLOUR_SPREAD, 0.0, 1.0)) * colour_share
    score[~(contrast >= FLAT_CONTRAST)] = np.nan  # all black or all white: no colour to lose

    def reason(flag: np.ndarray) -> pd.Series:
        return ("grayscale in a colour set: channel spread " + _percent(channel_spread[flag], 1)
                + f" ({100 * colour_share:.0f}% of the set is in colour)")

    return score, reason


_CHECKS: dict[str, Callable[..., tuple[np.ndarray, Reason]]] = {
    "dark": _dark, "overexposed": _overexposed, "blurry": _blurry, "low_information": _low_information,
    "odd_aspect": _odd_aspect, "tiny": _tiny, "grayscale": _grayscale,
}
