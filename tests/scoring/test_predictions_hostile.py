"""Hostile or awkward files given as the user's predictions or embeddings: each a PredictionsError that
says what to fix, never a raw ValueError, and never more read than what is used."""

import numpy as np
import pandas as pd
import pytest

from mlfix.errors import PredictionsError
from mlfix.scoring import predictions as P

IDS = np.array(["a", "b", "c"], dtype=object)


def test_a_class_named_like_the_id_column_is_a_clear_error():
    with pytest.raises(PredictionsError, match="a class is named 'sample_id'.*rename that class"):
        P.probabilities_frame(np.eye(3)[:, :2], IDS, default_classes=["sample_id", "x"])


def test_pickled_ids_in_an_npz_say_to_save_them_as_text(tmp_path):
    path = tmp_path / "emb.npz"
    np.savez(path, embeddings=np.ones((3, 2)), sample_id=pd.Series(["a", "b", "c"]).to_numpy())  # object dtype
    with pytest.raises(PredictionsError, match=r"cannot read embeddings file .*pickled.*dtype=str"):
        P.embeddings_rows(path, IDS)


def test_damaged_files_are_predictions_errors(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    (tmp_path / "bad.csv").write_bytes(b"\xff\xfe\x00bad")
    (tmp_path / "empty.csv").write_text("")
    for name in ("bad.npy", "bad.csv", "empty.csv"):
        with pytest.raises(PredictionsError, match=f"cannot read predictions file .*{name}"):
            P.read_source(tmp_path / name)


def test_an_npz_decompresses_only_the_arrays_it_uses(tmp_path):
    path = tmp_path / "emb.npz"
    np.savez_compressed(path, embeddings=np.ones((3, 2)), sample_id=np.array(["a", "b", "c"]),
                        extra=np.array([{"x": 1}], dtype=object))  # would need pickle to load
    data = P.read_source(path, "embeddings")
    assert sorted(data) == ["embeddings", "extra", "sample_id"] and data["extra"] is None
    ids, x = P.embeddings_rows(path, IDS)
    assert ids.tolist() == ["a", "b", "c"] and x.shape == (3, 2)


def test_ids_from_an_npy_of_strings_and_a_binary_ids_file(tmp_path):
    np.save(tmp_path / "ids.npy", np.array(["c", "a", "b"]))
    assert P.read_ids(tmp_path / "ids.npy").tolist() == ["c", "a", "b"]
    (tmp_path / "ids.txt").write_bytes(b"\x93NUMPY\xff")
    with pytest.raises(PredictionsError, match="not UTF-8 text"):
        P.read_ids(tmp_path / "ids.txt")


def test_complex_embeddings_are_refused():
    with pytest.raises(PredictionsError, match="real numbers"):
        P.check_embeddings(IDS, np.ones((3, 2), complex), IDS, IDS)
