"""Duplicates and leaks between splits: exact and near copies, the chain guard, label conflicts."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

import pytest

from mlfix.scoring.duplicates import (MUTUAL_NEIGHBOURS, NEAR_DUPLICATE_COSINE, duplicate_groups,
                                      duplicates_check, leak_check)
from mlfix.scoring.neighbours import embedding_neighbours


def on_circle(angles, dims: int = 8) -> np.ndarray:
    """Unit vectors at ``angles`` (radians) in the plane of the first two axes: cosine = cos(angle gap)."""
    x = np.zeros((len(angles), dims))
    x[:, 0], x[:, 1] = np.cos(angles), np.sin(angles)
    return x


def gap(cosine: float) -> float:
    return float(np.arccos(cosine))


def apart(n: int, dims: int = 16) -> np.ndarray:
    """``n`` mutually orthogonal unit vectors on the axes from 2 on: no copies among them."""
    return np.eye(n, dims, k=2)


def test_exact_copies_group_even_when_their_vectors_differ():
    x = np.vstack([apart(4), on_circle([0.0, 1.0], dims=16)])
    content_hash = np.array([11, 0, 0, 0, 11, 0])  # rows 0 and 4: same pixels, unlike vectors
    table = duplicates_check(x, None, [f"s{i}" for i in range(6)], content_hash=content_hash)
    assert table["group"].tolist() == [0, -1, -1, -1, 0, -1]
    assert table["score"].tolist() == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert table["flag"].tolist() == [True, False, False, False, True, False]
    assert table["reason"][0] == "exact copy of s4" and table["reason"][4] == "exact copy of s0"
    assert table["reason"][1] is None and not table["conflict"].any()


def test_near_copies_group_at_the_threshold_and_not_below():
    above, below = gap(NEAR_DUPLICATE_COSINE + 0.01), gap(NEAR_DUPLICATE_COSINE - 0.01)
    x = np.vstack([on_circle([0.0, above]), on_circle([2.0, 2.0 + below]), apart(3)[:, :8]])
    groups = duplicate_groups(x)
    assert groups.tolist() == [0, 0, -1, -1, -1, -1, -1]
    table = duplicates_check(x, None, list("abcdefg"))
    assert abs(table["score"][0] - np.cos(above)) < 1e-6 and table["score"][2] == 0.0
    assert table["reason"][0] == f"near copy of b (cosine {np.cos(above):.3f})"
    assert duplicate_groups(x, threshold=NEAR_DUPLICATE_COSINE - 0.02).tolist()[:4] == [0, 0, 1, 1]


def test_two_tight_groups_bridged_by_weaker_copies_stay_two_groups():
    """The chain guard: each end of a bridging edge has MUTUAL_NEIGHBOURS closer copies in its own
    group, so the bridge is not mutual and the groups do not merge (plain components would)."""
    size = MUTUAL_NEIGHBOURS + 1
    step = gap(0.9995) / size
    bridge = gap(NEAR_DUPLICATE_COSINE + 0.01)  # the last of A and the first of B: a copy by cosine
    a = np.arange(size) * step
    x = on_circle(np.concatenate([a, a[-1] + bridge + np.arange(size) * step]))
    groups = duplicate_groups(x)
    assert groups.tolist() == [0] * size + [1] * size
    plain = np.cos(bridge) >= NEAR_DUPLICATE_COSINE  # the bridge itself is above the threshold
    assert plain


def test_a_chain_of_mutual_copies_stays_one_group():
    """What the guard keeps: frames of one sign, each the closest copy of the next, are one group even
    though the first and last are far apart."""
    angles = np.arange(12) * gap(NEAR_DUPLICATE_COSINE + 0.005)
    x = np.vstack([on_circle(angles), apart(2)[:, :8]])
    assert duplicate_groups(x).tolist() == [0] * 12 + [-1, -1]
    assert np.cos(angles[-1]) < 0.5  # ends far apart


def test_groups_are_numbered_by_size_largest_first():
    x = np.vstack([on_circle([0.0, 0.01, 2.0, 2.01, 2.02]), apart(2)[:, :8]])
    assert duplicate_groups(x).tolist() == [1, 1, 0, 0, 0, -1, -1]


def conflict_case():
    """Three exact copies labeled cat, cat, dog; an unlabeled copy; two apart labeled cat and dog."""
    x = np.vstack([apart(4), apart(2, 16)[:, ::-1]])
    content_hash = np.array([5, 5, 5, 5, 0, 0])
    labels = ["cat", "cat", "dog", None, "cat", "dog"]
    return x, content_hash, labels, [f"{name}/{i}.png" for i, name in enumerate(["cat", "cat", "dog", "x", "cat", "dog"])]


def test_copies_under_different_labels_conflict_and_suggest_the_majority():
    x, content_hash, labels, ids = conflict_case()
    table = duplicates_check(x, labels, ids, content_hash=content_hash)
    assert table["group"].tolist() == [0, 0, 0, 0, -1, -1]
    assert table["conflict"].tolist() == [True, True, True, False, False, False]  # unlabeled: no label to doubt
    assert table["suggested_label"].tolist() == ["cat", "cat", "cat", "cat", None, None]
    assert table["reason"][2] == "exact copy of cat/0.png; copies carry labels cat, dog"
    assert table["reason"][0] == "exact copy of cat/1.png; copies carry labels cat, dog"


def test_a_trusted_copy_decides_the_group_label():
    x, content_hash, labels, ids = conflict_case()
    trusted = np.array([False, False, True, False, False, False])  # a reviewer confirmed "dog"
    table = duplicates_check(x, labels, ids, content_hash=content_hash, trusted=trusted)
    assert table["flag"].tolist()[:4] == [True] * 4  # still a copy
    assert table["conflict"].tolist() == [True, True, False, False, False, False]
    assert table["suggested_label"].tolist()[:4] == ["dog"] * 4


def test_one_label_in_a_group_is_no_conflict():
    x, content_hash, _, ids = conflict_case()
    table = duplicates_check(x, ["cat", "cat", "cat", None, "cat", "dog"], ids, content_hash=content_hash)
    assert not table["conflict"].any() and table["suggested_label"].isna().all()
    assert table["reason"][0] == "exact copy of cat/1.png"


def test_the_reason_says_when_the_copy_is_in_another_split():
    x, content_hash, labels, ids = conflict_case()
    splits = pd.Series(["train", "test", "train", pd.NA, "train", "test"], dtype="string")
    table = duplicates_check(x, None, ids, content_hash=content_hash, splits=splits)
    assert table["reason"][0] == "exact copy of cat/1.png in split test"
    assert table["reason"][1] == "exact copy of cat/0.png in split train"


def test_leaks_are_groups_across_splits():
    groups = np.array([0, 0, 0, 1, 1, -1, -1])
    splits = pd.Series(["train", "train", "test", "train", "train", "test", pd.NA], dtype="string")
    ids = ["train/1.png", "train/2.png", "test/3.png", "a", "b", "c", "d"]
    table = leak_check(groups, splits, ids)
    assert table["score"].tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert table["flag"].tolist() == [True, True, True, False, False, False, False]
    assert table["reason"].tolist()[:4] == ["copy in split test of test/3.png"] * 2 + \
        ["copy in split train of train/1.png", None]
    assert table["group"].tolist() == groups.tolist() and table["suggested_label"].isna().all()


def test_a_member_without_split_in_a_leaking_group_names_a_copy():
    table = leak_check(np.array([0, 0, 0]), pd.Series(["val", pd.NA, "train"], dtype="string"), list("abc"))
    assert table["score"].tolist() == [1.0, 1.0, 1.0]
    assert table["reason"].tolist() == ["copy in split train of c", "copy in split train of c",
                                        "copy in split val of a"]


def test_no_splits_no_leaks():
    for splits in (None, pd.Series([pd.NA] * 3, dtype="string")):
        table = leak_check(np.array([0, 0, -1]), splits, list("abc"))
        assert table["score"].tolist() == [0.0, 0.0, 0.0] and not table["flag"].any()
        assert table["reason"].isna().all()


def test_precomputed_neighbours_of_another_set_are_refused():
    with pytest.raises(ValueError, match="recompute them"):
        duplicate_groups(apart(4), neighbours=embedding_neighbours(apart(3)))


def planted_copies(seed: int, n: int, copies: int) -> tuple[np.ndarray, np.ndarray]:
    """Random vectors, some near copies (small noise) and some exact copies (same hash)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    source = rng.integers(0, n, copies)
    target = rng.integers(0, n, copies)
    x[target] = x[source] + rng.normal(0, 0.05, (copies, 6))
    content_hash = np.zeros(n, np.int64)
    exact = rng.random(copies) < 0.5
    content_hash[target[exact]] = content_hash[source[exact]] = source[exact] + 1
    return x, content_hash


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**16), st.integers(3, 40), st.integers(0, 15))
def test_groups_are_a_partition_and_follow_a_permutation(seed, n, copies):
    x, content_hash = planted_copies(seed, n, copies)
    groups = duplicate_groups(x, content_hash, threshold=0.97)
    sizes = np.bincount(groups[groups >= 0]) if (groups >= 0).any() else np.zeros(0, np.int64)
    assert (groups >= -1).all() and (sizes >= 2).all()  # every id used; no group of one
    assert (np.diff(sizes) <= 0).all()  # numbered by size, largest first
    together = co_members(groups)
    same_pixels = (content_hash[:, None] == content_hash[None, :]) & (content_hash[:, None] != 0)
    assert together[same_pixels & ~np.eye(n, dtype=bool)].all()  # exact copies always group
    order = np.random.default_rng(seed + 1).permutation(n)
    moved = duplicate_groups(x[order], content_hash[order], threshold=0.97)
    assert np.array_equal(co_members(moved), together[np.ix_(order, order)])
    assert np.array_equal(np.sort(np.bincount(moved[moved >= 0], minlength=len(sizes))), np.sort(sizes))


def co_members(groups: np.ndarray) -> np.ndarray:
    """(N, N) bool: i and j are in one group (a sample in none is with no one, itself included)."""
    return (groups[:, None] == groups[None, :]) & (groups[:, None] >= 0)


def gtsrb_tracks(tracks_per_class: int = 2, classes: int = 3, size: int = 64):
    """Pooled vectors of a few whole GTSRB tracks (frames of one physical sign: true near copies)."""
    import io
    import zipfile

    import torch
    from PIL import Image

    from mlfix.pipeline.backbone import create_backbone, image_transform
    from tests.conftest import shared_data

    folder = shared_data("gtsrb35")
    table = pd.read_csv(folder / "labels.csv")
    chosen = sorted(table["label"].unique())[:classes]
    tracks = table[table["label"].isin(chosen)].groupby("label")["track_id"].unique()
    keep = np.concatenate([t[:tracks_per_class] for t in tracks])
    rows = table[table["track_id"].isin(keep)].reset_index(drop=True)
    transform, model = image_transform(size), create_backbone("efficientnet_lite0", "offline").eval()
    with zipfile.ZipFile(folder / "images.zip") as z, torch.inference_mode():
        images = torch.stack([transform(Image.open(io.BytesIO(z.read(p))).convert("RGB")) for p in rows["path"]])
        pooled = model(images)[1].numpy()
    return pooled, rows


@pytest.mark.shared_data
def test_frames_of_one_sign_are_found_as_copies_of_each_other():
    pooled, rows = gtsrb_tracks()
    table = duplicates_check(pooled, rows["label"], rows["path"])
    grouped = table["flag"].to_numpy()
    named = rows.set_index("path").loc[table["reason"][grouped].str.extract(r"copy of (\S+)")[0], "track_id"]
    assert grouped.mean() > 0.2  # a good share of the frames have a close copy
    assert (named.to_numpy() == rows["track_id"].to_numpy()[grouped]).mean() > 0.95  # the copy named is a frame of the same sign
    assert not table["conflict"].any()  # no group mixes two signs' classes


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(-1, 3), st.sampled_from(["train", "test", "val", None])),
                min_size=1, max_size=25))
def test_a_leak_is_a_group_with_two_splits_and_names_a_copy_in_another(rows):
    groups = np.array([g for g, _ in rows])
    splits = pd.Series([pd.NA if s is None else s for _, s in rows], dtype="string")
    ids = [f"s{i}" for i in range(len(rows))]
    table = leak_check(groups, splits, ids)
    for i, (g, s) in enumerate(rows):
        others = {t for h, t in rows if h == g and t is not None}
        assert table["flag"][i] == (g >= 0 and len(others) >= 2) == (table["score"][i] == 1.0)
        if table["flag"][i]:
            copy = int(table["reason"][i].rsplit(" of s", 1)[1])
            assert groups[copy] == g and rows[copy][1] not in (None, s)
            assert table["reason"][i].startswith(f"copy in split {rows[copy][1]} of ")
        else:
            assert table["reason"][i] is None


def test_features_that_cannot_tell_images_apart_search_exact_copies_only_and_say_so():
    # a random-init backbone: every vector close to one direction, the typical 50th neighbour at
    # cosine ~0.99, so a cosine above the threshold says nothing about copies
    rng = np.random.default_rng(0)
    x = 1.0 + 0.01 * rng.normal(size=(80, 16))
    digest = np.zeros(80, np.int64)
    digest[[3, 40]] = 99  # one exact copy
    table = duplicates_check(x, None, [f"s{i}" for i in range(80)], content_hash=digest)
    assert table["flag"].sum() == 2 and set(np.flatnonzero(table["flag"])) == {3, 40}
    assert table.attrs["note"].startswith("near copies not searched")
    spread = rng.normal(size=(80, 16))  # features that do tell images apart: no note
    assert duplicates_check(spread, None, [f"s{i}" for i in range(80)]).attrs["note"] is None


def test_in_a_set_of_look_alikes_only_pairs_much_closer_than_the_typical_neighbour_are_copies():
    # every image near one direction (closest neighbour at cosine ~0.92, typical 50th ~0.88): a pair
    # above the default bar is a look-alike, not a copy; the one pair at cosine ~0.9999 is
    rng = np.random.default_rng(1)
    base = rng.normal(size=64)
    x = base + 0.045 * np.linalg.norm(base) * rng.normal(size=(120, 64))
    x[7] = x[90] + 1e-3 * rng.normal(size=64)
    from mlfix.scoring.duplicates import near_threshold
    from mlfix.scoring.neighbours import embedding_neighbours

    nb = embedding_neighbours(x.astype(np.float32), 50)
    assert np.median(nb.similarity[:, 0]) > NEAR_DUPLICATE_COSINE  # at the default bar: most would group
    assert near_threshold(nb) > np.median(nb.similarity[:, 0])
    table = duplicates_check(x, None, [f"s{i}" for i in range(120)], neighbours=nb)
    assert set(np.flatnonzero(table["flag"])) == {7, 90}
    assert table.attrs["note"].startswith("near copies need cosine >=")
