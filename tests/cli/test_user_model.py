"""The user's own model end to end: predictions and embeddings added to a project (Python and CLI)
replace the probe and the pooled vectors in the scores, and the confusion heatmap says so."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from mlfix.cli import main
from mlfix.errors import PredictionsError
from mlfix.project import Project
from tests.conftest import FAST_SETTINGS, write_image_folder

SETTINGS = {**FAST_SETTINGS, "words": 16}
FLIPS = [3, 17, 26]  # rows whose given label the user's model contradicts (planted label errors)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """40 images in 4 colour classes, indexed (random weights: the probe knows little)."""
    folder = tmp_path_factory.mktemp("user_model")
    images = write_image_folder(folder / "images")
    return Project.create(folder / "project", images=images, **SETTINGS).index()


@pytest.fixture
def project(indexed, tmp_path):
    """A private copy (the tests add predictions and scores)."""
    return Project.open(shutil.copytree(indexed.dir, tmp_path / "project"))


def user_model(project, confident: float = 0.97) -> tuple[pd.DataFrame, list[str]]:
    """Probabilities of a model that agrees with the given labels except on :data:`FLIPS`, where it
    predicts the next class (sample_id + one column per class), and the flipped ids."""
    classes = project.labels
    codes = pd.Index(classes).get_indexer(project.samples["label"])
    codes[FLIPS] = (codes[FLIPS] + 1) % len(classes)
    probs = np.full((len(codes), len(classes)), (1 - confident) / (len(classes) - 1))
    probs[np.arange(len(codes)), codes] = confident
    table = pd.DataFrame(probs, columns=classes)
    table.insert(0, "sample_id", project.samples["sample_id"].to_numpy())
    return table, project.samples["sample_id"].to_numpy()[FLIPS].tolist()


def test_the_users_predictions_rank_the_flips_first_in_loss_and_cleanlab(project):
    table, flips = user_model(project)
    assert project.predictions_stamp() is None and project.scores_use_predictions() is None
    stored = project.add_predictions(table.sample(frac=1.0, random_state=0))  # rows in any order
    assert stored.shape == (40, 5) and (project.dir / "predictions" / "user.parquet").is_file()
    assert project.predictions_info()["classes"] == project.labels
    scores = project.scores()
    for check in ("loss", "cleanlab"):
        top = scores.sort_values(f"score_{check}", ascending=False, kind="stable")["sample_id"].head(3)
        assert sorted(top) == sorted(flips), check
    by_id = scores.set_index("sample_id")
    assert by_id.loc[flips, "flag_cleanlab"].all() and by_id["flag_cleanlab"].sum() == 3
    expected = table.set_index("sample_id").loc[flips].idxmax(axis=1).tolist()
    assert by_id.loc[flips, "suggested_cleanlab"].tolist() == expected  # the user's model's argmax
    assert project.scores_use_predictions() is True


def test_the_confusion_heatmap_shows_the_users_model(project):
    from mlfix.scoring.confusion import confusion, model_confusion
    from mlfix.ui.confusion_section import predicted_by

    table, _ = user_model(project)
    project.scores()
    assert "linear probe" in predicted_by(project, project.cached_scores())
    project.add_predictions(table)
    assert "added since these scores" in predicted_by(project, project.cached_scores())
    scores = project.scores()
    assert predicted_by(project, scores).startswith("the prediction of your own model (the probabilities "
                                                    "added as 'user' on ")
    rows = np.flatnonzero(project.readable())
    labels = project.samples["label"].to_numpy(dtype=object)
    heatmap = confusion(scores["label"], scores["suggested_cleanlab"])
    pd.testing.assert_frame_equal(heatmap, model_confusion(project.user_probabilities(rows, labels), labels[rows]))
    assert int(heatmap.loc[heatmap["given"] != heatmap["predicted"], "count"].sum()) == len(FLIPS)


def test_the_stamp_follows_adding_and_removing_and_the_probe_comes_back(project):
    probe_scores = project.scores().set_index("sample_id")["score_loss"]
    table, _ = user_model(project)
    project.add_predictions(table)
    first = project.predictions_stamp()
    project.add_predictions(table)
    assert project.predictions_stamp() == first  # the same content: the cached scores stay valid
    project.add_predictions(user_model(project, confident=0.9)[0])
    assert project.predictions_stamp() not in (None, first)
    assert not np.allclose(project.scores().set_index("sample_id")["score_loss"].loc[probe_scores.index],
                           probe_scores)
    project.remove_predictions()
    assert project.predictions_stamp() is None and project.user_probabilities(np.arange(3), ["a"] * 3) is None
    again = project.scores().set_index("sample_id")["score_loss"].loc[probe_scores.index]
    np.testing.assert_allclose(again, probe_scores)


def test_bad_predictions_are_refused_and_nothing_is_stored(project):
    table, _ = user_model(project)
    with pytest.raises(PredictionsError, match=r"no column for classes 'yellow' of the labels"):
        project.add_predictions(table.drop(columns=["yellow"]))
    with pytest.raises(PredictionsError, match=r"1 of 40 readable samples have no row"):
        project.add_predictions(table.iloc[1:])
    bad = table.copy()
    bad.loc[5, "red"] = np.nan
    with pytest.raises(PredictionsError, match=r"NaN or infinite values in 1 rows"):
        project.add_predictions(bad)
    with pytest.raises(PredictionsError, match="name must be letters"):
        project.add_predictions(table, name="../evil")
    assert project.predictions_stamp() is None and not (project.dir / "predictions").exists()


def test_mlfix_scores_pred_probs_through_the_cli(project, tmp_path, capsys):
    table, flips = user_model(project)
    classes = project.labels[::-1]
    np.save(tmp_path / "probs.npy", table[classes].to_numpy())  # rows in sample order, named columns
    argv = ["scores", "--project", str(project.dir), "--pred-probs", str(tmp_path / "probs.npy")]
    # columns taken as the sorted classes: valid probabilities, but the trust check sees a model that
    # disagrees with nearly every label and warns
    assert main(argv) == 0 and "mlfix scores: warning:" in (err := capsys.readouterr().err)
    assert "your model agrees with" in err and "the probe" not in err
    assert main(argv + ["--classes", ",".join(classes)]) == 0
    out, err = capsys.readouterr()
    assert "warning" not in err
    assert "predictions of 40 samples in 4 classes added" in out
    assert "the scores use them instead of the probe" in out
    scores = pd.read_parquet(project.dir / "scores.parquet")
    assert sorted(scores.sort_values("score_loss", ascending=False)["sample_id"].head(3)) == sorted(flips)
    np.save(tmp_path / "short.npy", table[classes].to_numpy()[:39])
    assert main(["scores", "--project", str(project.dir), "--pred-probs", str(tmp_path / "short.npy")]) == 2
    assert "have 39 rows; an array needs 40" in capsys.readouterr().err
    assert main(["scores", "--project", str(project.dir), "--no-pred-probs"]) == 0
    assert "the scores use mlfix's probe again" in capsys.readouterr().out
    assert project.predictions_stamp() is None


def test_mlfix_index_embeddings_change_the_knn_scores(project, tmp_path, capsys):
    before = project.scores().set_index("sample_id")["score_knn"]
    table, flips = user_model(project)
    # the user's embeddings: the class the user's model believes in, plus a little noise
    x = table[project.labels].to_numpy() + np.random.default_rng(0).normal(0, 0.01, (40, 4))
    ids = project.samples["sample_id"].to_numpy()[::-1]
    np.save(tmp_path / "e.npy", x[::-1])
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    assert main(["index", "--project", str(project.dir), "--embeddings", str(tmp_path / "e.npy"),
                 "--embedding-ids", str(tmp_path / "ids.txt")]) == 0
    assert "your embeddings are stored" in capsys.readouterr().out
    np.testing.assert_allclose(project.user_embeddings(np.array([0, 39])), x[[0, 39]].astype(np.float32))
    after = pd.read_parquet(project.dir / "scores.parquet").set_index("sample_id")["score_knn"]
    assert not np.allclose(after.loc[before.index], before)
    assert sorted(after.sort_values(ascending=False).index[:3]) == sorted(flips)
    assert main(["index", "--project", str(project.dir), "--embeddings", str(tmp_path / "absent.npy")]) == 2
    assert "absent.npy does not exist" in capsys.readouterr().err
