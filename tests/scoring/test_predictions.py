"""The user's own model: reading, checking and aligning predicted probabilities and embeddings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlfix.errors import MlfixError, PredictionsError
from mlfix.scoring import predictions as P
from mlfix.scoring.confusion import model_confusion

IDS = np.array([f"c{i % 3}/{i:02d}.png" for i in range(6)], dtype=object)
CLASSES = ["c0", "c1", "c2"]
PROBS = np.array([[.8, .1, .1], [.1, .8, .1], [.1, .1, .8], [.7, .2, .1], [.2, .2, .6], [.3, .3, .4]])


def checked(source, classes=None, required=IDS, logits=False, readable=None):
    frame = P.probabilities_frame(source, IDS, readable=readable, classes=classes, default_classes=CLASSES)
    return P.check_probabilities(frame, IDS, required, CLASSES, logits=logits)


def as_table(probs=PROBS, ids=IDS, columns=CLASSES) -> pd.DataFrame:
    table = pd.DataFrame(probs, columns=columns)
    table.insert(0, "sample_id", ids)
    return table


def test_a_csv_and_an_npy_give_the_same_out_of_fold(tmp_path):
    np.save(tmp_path / "p.npy", PROBS)
    as_table().iloc[::-1].to_csv(tmp_path / "p.csv", index=False)  # any row order: matched by id
    labels = ["c0", "c1", "c2", "c0", "c1", "c2"]
    from_npy = P.align_probabilities(checked(tmp_path / "p.npy"), IDS, labels)
    from_csv = P.align_probabilities(checked(tmp_path / "p.csv"), IDS, labels)
    assert from_npy.classes == from_csv.classes == CLASSES
    np.testing.assert_allclose(from_npy.probs, from_csv.probs)
    np.testing.assert_allclose(from_npy.probs, PROBS)
    assert from_npy.fold.tolist() == [-1] * 6 and from_npy.flags is None
    assert model_confusion(from_npy, labels)["count"].tolist() == [2, 0, 0, 0, 1, 1, 0, 0, 2]


def test_parquet_and_a_subset_of_rows_in_another_order(tmp_path):
    as_table().to_parquet(tmp_path / "p.parquet")
    table = checked(tmp_path / "p.parquet")
    oof = P.align_probabilities(table, IDS[[4, 0, 1, 2]], ["c2", None, "c1", "c0"])
    np.testing.assert_allclose(oof.probs, PROBS[[4, 0, 1, 2]])
    assert oof.predicted().tolist() == ["c2", "c0", "c1", "c2"]


def test_classes_name_the_columns_of_an_array_in_their_order():
    table = checked(PROBS[:, ::-1], classes=["c2", "c1", "c0"])
    oof = P.align_probabilities(table, IDS, CLASSES * 2)
    np.testing.assert_allclose(oof.probs, PROBS)


def test_an_array_of_the_readable_rows_follows_the_readable_samples():
    readable = np.array([True, True, False, True, True, True])
    table = checked(np.delete(PROBS, 2, axis=0), readable=readable, required=IDS[readable])
    assert table["sample_id"].tolist() == IDS[readable].tolist()


@pytest.mark.parametrize("bad, message", [
    (PROBS[:, :2], "have 2 columns but the project's classes (sorted) are 3"),
    (PROBS[:5], "have 5 rows; an array needs 6 (one per sample, in the order of project.samples)"),
    (PROBS[None], "must be a 2-D array (N samples x C classes), got shape (1, 6, 3)"),
])
def test_a_wrong_shape_says_what_is_expected(bad, message):
    with pytest.raises(PredictionsError, match=__import__("re").escape(message)):
        checked(bad)


def test_unknown_ids_are_quoted():
    ids = IDS.copy()
    ids[[1, 3, 4, 5]] = ["x/1.png", "x/2.png", "x/3.png", "x/4.png"]
    with pytest.raises(PredictionsError) as err:
        checked(as_table(ids=ids))
    assert ("probabilities: 4 of 6 sample ids are not in the project, e.g. 'x/1.png', 'x/2.png', 'x/3.png' "
            "and 1 more") in str(err.value)
    assert isinstance(err.value, MlfixError) and isinstance(err.value, ValueError)


def test_samples_without_a_row_are_named():
    with pytest.raises(PredictionsError, match=r"2 of 6 readable samples have no row, e.g. 'c1/04.png', "
                                               r"'c2/05.png'; give one row for every sample"):
        checked(as_table().iloc[:4])


def test_repeated_ids_are_refused():
    with pytest.raises(PredictionsError, match="1 sample ids have more than one row, e.g. 'c0/00.png'"):
        checked(pd.concat([as_table(), as_table().iloc[:1]]))


def test_a_class_of_the_labels_without_a_column():
    with pytest.raises(PredictionsError, match=r"no column for classes 'c2' of the labels; give one column "
                                               r"per class \(3: 'c0', 'c1', 'c2'\)"):
        checked(as_table(PROBS[:, :2] / PROBS[:, :2].sum(1, keepdims=True), columns=["c0", "c1"]))


def test_a_column_that_is_no_class():
    table = as_table(np.c_[PROBS, np.zeros(6)], columns=CLASSES + ["c9"])
    with pytest.raises(PredictionsError, match="columns 'c9' that are no class of the labels"):
        checked(table)
    assert checked(table, classes=CLASSES).columns.tolist() == ["sample_id"] + CLASSES  # picked out


def test_a_table_without_sample_id_or_with_text_columns():
    with pytest.raises(PredictionsError, match="has no 'sample_id' column"):
        checked(as_table().rename(columns={"sample_id": "id"}))
    with pytest.raises(PredictionsError, match=r"must be numbers; 'c1' are not"):
        checked(as_table().assign(c1="high"))
    with pytest.raises(PredictionsError, match="no column for classes 'c7'"):
        checked(as_table(), classes=["c7", "c0"])


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_infinite_values_name_the_rows(value):
    probs = PROBS.copy()
    probs[3, 1] = value
    with pytest.raises(PredictionsError, match=r"NaN or infinite values in 1 rows, e.g. 'c0/03.png'"):
        checked(probs)


def test_negative_values_or_values_above_one_point_to_logits():
    with pytest.raises(PredictionsError, match=r"must lie in \[0, 1\]; 1 rows do not, e.g. 'c1/01.png' "
                                               r"\(min -2, max 3\). Raw scores \(logits\)\? pass logits=True"):
        checked(np.where(np.arange(6)[:, None] == 1, [[-2.0, 3.0, 0.0]], PROBS))


def test_rows_that_do_not_sum_to_one_are_refused_and_nearly_one_renormalised():
    with pytest.raises(PredictionsError, match=r"must sum to 1; 6 rows do not, e.g. 'c0/00.png' sums to 0.5"):
        checked(PROBS / 2)
    table = checked(PROBS * 1.005)
    np.testing.assert_allclose(table[CLASSES].to_numpy().sum(axis=1), 1.0)


def test_logits_are_softmaxed_when_asked():
    logits = np.log(PROBS) + 7.0  # a softmax is shift-invariant
    np.testing.assert_allclose(checked(logits, logits=True)[CLASSES].to_numpy(), PROBS)


def test_unsupported_or_missing_files(tmp_path):
    with pytest.raises(PredictionsError, match=r"is not one of .npy, .npz, .csv"):
        checked(tmp_path / "p.json")
    with pytest.raises(PredictionsError, match="does not exist"):
        checked(tmp_path / "absent.csv")


def test_stored_rows_missing_for_a_new_sample():
    with pytest.raises(PredictionsError, match=r"no row for 1 samples, e.g. 'new.png'.*remove_predictions"):
        P.align_probabilities(checked(PROBS), np.array(["new.png"]), ["c0"])


def test_aligning_to_labels_drops_no_class_and_gives_an_unseen_class_zero():
    oof = P.align_probabilities(checked(PROBS), IDS[:2], ["c0", "c3"])  # c3: a class added in the review
    assert oof.classes == ["c0", "c3"]
    np.testing.assert_allclose(oof.probs, [[1, 0], [1, 0]])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.floats(-30, 30), min_size=3, max_size=3), min_size=6, max_size=6))
def test_softmaxed_rows_are_probabilities(rows):
    probs = checked(np.array(rows), logits=True)[CLASSES].to_numpy()
    assert (probs >= 0).all() and np.allclose(probs.sum(axis=1), 1.0)


# ---- embeddings ---------------------------------------------------------------------------------


def test_embeddings_from_npz_npy_with_ids_and_in_sample_order(tmp_path):
    x = np.arange(18, dtype=np.float32).reshape(6, 3)
    np.savez(tmp_path / "e.npz", embeddings=x[::-1], sample_id=IDS[::-1].astype(str))
    np.save(tmp_path / "e.npy", x[::-1])
    (tmp_path / "ids.txt").write_text("\n".join(IDS[::-1]) + "\n")
    pd.DataFrame({"sample_id": IDS[::-1]}).to_csv(tmp_path / "ids.csv", index=False)
    for source, ids in [(tmp_path / "e.npz", None), (tmp_path / "e.npy", tmp_path / "ids.txt"),
                        (tmp_path / "e.npy", tmp_path / "ids.csv"), (x, None)]:
        found, values = P.check_embeddings(*P.embeddings_rows(source, IDS, ids=ids), IDS, IDS)
        np.testing.assert_array_equal(P.align_embeddings(found, values, IDS[[2, 0]]), x[[2, 0]])


@pytest.mark.parametrize("source, ids, message", [
    (np.zeros((5, 4)), None, "embeddings have 5 rows; an array needs 6"),
    (np.zeros(6), None, "must be a 2-D array (N samples x D dims), got shape (6,)"),
    (np.zeros((6, 4)), IDS[:5], "embeddings have 6 rows but 5 ids are given"),
    (np.zeros((6, 4)), ["zz.png"] + list(IDS[1:]), "1 of 6 sample ids are not in the project, e.g. 'zz.png'"),
    (np.zeros((5, 4)), IDS[:5], "1 of 6 readable samples have no row, e.g. 'c2/05.png'"),
    (np.where(np.eye(6, 4) > 0, np.nan, 0.0), IDS, "NaN or infinite values in 4 rows"),
])
def test_bad_embeddings_say_what_to_fix(source, ids, message):
    with pytest.raises(PredictionsError, match=__import__("re").escape(message)):
        P.check_embeddings(*P.embeddings_rows(source, IDS, ids=ids), IDS, IDS)


def test_an_npz_without_the_named_arrays(tmp_path):
    np.savez(tmp_path / "e.npz", x=np.zeros((6, 2)))
    with pytest.raises(PredictionsError, match="the .npz holds 'x'; it needs arrays named 'embeddings'"):
        P.embeddings_rows(tmp_path / "e.npz", IDS)


def test_an_ids_table_without_sample_id(tmp_path):
    pd.DataFrame({"id": IDS}).to_csv(tmp_path / "ids.csv", index=False)
    with pytest.raises(PredictionsError, match="has no 'sample_id' column \\(columns: 'id'\\); or give a .txt"):
        P.embeddings_rows(np.zeros((6, 2)), IDS, ids=tmp_path / "ids.csv")


def test_the_probes_own_probabilities_saved_and_loaded_back_score_as_the_probe(blobs, tmp_path):
    """The issue's benchmark in small: out-of-fold probabilities written to a CSV and read back as a
    user's model give the probe's loss scores and ranking exactly."""
    from mlfix.scoring.registry import compute_scores

    oof, ids = blobs["oof"], np.asarray(blobs["ids"], dtype=object)
    table = pd.DataFrame(oof.probs, columns=oof.classes)
    table.insert(0, "sample_id", ids)
    table.to_csv(tmp_path / "probe.csv", index=False, float_format="%.17g")
    frame = P.probabilities_frame(tmp_path / "probe.csv", ids)
    loaded = P.align_probabilities(P.check_probabilities(frame, ids, ids, oof.classes), ids, blobs["labels"])
    np.testing.assert_allclose(loaded.probs, oof.probs, rtol=1e-12)
    args = (blobs["x"], blobs["labels"], ids)
    builtin = compute_scores(*args, methods=["loss"], probabilities=oof)
    user = compute_scores(*args, methods=["loss"], probabilities=loaded)
    np.testing.assert_allclose(user["score_loss"], builtin["score_loss"], rtol=1e-9)
    top = int(blobs["is_error"].sum())
    assert blobs["is_error"][np.argsort(-user["score_loss"].to_numpy())[:top]].mean() > 0.8
