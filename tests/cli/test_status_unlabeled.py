"""`mlfix status` on an indexed set without labels does not send the user to `mlfix scores` (which refuses)."""

from types import SimpleNamespace

from mlfix.cli.status import _scores_lines


def project(tmp_path, why):
    return SimpleNamespace(dir=tmp_path, is_indexed=True, scores_unavailable=lambda: why)


def test_an_unlabeled_set_says_why_there_are_no_scores_and_what_runs_instead(tmp_path):
    why = "no labels: label-error scores need at least two classes; the similarity order works: ..."
    [line] = _scores_lines(project(tmp_path, why))
    assert line == (f"scores    none: no labels: label-error scores need at least two classes (the health checks "
                    f"need no labels: `mlfix status --health --project {tmp_path}`)")


def test_a_labeled_set_without_scores_names_the_command_with_its_folder(tmp_path):
    [line] = _scores_lines(project(tmp_path, None))
    assert line == f"scores    none yet: run `mlfix scores --project {tmp_path}`"
