"""Labels as class indices: a round trip for any labels a user may give (property test)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mlfix.data.labels import encode_labels

LABEL = st.one_of(st.none(), st.text(max_size=4), st.integers(-3, 3))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=4)), max_size=40))
def test_codes_decode_back_to_the_labels_and_classes_are_sorted(labels):
    coded = encode_labels(labels)
    assert coded.decode(coded.codes).tolist() == labels
    assert coded.classes == sorted({label for label in labels if label is not None})
    assert ((coded.codes >= -1) & (coded.codes < len(coded.classes))).all()


@settings(max_examples=200, deadline=None)
@given(st.lists(LABEL, max_size=40))
def test_mixed_types_get_one_code_per_distinct_value(labels):
    coded = encode_labels(labels)
    decoded = coded.decode(coded.codes)
    assert all((a is None and b is None) or a == b for a, b in zip(decoded, labels))
    assert len(coded.classes) == len(set(coded.classes)) and (coded.codes[np.array([v is None for v in labels],
                                                                                   dtype=bool)] == -1).all()
