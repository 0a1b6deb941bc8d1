"""Large embeddings pass the contract's check without a float32 copy (10M x 1280 would be 51 GB)."""

from __future__ import annotations

import numpy as np
import pytest

from mlfix.scoring import contract, probe


@pytest.fixture
def small_large(monkeypatch):
    monkeypatch.setattr(contract, "LARGE_ROWS", 100)
    monkeypatch.setattr(contract, "CHECK_CHUNK", 16)


def test_a_large_float16_memmap_is_checked_and_passed_on_as_it_is(small_large, tmp_path):
    x = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float16, shape=(120, 4))
    x[:] = 1
    checked = contract.check_embeddings(x)
    assert checked is x and checked.dtype == np.float16


def test_a_non_finite_value_in_a_later_chunk_of_large_embeddings_is_found(small_large):
    x = np.ones((120, 4), np.float16)
    x[117, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        contract.check_embeddings(x)


def test_small_embeddings_are_still_float32_copies_when_they_must_be(small_large):
    x = np.ones((50, 4), np.float16)
    assert contract.check_embeddings(x).dtype == np.float32
    ints = np.ones((150, 4), np.int64)  # large but not floating: converted as before
    assert contract.check_embeddings(ints).dtype == np.float32


def test_every_large_input_reaches_the_probe_on_its_minibatch_path():
    # the probe's full fit would make the float32 copy the contract now leaves out
    assert probe.MINIBATCH_MIN <= contract.LARGE_ROWS


def test_convert_says_it_whatever_the_size(small_large):
    large = np.ones((150, 4), np.float16)
    assert contract.check_embeddings(large, convert=True).dtype == np.float32  # the probe's full fit
    small = np.ones((20, 4), np.float16)
    assert contract.check_embeddings(small, convert=False) is small  # the minibatch probe, forced on a small set
