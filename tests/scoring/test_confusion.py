"""The confusion table and the samples in one of its cells."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mlfix.scoring import confusion


def test_confusion_counts_and_cell_samples():
    labels = ["cat", "cat", "dog", "dog", None, "bird"]
    predicted = ["cat", "dog", "dog", "cat", "dog", "dog"]
    table = confusion.confusion(labels, predicted)
    assert list(table.columns) == ["given", "predicted", "count"]
    assert len(table) == 9 and table["count"].sum() == 5  # unlabeled left out, every cell listed
    matrix = table.pivot(index="given", columns="predicted", values="count")
    assert matrix.loc["cat", "dog"] == 1 and matrix.loc["bird", "dog"] == 1 and matrix.loc["dog", "dog"] == 1
    ids = list("abcdef")
    assert confusion.confusion_samples(labels, predicted, ids, "dog", "cat") == ["d"]
    assert confusion.confusion_samples(labels, predicted, ids, "cat", "cat") == ["a"]
    assert confusion.confusion_samples(labels, predicted, ids, "bird", "cat") == []


def test_confusion_of_probe_predictions(blobs):
    table = confusion.confusion(blobs["labels"], blobs["oof"].predicted())
    assert table["count"].sum() == len(blobs["ids"])
    diagonal = table[table["given"] == table["predicted"]]["count"].sum()
    assert diagonal >= 0.9 * len(blobs["ids"])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", None]), st.sampled_from(["a", "b", "c"])),
                min_size=1, max_size=20))
def test_confusion_counts_every_labeled_sample_once(pairs):
    labels, predicted = zip(*pairs)
    table = confusion.confusion(labels, predicted)
    assert table["count"].sum() == sum(v is not None for v in labels)
    assert not table.duplicated(["given", "predicted"]).any()
