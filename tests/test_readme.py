"""The Python examples of README.md and docs/*.md run as written, on a small demo project.

Each ```python block runs in a fresh namespace, from an empty working folder; the one change made to
it is the project path: ``"demo-project"`` (the folder ``make demo`` builds) becomes a copy of the
tests' demo project (``demo_project`` in conftest.py: 200 digits, fast settings). A method or
argument the README shows that the API no longer has fails here.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
DEMO_PATH = '"demo-project"'


def python_blocks() -> list:
    """``(document, first line, code)`` of every ```python block."""
    blocks = []
    for document in DOCUMENTS:
        text = document.read_text(encoding="utf-8")
        for match in PYTHON_BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 2
            blocks.append(pytest.param(document, line, match.group(1), id=f"{document.name}:{line}"))
    return blocks


BLOCKS = python_blocks()


@pytest.fixture
def readme_project(demo_project, tmp_path) -> Path:
    """A private copy of the indexed demo project (the README's block publishes a view into it)."""
    target = tmp_path / "demo-project"
    shutil.copytree(demo_project.dir, target, ignore=shutil.ignore_patterns("images", "reviews.db*", "views"))
    return target


def test_the_readme_shows_python_on_the_demo_project():
    readme = [code for document, _, code in (block.values for block in BLOCKS) if document.name == "README.md"]
    assert readme, "README.md has no ```python block"
    assert any(DEMO_PATH in code for code in readme), f"the README's Python example should open {DEMO_PATH}"


@pytest.mark.parametrize(("document", "line", "code"), BLOCKS)
def test_python_block_runs(document: Path, line: int, code: str, readme_project, tmp_path, monkeypatch):
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # a demo-project folder in the checkout must not stand in for ours
    code = code.replace(DEMO_PATH, repr(str(readme_project)))
    exec(compile(code, f"{document.name}:{line}", "exec"), {"__name__": "__readme__"})
