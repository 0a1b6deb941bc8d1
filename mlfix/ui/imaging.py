"""Pure PIL helpers for the pages: map a visual-word cell back to image pixels, draw overlays.

No Streamlit here, so these are plain functions to test. The index sees an image as torchvision's
``Resize(S)`` (short side to ``S``) followed by ``CenterCrop(S)``; a feature map of ``h x w`` cells
then tiles that ``S x S`` square. :func:`model_view` rebuilds that square, and :func:`cell_box`
gives cell ``(r, c)``'s pixel box in it.

Example:
    >>> from PIL import Image
    >>> square = model_view(Image.new("RGB", (128, 64)), 64)
    >>> square.size
    (64, 64)
    >>> cell_box(0, 1, grid_shape=(4, 4), size=64)
    (16, 0, 32, 16)
"""

from __future__ import annotations

import colorsys
import numpy as np
from PIL import Image, ImageDraw

from mlfix.data.images import decode_slot  # noqa: F401  (the pages' name for it)

def server_image(project, sample_id: str):
    """``project.image(sample_id)`` in a :func:`decode_slot` (a page's full-size view of one image)."""
    with decode_slot():
        return project.image(sample_id)


def model_view(image: Image.Image, image_size: int) -> Image.Image:
    """The ``image_size`` square the backbone saw: short side resized to it, then center-cropped."""
    if image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    width, height = image.size
    scale = image_size / min(width, height)
    new_w, new_h = max(image_size, round(width * scale)), max(image_size, round(height * scale))
    resized = image.convert("RGB").resize((new_w, new_h), Image.BILINEAR)
    # torchvision's CenterCrop rounds the offset the same way
    left, top = int(round((new_w - image_size) / 2.0)), int(round((new_h - image_size) / 2.0))
    return resized.crop((left, top, left + image_size, top + image_size))


def cell_box(row: int, col: int, grid_shape: tuple[int, int], size: int) -> tuple[int, int, int, int]:
    """Pixel box ``(left, top, right, bottom)`` of cell ``(row, col)`` of an ``h x w`` grid on a square."""
    h, w = grid_shape
    if not (0 <= row < h and 0 <= col < w):
        raise ValueError(f"cell ({row}, {col}) is outside the {h}x{w} grid")
    return (int(round(col * size / w)), int(round(row * size / h)),
            int(round((col + 1) * size / w)), int(round((row + 1) * size / h)))


def cut_cell(square: Image.Image, row: int, col: int, grid_shape: tuple[int, int],
             display: int = 64, context: float = 0.5) -> Image.Image:
    """The region of cell ``(row, col)`` with ``context`` of a cell around it, scaled to ``display``.

    The cell's receptive field is wider than the cell itself, so a little context helps the eye.
    The cell always sits in the middle, outlined in red; context beyond the image edge is grey.
    """
    size = square.size[0]
    left, top, right, bottom = cell_box(row, col, grid_shape, size)
    pad_x, pad_y = int(round((right - left) * context)), int(round((bottom - top) * context))
    window = (left - pad_x, top - pad_y, right + pad_x, bottom + pad_y)
    canvas = Image.new("RGB", (window[2] - window[0], window[3] - window[1]), (128, 128, 128))
    inside = (max(0, window[0]), max(0, window[1]), min(size, window[2]), min(size, window[3]))
    canvas.paste(square.crop(inside), (inside[0] - window[0], inside[1] - window[1]))
    patch = canvas.resize((display, display), Image.NEAREST if canvas.size[0] < display else Image.BILINEAR)
    sx, sy = display / canvas.size[0], display / canvas.size[1]
    draw = ImageDraw.Draw(patch)
    draw.rectangle((pad_x * sx, pad_y * sy, (pad_x + right - left) * sx - 1, (pad_y + bottom - top) * sy - 1),
                   outline=(255, 64, 64), width=max(1, display // 48))
    return patch


def word_colours(words: np.ndarray) -> dict[int, tuple[int, int, int]]:
    """A stable, distinct-ish colour per word id (golden-ratio hues)."""
    colours = {}
    for word in np.unique(words).tolist():
        hue = (int(word) * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
        colours[int(word)] = (int(r * 255), int(g * 255), int(b * 255))
    return colours


def overlay_words(square: Image.Image, grid: np.ndarray, display: int = 448, alpha: float = 0.3,
                  highlight: int | None = None, labels: bool = True) -> Image.Image:
    """``square`` scaled to ``display`` with each cell tinted by its word and the word id written in it.

    ``highlight``: only that word's cells are tinted (the others are dimmed).
    """
    grid = np.asarray(grid)
    if grid.ndim != 2:
        raise ValueError(f"grid must be 2-D (h, w), got shape {grid.shape}")
    h, w = grid.shape
    base = square.convert("RGB").resize((display, display), Image.BILINEAR)
    tint = Image.new("RGB", base.size)
    mask = Image.new("L", base.size, 0)
    draw_tint, draw_mask = ImageDraw.Draw(tint), ImageDraw.Draw(mask)
    colours = word_colours(grid)
    for r in range(h):
        for c in range(w):
            word = int(grid[r, c])
            box = cell_box(r, c, (h, w), display)
            if highlight is not None and word != highlight:
                draw_tint.rectangle(box, fill=(0, 0, 0))
                draw_mask.rectangle(box, fill=int(255 * 0.55))
                continue
            draw_tint.rectangle(box, fill=colours[word])
            draw_mask.rectangle(box, fill=int(255 * alpha))
    out = Image.composite(tint, base, mask)
    draw = ImageDraw.Draw(out)
    for r in range(h):
        for c in range(w):
            box = cell_box(r, c, (h, w), display)
            draw.rectangle(box, outline=(255, 255, 255))
            if labels and (highlight is None or int(grid[r, c]) == highlight) and (box[2] - box[0]) >= 22:
                draw.text((box[0] + 3, box[1] + 2), str(int(grid[r, c])), fill=(255, 255, 255),
                          stroke_width=2, stroke_fill=(0, 0, 0))  # legible on any tint
    return out



def overlay_focus(square: Image.Image, weights: np.ndarray, display: int = 448, floor: float = 0.15) -> Image.Image:
    """``square`` scaled to ``display`` with each cell dimmed by its weight (``weights`` (h, w) >= 0):
    the heaviest cell at full brightness, a zero-weight cell at ``floor`` of it. Shows what an order
    built from weighted cells looks at."""
    weights = np.asarray(weights, dtype=np.float32)
    if weights.ndim != 2 or not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(f"weights must be a 2-D (h, w) grid of finite values >= 0, got shape {weights.shape}")
    top = float(weights.max())
    share = weights / top if top > 0 else np.ones_like(weights)
    # nearest-neighbour upscaling keeps the cells' edges where the word grid draws them
    mask = Image.fromarray(np.uint8(np.round(255 * (floor + (1 - floor) * share)))).resize((display, display),
                                                                                         Image.NEAREST)
    base = np.asarray(square.convert("RGB").resize((display, display), Image.BILINEAR), dtype=np.float32)
    lit = base * (np.asarray(mask, dtype=np.float32)[..., None] / 255)
    return Image.fromarray(np.uint8(np.clip(np.round(lit), 0, 255)))
