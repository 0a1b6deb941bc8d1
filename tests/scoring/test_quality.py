"""The image-quality checks (mlfix.scoring.quality) on planted defects among ordinary images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image, ImageFilter

from mlfix.data.quality import QUALITY_STATS, image_statistics
from mlfix.scoring.quality import QUALITY_CHECKS, THRESHOLDS, QualityCheckError, quality_check
from tests.data.test_quality import natural_image, planted_images

PLANTED = {"dark": "black", "overexposed": "overexposed", "blurry": "blurred", "low_information": "flat",
           "odd_aspect": "stretched", "tiny": "tiny", "grayscale": "gray"}
# what else a check may rightly flag: the stretched image is 20 px tall, the black and overexposed
# images carry next to no information
ALSO = {"tiny": {"stretched"}, "low_information": {"black", "overexposed"}}
REASONS = {"dark": "too dark: 100% of pixels near black (typical here 0%, mean brightness 0%)",
           "odd_aspect": "odd aspect ratio 10.0:1 (200x20 px; typical here 1.0:1)",
           "tiny": "tiny: 16x16 px (typical shorter side here 64 px)",
           "low_information": "low information: entropy 0.0 bits (typical here 6.6)",
           "grayscale": "grayscale in a colour set: channel spread 0.0% (89% of the set is in colour)"}


def meta_of(images: dict[str, Image.Image]) -> pd.DataFrame:
    """The meta resource of the interfaces: width, height and the statistics, one row per image."""
    stats = pd.DataFrame(np.stack([image_statistics(im) for im in images.values()]), columns=list(QUALITY_STATS))
    sizes = pd.DataFrame([im.size for im in images.values()], columns=["width", "height"], dtype=np.int64)
    return pd.concat([sizes, stats], axis=1)


@pytest.fixture(scope="module")
def planted():
    images = planted_images()
    return meta_of(images), np.array(list(images), dtype=object)


@pytest.mark.parametrize("check", list(QUALITY_CHECKS))
def test_the_planted_defect_is_flagged_first_and_no_ordinary_image_is(planted, check):
    meta, ids = planted
    table = quality_check(check, meta, ids)
    assert list(table.columns) == ["sample_id", "score", "suggested_label", "flag", "reason"]
    assert table["sample_id"].tolist() == ids.tolist() and table["suggested_label"].isna().all()
    ranked = table.sort_values("score", ascending=False, kind="stable")
    flagged = set(table.loc[table["flag"], "sample_id"])
    assert PLANTED[check] in set(ranked["sample_id"].iloc[:1 + len(ALSO.get(check, ()))])
    assert flagged == {PLANTED[check]} | ALSO.get(check, set())
    assert table["flag"].equals(table["score"].fillna(-1) >= THRESHOLDS[check])
    assert table["reason"].notna().equals(table["flag"])
    if check in REASONS:
        assert table.set_index("sample_id").loc[PLANTED[check], "reason"] == REASONS[check]


def test_reasons_say_the_number(planted):
    meta, ids = planted
    reason = quality_check("blurry", meta, ids).set_index("sample_id")["reason"]
    assert reason["blurred"].startswith("blurry: ") and "less fine detail than the set's typical image" in reason[
        "blurred"] and "robust z" in reason["blurred"]
    over = quality_check("overexposed", meta, ids).set_index("sample_id")["reason"]["overexposed"]
    assert over.startswith("overexposed: 100% of pixels near white")


def test_a_set_of_blurry_thumbnails_is_not_all_blurry():
    images = {f"t{i}": natural_image(i).filter(ImageFilter.GaussianBlur(2)) for i in range(20)}
    table = quality_check("blurry", meta_of(images), np.array(list(images)))
    assert not table["flag"].any()
    images["sharp"] = natural_image(99)  # a sharp one among them is no defect either
    assert not quality_check("blurry", meta_of(images), np.array(list(images)))["flag"].any()


def test_grayscale_is_flagged_only_in_a_set_that_is_mostly_colour():
    images = {f"g{i}": natural_image(i).convert("L").convert("RGB") for i in range(12)}
    images["colour"] = natural_image(40)
    table = quality_check("grayscale", meta_of(images), np.array(list(images)))
    assert not table["flag"].any()


def test_dark_and_low_information_are_relative_to_a_set_of_ink_on_paper():
    """Digits (dark ink on white): mostly near-white pixels and low entropy are normal there."""
    from sklearn.datasets import load_digits

    digits = load_digits().images[:30]
    images = {f"d{i}": Image.fromarray((255 - d * (255 / 16)).astype(np.uint8), "L").resize(
        (64, 64), Image.Resampling.BICUBIC).convert("RGB") for i, d in enumerate(digits)}
    images["white"] = Image.new("RGB", (64, 64), (255, 255, 255))
    meta, ids = meta_of(images), np.array(list(images))
    for check, expected in [("overexposed", {"white"}), ("low_information", {"white"}), ("dark", set()),
                            ("grayscale", set())]:
        assert set(quality_check(check, meta, ids).query("flag")["sample_id"]) == expected, check


def test_in_a_set_of_night_skies_nothing_is_too_dark():
    rng = np.random.default_rng(0)
    skies = {}
    for i in range(10):
        pixels = np.zeros((48, 48, 3), dtype=np.uint8)
        pixels[rng.random((48, 48)) < 0.1] = 255  # stars on 10% of the pixels
        skies[f"s{i}"] = Image.fromarray(pixels)
    skies["black"] = Image.new("RGB", (48, 48))
    table = quality_check("dark", meta_of(skies), np.array(list(skies)))
    assert not table["flag"].any() and table["score"].idxmax() == 10  # the darkest, yet not flagged


def test_an_unreadable_image_is_not_applicable(planted):
    meta, ids = planted
    meta = meta.copy()
    meta.loc[0, list(QUALITY_STATS)] = np.nan
    for check in QUALITY_CHECKS:
        row = quality_check(check, meta, ids).iloc[0]
        if check not in ("odd_aspect", "tiny"):  # sizes come from the sample table
            assert np.isnan(row["score"]) and not row["flag"] and row["reason"] is None, check


def test_bad_requests_say_what_to_do(planted):
    meta, ids = planted
    with pytest.raises(QualityCheckError, match="unknown quality check 'shiny'"):
        quality_check("shiny", meta, ids)
    with pytest.raises(QualityCheckError, match="needs the columns sharpness.*mlfix index"):
        quality_check("blurry", meta.drop(columns=["sharpness"]), ids)
    with pytest.raises(QualityCheckError, match="sample_ids has 3 entries"):
        quality_check("dark", meta, ids[:3])
    assert issubclass(QualityCheckError, ValueError)


def test_every_check_names_columns_of_the_meta_resource():
    assert set().union(*QUALITY_CHECKS.values()) <= {"width", "height", *QUALITY_STATS}
    assert set(THRESHOLDS) == set(QUALITY_CHECKS)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30).flatmap(lambda n: st.tuples(
    arrays(np.float64, (n, len(QUALITY_STATS)), elements=st.floats(0, 1) | st.just(np.nan)),
    arrays(np.int64, (n, 2), elements=st.integers(1, 4000)))))
def test_scores_are_in_zero_one_or_nan_and_flags_follow_the_threshold(data):
    stats, sizes = data
    meta = pd.DataFrame(stats, columns=list(QUALITY_STATS)).assign(
        sharpness=stats[:, 4] * 1000, entropy=stats[:, 5] * 8, width=sizes[:, 0], height=sizes[:, 1])
    ids = np.arange(len(meta)).astype(str)
    for check in QUALITY_CHECKS:
        table = quality_check(check, meta, ids)
        score = table["score"].to_numpy()
        assert (np.isnan(score) | ((score >= 0) & (score <= 1))).all(), check
        assert table["flag"].equals(table["score"].fillna(-1) >= THRESHOLDS[check]), check
