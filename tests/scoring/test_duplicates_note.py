"""The duplicates check's note says its ordinals in English (a set of 22 images: the 21st neighbour)."""

import numpy as np

from mlfix.scoring.duplicates import near_copies_unavailable
from mlfix.scoring.neighbours import Neighbours


def test_the_note_on_a_small_set_names_the_21st_neighbour():
    alike = Neighbours(np.zeros((22, 21), np.int64), np.full((22, 21), 0.99, np.float32))
    note = near_copies_unavailable(alike)
    assert "the typical image's 21st closest neighbour is already at cosine 0.990" in note
    assert "21th" not in note
