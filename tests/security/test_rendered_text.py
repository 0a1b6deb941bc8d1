"""Every text from the data or a reviewer is shown as text: no live link, image, HTML or reordering.

A project whose labels, sample ids, project folder, view and reviewer names are hostile (Markdown
links and images, HTML tags and script, ``javascript:`` links, bare URLs and addresses that GFM links
by itself, a right-to-left override) runs through every page in AppTest. Every string that reaches a
Markdown-rendering element (bodies, captions, alerts, titles, widget labels and help, expander and
tab labels, image captions, progress text) and carries a hostile fragment must hold no live markup
(:func:`live_markup`, an oracle written from CommonMark and GFM's autolink rules, not from
:mod:`mlfix.ui.text`); Plotly text must hold no raw ``<``. Unit tests of the helper come first.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import plotly.io as pio
import pytest
from hypothesis import given, settings, strategies as st
from streamlit.testing.v1 import AppTest

from mlfix.project import Project
from mlfix.review.store import ReviewStore
from mlfix.ui import access, text
from mlfix.ui import state as ui_state

REPO = Path(__file__).resolve().parents[2]
APP = str(REPO / "app.py")
LINK = "[Session expired: sign in](https://evil.example/login)"
IMAGE = "![x](http://evil.example/pixel.png)"
HTML = "<img src=x onerror=alert(1)><script>alert(2)</script>"
JS = "[js](javascript:alert(1)) www.evil.example"
RTL = "cat\u202egnp.exe"
LABELS = [LINK, IMAGE, HTML, JS, RTL]
FILE_NAMES = ["[a](javascript:alert(1))", "<img src=x onerror=alert(1)>", "![p](evil.png)", "cat\u202egnp",
              "me@evil.example"]  # no "/" in a file name
REVIEWERS = [LINK, IMAGE, "<b>boss</b> https://evil.example/x"]
VIEW, NOTE = "[view](https://evil.example/v)", "![n](http://evil.example/n.png) <i>note</i>"
MARKERS = ("evil", "alert", "javascript", "pixel", "onerror", "<b>", "<i>", "\u202e")
BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Proto fields that Streamlit renders as Markdown (bodies, captions, labels, help, progress text).
MARKDOWN_FIELDS = {"body", "label", "help", "caption", "text"}
PAGES = ["dataset", "training", "codebook", "review", "export"]


# ------------------------------------------------------------------------------------ the oracle

_CODE_SPAN = re.compile(r"(?<!\\)(`+)(.+?)(?<!`)\1(?!`)", re.S)
_ESCAPED = re.compile(r"\\([!-/:-@\[-`{-~])")


def live_markup(markdown: str) -> list[str]:
    """What in this Markdown source would render as a link, an image, HTML or reordered text.

    CommonMark: backslash-escaped punctuation and code spans are literal text. GFM also links bare
    ``http(s)://``, ``www.`` and e-mail addresses found in the text *after* escapes are resolved.
    """
    found = [f"U+{ord(c):04X}" for c in markdown if c in BIDI]
    body = _CODE_SPAN.sub(lambda m: "x" * len(m.group(0)), markdown)
    unescaped = _ESCAPED.sub("_", body)
    found += re.findall(r"\]\(|!\[|\]\[|\]:|<[A-Za-z/!?]", unescaped)
    resolved = _ESCAPED.sub(r"\1", body)
    found += re.findall(r"(?i)(?:https?://|www\.)\S*|[-.\w+]+@[-\w]+(?:\.[-\w]+)+", resolved)
    return found


def test_the_oracle_sees_what_streamlit_would_render():
    """Checked in Chromium against Streamlit 1.67: these render as links, images or bidi text."""
    for live in [LINK, IMAGE, "<b>x</b>", "https://evil.example", "www.evil.example", "me@evil.example",
                 r"https\:\/\/evil\.example", RTL, "`a` [x](y)"]:
        assert live_markup(live), live
    for dead in [r"\[x\]\(y\)", "`[x](https://evil.example)`", r"\<b\>", "plain text", "a: b"]:
        assert not live_markup(dead), dead


# ------------------------------------------------------------------------------------ the helper


@pytest.mark.parametrize("hostile", LABELS + FILE_NAMES + REVIEWERS + [VIEW, NOTE, "a\nb", "x\\", "`", ""])
def test_plain_and_code_leave_nothing_live(hostile):
    assert live_markup(text.plain(hostile)) == []
    assert live_markup(f"**{text.plain(hostile)}** · {text.code(hostile)}") == []


def test_plain_shows_every_visible_character():
    """Resolving the escapes and dropping the word joiners gives back what was there (controls shown)."""
    for hostile in LABELS + REVIEWERS:
        shown = _ESCAPED.sub(r"\1", text.plain(hostile)).replace(text.WORD_JOINER, "")
        assert shown == hostile.replace("\u202e", "[U+202E]")


def test_streamlit_directives_icons_and_latex_stay_text():
    shown = text.plain(":red[alert] :material/home: :blue-badge[x] $x^2$ $$y$$")
    assert not re.search(r"(?<!\\):\w[\w-]*\[|:material/\w+:|(?<!\\)\$", shown), shown


def test_html_text_leaves_no_tag_for_plotly():
    assert text.html_text(HTML) == "&lt;img src=x onerror=alert(1)&gt;&lt;script&gt;alert(2)&lt;/script&gt;"
    assert text.html_text(RTL) == "cat[U+202E]gnp.exe"


MARKUP_TEXT = st.lists(st.sampled_from(list("[]()<>!`*_~$&|:/\\.@#=+-1 \n\u202e") + ["http", "www", "evil", "a"]),
                       max_size=30).map("".join) | st.text()


@settings(max_examples=500, deadline=None)
@given(MARKUP_TEXT)
def test_any_text_is_inert_and_stays_inert_when_escaped_again(value):
    once = text.plain(value)
    assert live_markup(once) == [] and live_markup(text.plain(once)) == []
    assert "<" not in once.replace("\\<", "") and "](" not in once.replace("\\]", "")
    assert live_markup(f"x {text.code(value)} y") == []
    assert "<" not in text.html_text(value) and not BIDI & set(text.html_text(value))


# ------------------------------------------------------------------------------------ the grid


def test_the_grid_puts_data_into_the_page_as_text_only():
    """grid.js writes labels and ids with textContent and title; innerHTML carries only numbers."""
    source = (REPO / "mlfix" / "ui" / "grid.js").read_text(encoding="utf-8")
    assert not re.search(r"insertAdjacentHTML|outerHTML|document\.write|\beval\(|new Function", source)
    uses = re.findall(r"innerHTML\s*=\s*([^;]*);", source)
    assert uses, "the check no longer matches grid.js"
    for use in uses:
        dynamic = re.findall(r"\$\{([^}]*)\}", use)
        assert all(re.fullmatch(r"[\w.]*(\.toLocaleString\(\)|\s*\+\s*1)?", d.strip()) for d in dynamic), use
        assert not re.search(r"\b(it|item|label|id|name|title|new_label|suggested)\b", " ".join(dynamic)), use


# ------------------------------------------------------------------------------------ the app


@pytest.fixture(scope="module")
def hostile_project(tmp_path_factory) -> Project:
    """20 images, 5 hostile classes x 4, hostile file names, indexed, scored; decisions by hostile
    reviewers, a hostile view; in a project folder with a hostile name."""
    from tests.conftest import COLORS, FAST_SETTINGS, shape_image

    root = tmp_path_factory.mktemp("hostile")
    (root / "images").mkdir()
    rows = []
    for c, label in enumerate(LABELS):
        for i in range(4):
            name = f"{FILE_NAMES[(c + i) % len(FILE_NAMES)]}-{c}{i}.png"
            shape_image(list(COLORS.values())[c % 4], seed=10 * c + i).save(root / "images" / name)
            rows.append({"path": name, "label": label})
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["path", "label"])
        writer.writeheader()
        writer.writerows(rows)
    project = Project.create(root / "[p](javascript:alert(1))", images=root / "images",
                             labels=root / "labels.csv", **FAST_SETTINGS)
    project.index()
    project.scores()
    ids = project.samples["sample_id"].tolist()
    with ReviewStore.for_project(project.dir) as store:
        for n, reviewer in enumerate(REVIEWERS):
            store.decide(ids[n * 4:n * 4 + 2], "relabel", LABELS[(n + 1) % len(LABELS)], reviewer=reviewer)
    project.publish_view(VIEW, ids[:6], note=NOTE)
    return project


@pytest.fixture
def open_mode(monkeypatch):
    for name in list(os.environ):
        if name.startswith("MLFIX_"):
            monkeypatch.delenv(name)


def markdown_texts(at: AppTest) -> list[tuple[str, str]]:
    """``(element type, text)`` of every Markdown-rendered string on the page and in the sidebar."""
    found: list[tuple[str, str]] = []

    def strings(message, kind):
        for field, value in message.ListFields():
            if field.type == field.TYPE_MESSAGE:
                for item in ([value] if hasattr(value, "ListFields") else value):
                    strings(item, kind)
            elif field.type == field.TYPE_STRING and field.name in MARKDOWN_FIELDS:
                found.extend((kind, v) for v in ([value] if isinstance(value, str) else value))

    def walk(node):
        proto = getattr(node, "proto", None)
        if proto is not None and getattr(node, "type", "") not in ("plotly_chart", "bidi_component"):
            strings(proto, getattr(node, "type", "?"))
        children = getattr(node, "children", None)
        for child in (children.values() if isinstance(children, dict) else []):
            walk(child)

    walk(at._tree)
    return found


def plotly_strings(at: AppTest) -> list[str]:
    """Every string in the data and axes of every Plotly chart (their hover templates are the app's own)."""
    out: list[str] = []

    def collect(value):
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, (list, tuple)):
            for item in value:
                collect(item)

    for chart in at.get("plotly_chart"):
        figure = pio.from_json(chart.proto.spec)
        for trace in figure.data:
            for key in ("x", "y", "text", "hovertext", "ids", "labels", "customdata"):
                collect(list(getattr(trace, key, None) or []) if getattr(trace, key, None) is not None else [])
        for axis in ("xaxis", "yaxis"):
            collect(list(figure.layout[axis].categoryarray or []))
            collect(list(figure.layout[axis].ticktext or []))
    return out


def assert_inert(at: AppTest, where: str) -> list[str]:
    """No live markup in any Markdown text that carries hostile data; no raw tag in Plotly text.
    Returns the Markdown texts (for what the page must show)."""
    assert not at.exception, [e.value for e in at.exception]
    texts = markdown_texts(at)
    hostile = [(kind, t) for kind, t in texts if any(m in t for m in MARKERS)]
    bad = [(kind, t, live_markup(t)) for kind, t in hostile if live_markup(t)]
    assert not bad, f"{where}: {bad}"
    tags = [s for s in plotly_strings(at) if "<" in s or ">" in s or BIDI & set(s)]
    assert not tags, f"{where}: Plotly text with a tag: {tags}"
    return [t for _, t in texts]


def started(project: Project, **session) -> AppTest:
    """The app, run once on ``project`` with these session values."""
    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state[ui_state.PROJECT_KEY] = str(project.dir)
    for key, value in session.items():
        at.session_state[key] = value
    return at.run()


def app_on(project: Project, page: str, **session) -> AppTest:
    at = started(project, **session)
    at.switch_page(f"app_pages/{page}.py")
    at.run()
    return at


@pytest.mark.parametrize("page", PAGES)
def test_every_page_shows_hostile_data_as_text(hostile_project, open_mode, page):
    at = app_on(hostile_project, page)
    texts = assert_inert(at, page)
    sidebar = " ".join(t for _, t in markdown_texts(at))
    assert text.plain(hostile_project.dir.name) in sidebar  # the project folder, in the sidebar summary
    if page == "dataset":
        for label in LABELS:
            assert any(t.startswith(f"**{text.plain(label)}**") for t in texts), label
        assert text.plain(f"{FILE_NAMES[0]}-00.png") in texts  # an example's caption
        assert text.html_text(LINK) in plotly_strings(at)
    if page == "codebook":
        assert any(t.startswith(text.plain(hostile_project.samples["sample_id"].iloc[0])) for t in texts)
        assert any(text.html_text(label) in plotly_strings(at) for label in LABELS)
    if page == "export":
        assert text.html_text(IMAGE) in plotly_strings(at)


def test_a_hostile_view_and_the_confusion_view_on_the_review_page(hostile_project, open_mode):
    at = app_on(hostile_project, "review", mlfix_review_view=VIEW)
    texts = assert_inert(at, "review, view")
    assert f"View **{text.plain(VIEW)}**: {text.plain(NOTE)}" in texts
    at = app_on(hostile_project, "review")
    assert_inert(at, "review, class")
    assert {text.html_text(label) for label in LABELS} <= set(plotly_strings(at))  # the confusion heatmap


@pytest.fixture
def tokens(monkeypatch, open_mode):
    monkeypatch.setenv("MLFIX_ADMIN_TOKEN", "admin-token-0123456789")
    monkeypatch.setenv("MLFIX_REVIEWER_TOKEN", "reviewer-token-0123456789")


def signed_in(project: Project, name: str, **session) -> AppTest:
    at = started(project, **session)
    at.sidebar.text_input(key=access.NAME_KEY).input(name)
    at.sidebar.text_input(key=access.TOKEN_KEY).input("reviewer-token-0123456789")
    at.sidebar.button[0].click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_reviewer_names_reach_other_reviewers_as_text(hostile_project, tokens):
    """A reviewer named like a sign-in link holds a page: the next reviewer reads the name, no link."""
    view = {"mlfix_review_class": "(all images)"}
    mallory = signed_in(hostile_project, LINK, **view)
    assert f"Signed in as **{text.plain(LINK)}** (reviewer)" in [c.value for c in mallory.sidebar.caption]
    assert_inert(mallory, "signed in")
    bob = signed_in(hostile_project, "bob", **view)
    held = [w.value for w in bob.warning] + [i.value for i in bob.info]
    assert any(text.plain(LINK) in message for message in held), held
    assert_inert(bob, "held by a hostile name")


def test_error_messages_quote_data_as_text(hostile_project, open_mode, monkeypatch):
    """A message that quotes a sample id and an error about it (an unreadable image, Codebook page)."""
    from mlfix.ui import loaders

    def unreadable(project, sample_id, *args, **kwargs):
        raise OSError(f"cannot identify image file {sample_id!r} ({IMAGE})")

    monkeypatch.setattr(loaders, "model_view_png", unreadable)
    at = app_on(hostile_project, "codebook")
    sample_id = at.selectbox(key="cb_image").value
    assert [e.value for e in at.error] == [f"Cannot show {text.code(sample_id)}: "
                                           f"{text.plain(f'cannot identify image file {sample_id!r} ({IMAGE})')}"]
    assert_inert(at, "codebook error")


def test_the_grid_gets_labels_and_ids_unchanged(hostile_project, open_mode):
    """The grid shows them with textContent: the data it gets is the raw text, not escaped twice."""
    at = app_on(hostile_project, "review", mlfix_review_class=LINK)
    [grid] = at.get("bidi_component")
    data = json.loads(grid.proto.json)
    assert {item["label"] for item in data["items"]} == {LINK}
    assert {p["label"] for p in data["palette"]} == set(LABELS)


def test_mlfix_scores_prints_escape_sequences_as_text(tmp_path, monkeypatch, capsys):
    """A label with a terminal hyperlink (OSC 8) or colour codes reaches the terminal as visible text."""
    import pandas as pd

    from mlfix.cli import main
    from tests.conftest import write_image_folder

    project = Project.create(tmp_path / "project", write_image_folder(tmp_path / "images", per_class=1))
    osc8 = "\x1b]8;;https://evil.example\x07click\x1b]8;;\x07"
    scores = pd.DataFrame({"sample_id": ["a.png"], "label": [osc8], "suggested_label": ["\x1b[31mred"],
                           "score": [0.5]})
    monkeypatch.setattr(Project, "scores", lambda self, *a, **k: scores)
    assert main(["scores", "--project", str(project.dir)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "[U+001B]]8;;https://evil.example[U+0007]click" in out
