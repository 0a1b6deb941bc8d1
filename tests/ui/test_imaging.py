"""Mapping visual-word cells back to pixels, and the overlays the Codebook page draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image

from mlfix.pipeline.backbone import image_transform
from mlfix.ui import imaging


def gradient(width: int, height: int) -> Image.Image:
    """Every pixel different: x in red, y in green."""
    xx, yy = np.meshgrid(np.linspace(0, 255, width), np.linspace(0, 255, height))
    return Image.fromarray(np.stack([xx, yy, np.full_like(xx, 128)], -1).astype(np.uint8), "RGB")


@pytest.mark.parametrize("size", [(64, 64), (200, 100), (90, 300), (31, 47)])
def test_model_view_matches_what_the_backbone_sees(size):
    image = gradient(*size)
    ours = np.asarray(imaging.model_view(image, 64), dtype=np.float32) / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    theirs = (image_transform(64)(image) * std[:, None, None] + mean[:, None, None]).permute(1, 2, 0).numpy()
    # same crop (a shifted crop would differ by several levels on a gradient); resampling differs slightly
    assert np.abs(ours - theirs).mean() < 0.02


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 16), st.integers(1, 16), st.integers(16, 300))
def test_cells_tile_the_square_exactly(h, w, size):
    covered = np.zeros((size, size), dtype=int)
    for r in range(h):
        for c in range(w):
            left, top, right, bottom = imaging.cell_box(r, c, (h, w), size)
            covered[top:bottom, left:right] += 1
    assert (covered == 1).all()  # every pixel in exactly one cell


def test_a_cell_outside_the_grid_is_refused():
    with pytest.raises(ValueError, match="outside the 4x4 grid"):
        imaging.cell_box(4, 0, (4, 4), 64)


@pytest.mark.parametrize("row, col", [(0, 0), (1, 2), (3, 3)])
def test_cut_cell_puts_the_cell_in_the_middle(row, col):
    square = gradient(64, 64)
    patch = np.asarray(imaging.cut_cell(square, row, col, (4, 4), display=64))
    left, top, right, bottom = imaging.cell_box(row, col, (4, 4), 64)
    centre = np.asarray(square)[(top + bottom) // 2, (left + right) // 2]
    assert np.abs(patch[32, 32].astype(int) - centre.astype(int)).max() <= 12
    assert tuple(patch[16, 20]) == (255, 64, 64) or tuple(patch[20, 16]) == (255, 64, 64)  # outline


def test_overlay_keeps_the_size_and_tints_only_the_highlighted_word():
    square = Image.new("RGB", (64, 64), (255, 255, 255))
    grid = np.array([[1, 2], [2, 2]], dtype=np.uint16)
    out = np.asarray(imaging.overlay_words(square, grid, display=128, highlight=1, labels=False))
    assert out.shape == (128, 128, 3)
    word_1, other = out[30, 30], out[100, 100]
    assert word_1.tolist() != [255, 255, 255] and word_1.sum() > other.sum()  # tinted vs dimmed
    with pytest.raises(ValueError, match="2-D"):
        imaging.overlay_words(square, grid.ravel())


def test_focus_overlay_lights_heavy_cells_and_dims_light_ones():
    square = Image.new("RGB", (40, 40), (200, 200, 200))
    weights = np.array([[0.0, 1.0], [2.0, 4.0]], dtype=np.float32)
    out = np.asarray(imaging.overlay_focus(square, weights, display=40, floor=0.1), dtype=float)
    means = [out[r * 20 + 5:r * 20 + 15, c * 20 + 5:c * 20 + 15].mean() for r in range(2) for c in range(2)]
    assert means == sorted(means)  # brighter with weight
    assert abs(means[-1] - 200) <= 1 and abs(means[0] - 20) <= 1  # the heaviest at full, zero at the floor


@pytest.mark.parametrize("weights", [np.zeros((2, 2)), np.ones(4)[None]])
def test_focus_overlay_of_uniform_weights_keeps_the_image(weights):
    square = gradient(32, 32)
    out = imaging.overlay_focus(square, weights, display=32)
    assert np.array_equal(np.asarray(out), np.asarray(square.resize((32, 32), Image.BILINEAR)))


@pytest.mark.parametrize("weights", [np.ones(4), np.array([[1.0, -1.0]]), np.array([[np.nan, 1.0]])])
def test_focus_overlay_refuses_weights_that_are_not_a_grid_of_non_negative_numbers(weights):
    with pytest.raises(ValueError, match="weights must be"):
        imaging.overlay_focus(Image.new("RGB", (8, 8)), weights)
