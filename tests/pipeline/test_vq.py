"""The learned (VQ-VAE) codebook: same contract as the KMeans codebook, deterministic, words that
follow the data's clusters."""

from __future__ import annotations

import numpy as np
import pytest

from mlfix.pipeline.vq import VQCodebook


def clustered(n: int = 3000, centres: int = 8, channels: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centres, channels)).astype(np.float32) * 6
    truth = rng.integers(0, centres, n)
    return (means[truth] + rng.normal(size=(n, channels))).astype(np.float32), truth


def small(**kwargs) -> VQCodebook:
    return VQCodebook(**{"k": 16, "dim": 8, "steps": 120, "batch": 256, "seed": 0, **kwargs})


def test_words_follow_the_clusters_of_the_cells():
    cells, truth = clustered()
    words = small().fit(cells).assign(cells)
    # each word stands for one cluster: the share of cells in their word's majority cluster
    pure = sum(np.bincount(truth[words == w]).max() for w in np.unique(words))
    assert pure / len(cells) > 0.98


def test_same_cells_and_seed_give_the_same_codebook_and_another_seed_another():
    cells, _ = clustered()
    a, b, c = small().fit(cells), small().fit(cells), small(seed=1).fit(cells)
    assert np.array_equal(a.codes_, b.codes_) and np.array_equal(a.assign(cells), b.assign(cells))
    assert not np.array_equal(a.codes_, c.codes_)


def test_assign_keeps_the_grid_shape_and_gives_uint16_words_below_k():
    cells, _ = clustered()
    vq = small().fit(cells)
    words = vq.assign(cells[:24].reshape(2, 3, 4, 16))
    assert words.shape == (2, 3, 4) and words.dtype == np.uint16 and int(words.max()) < 16
    assert vq.centroids_.shape == (16, 16) and vq.fit_info_["codebook"] == "vq"
    assert vq.fit_info_["cells_used"] == len(cells) and 1 <= vq.fit_info_["words_used"] <= 16


def test_a_saved_state_assigns_the_same_words():
    cells, _ = clustered()
    vq = small().fit(cells)
    again = VQCodebook.from_state({name: value.copy() for name, value in vq.state().items()})
    assert np.array_equal(again.assign(cells), vq.assign(cells))


def test_an_unused_code_is_restarted_at_an_encoding_of_the_batch():
    import torch

    from mlfix.pipeline.vq import ema_step

    z = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    codes = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-50.0, -50.0]])  # the third is far from everything
    nearest = torch.tensor([0, 0, 1, 1])
    count, total = torch.tensor([2.0, 2.0, 0.0]), codes.clone()
    dead = ema_step(codes, count, total, z, nearest, 0.9, torch.Generator().manual_seed(0))  # in place
    assert dead == 1 and any(torch.equal(codes[2], row) for row in z)  # now on the data
    assert torch.allclose(codes[0], torch.tensor([0.0, 0.0]), atol=0.02)  # the used ones moved towards theirs


@pytest.mark.parametrize("kwargs, message", [({"k": 12}, "multiple of 8"), ({"steps": 0}, "steps and batch"),
                                             ({"decay": 1.0}, "decay"), ({"dim": 0}, "dim")])
def test_bad_settings_are_refused_with_what_to_do(kwargs, message):
    with pytest.raises(ValueError, match=message):
        small(**kwargs)


def test_too_few_cells_and_an_unfitted_codebook_say_so():
    with pytest.raises(ValueError, match="cannot make 16 visual words"):
        small().fit(np.zeros((10, 4), np.float32))
    with pytest.raises(RuntimeError, match="not fitted"):
        small().assign(np.zeros((2, 4), np.float32))


def test_codes_in_use_are_not_restarted_when_a_batch_is_many_times_k():
    """The EMA counts start at a code's fair share of a batch (640 / 16 = 40 here). Starting at 1.0 put
    every code under the dead threshold (0.03 x 40 = 1.2) and restarted all 16 on every step."""
    cells = np.random.default_rng(0).normal(size=(640, 8)).astype(np.float32)
    vq = VQCodebook(k=16, dim=8, steps=30, batch=640, seed=0).fit(cells)
    assert vq.fit_info_["restarts"] < 16 and vq.fit_info_["words_used"] == 16
