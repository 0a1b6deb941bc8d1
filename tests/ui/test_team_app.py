"""The app for a team (AppTest on app.py): sign-in, roles, page claims, conflicts, database down."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from mlfix.project import Project
from mlfix.review.claims import ClaimBook
from mlfix.review.store import ReviewStore, StoreUnavailable
from mlfix.ui import access, team
from mlfix.ui import state as ui_state

APP = str(Path(__file__).resolve().parents[2] / "app.py")
ADMIN, REVIEWER = "admin-token-0123456789", "reviewer-token-0123456789"


@pytest.fixture
def tokens(monkeypatch):
    monkeypatch.setenv("MLFIX_ADMIN_TOKEN", ADMIN)
    monkeypatch.setenv("MLFIX_REVIEWER_TOKEN", REVIEWER)
    monkeypatch.delenv("MLFIX_DB_URL", raising=False)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    """120 images (4 classes x 30): two pages of 100 under "(all images)"."""
    from tests.conftest import write_image_folder

    root = tmp_path_factory.mktemp("team")
    return Project.create(root / "project", write_image_folder(root / "images", per_class=30))


@pytest.fixture(autouse=True)
def no_open_claims(project):
    """Each test starts with nobody holding images: the module shares one project, and so its claims."""
    with ReviewStore.for_project(project.dir) as store:
        book = ClaimBook.for_store(store)
        for label, reviewer in book.active()[["label", "reviewer"]].drop_duplicates().itertuples(index=False):
            book.release(label, reviewer, force=True)
        assert book.active().empty


def signed_in(project_dir, name: str, token: str, **session) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state[ui_state.PROJECT_KEY] = str(project_dir)
    for key, value in session.items():
        at.session_state[key] = value
    at.run()
    at.sidebar.text_input(key=access.NAME_KEY).input(name)
    at.sidebar.text_input(key=access.TOKEN_KEY).input(token)
    at.sidebar.button[0].click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_nothing_before_signing_in_and_a_wrong_token_is_refused(project, tokens):
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state[ui_state.PROJECT_KEY] = str(project.dir)
    at.run()
    assert [t.value for t in at.title] == ["mlfix"] and "Sign in" in at.info[0].value
    assert [t.key for t in at.sidebar.text_input] == [access.NAME_KEY, access.TOKEN_KEY]
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page("app_pages/review.py")
    at.sidebar.text_input(key=access.NAME_KEY).input("bob")
    at.sidebar.text_input(key=access.TOKEN_KEY).input("not-the-token-0123456789")
    at.sidebar.button[0].click()
    at.run()
    assert [e.value for e in at.sidebar.error] == ["wrong token: check it with the admin who runs this server"]
    assert at.session_state[access.TOKEN_KEY] == ""  # the typed token is not kept
    assert access.IDENTITY_KEY not in at.session_state


def test_a_reviewer_gets_the_review_page_only_and_their_name_on_decisions(project, tokens):
    at = signed_in(project.dir, "  Bob ", REVIEWER)
    assert at.sidebar.caption[0].value == "Signed in as **Bob** (reviewer)"
    assert len(at.get("bidi_component")) == 1  # the Review page is the reviewer's first page
    assert not [t for t in at.sidebar.text_input]  # no project picker, no free name field
    assert at.session_state[access.REVIEWER_KEY] == "Bob"
    for page in ("app_pages/training.py", "app_pages/dataset.py", "app_pages/export.py"):
        with pytest.raises(ValueError, match="Could not find a navigation page"):
            at.switch_page(page)
    at.switch_page("app_pages/codebook.py").run()  # read-only: allowed
    assert not at.exception


def test_an_admin_gets_every_page_and_the_conflicts(project, tokens, tmp_path):
    with ReviewStore.for_project(project.dir) as store:
        first = str(project.samples["sample_id"].iloc[0])
        store.decide(first, "relabel", "green", reviewer="ann")
        store.decide(first, "relabel", "blue", reviewer="bob")
        store.decide(first, "relabel", "blue", reviewer="cy")
    at = signed_in(project.dir, "ann", ADMIN)
    assert [t.value for t in at.title] == ["Dataset"]
    assert at.sidebar.text_input(key="mlfix_project_input").value == str(project.dir)
    at.switch_page("app_pages/export.py").run()
    assert not at.exception
    assert "Conflicts between reviewers" in [s.value for s in at.subheader]
    conflicts = at.dataframe[-1].value  # the last table of the page
    assert conflicts["sample_id"].tolist() == [first] and conflicts["final_label"].tolist() == ["blue"]
    rule = at.selectbox(key=team.RULE_KEY)
    rule.set_value("admin_wins").run()
    assert at.multiselect(key=team.ADMINS_KEY).value == ["ann"]  # the signed-in admin's decisions win
    table = [d for d in at.dataframe][-1].value
    assert table.set_index("sample_id").loc[first, "final_label"] == "green"
    rule = at.selectbox(key=team.RULE_KEY)
    rule.set_value("majority").run()
    assert [d for d in at.dataframe][-1].value.set_index("sample_id").loc[first, "final_label"] == "blue"


def grid_ids(at: AppTest) -> set[str]:
    [element] = at.get("bidi_component")
    return {item["id"] for item in json.loads(element.proto.json)["items"]}


def test_images_held_by_someone_else_are_left_out_with_a_message(project, tokens):
    view = {"mlfix_review_class": "(all images)", "mlfix_review_size": 100}
    bob = signed_in(project.dir, "bob", REVIEWER, **view)
    bob.button(key="mlfix_review_next").click().run()
    assert bob.session_state["mlfix_review_page"] == 1 and not bob.info
    bobs = grid_ids(bob)
    assert len(bobs) == 20  # the second page of 120; his first page is free again
    cy = signed_in(project.dir, "cy", REVIEWER, **view)
    assert len(grid_ids(cy)) == 100 and not grid_ids(cy) & bobs  # bob's images are left out of cy's pages
    [message] = [i.value for i in cy.info]
    assert message.startswith("20 image(s) here are being reviewed by bob (until") and "left out" in message
    dan = signed_in(project.dir, "dan", REVIEWER, **view)
    assert "Every image here is being reviewed by someone else" in dan.warning[0].value
    assert not dan.get("bidi_component")


def test_database_down_mid_session_shows_the_banner_and_keeps_the_grid(project, tokens, monkeypatch):
    at = signed_in(project.dir, "eve", REVIEWER, mlfix_review_class="red")
    assert not at.error and len(at.get("bidi_component")) == 1

    def down(self, *args, **kwargs):
        raise StoreUnavailable("the decisions database sqlite:///x is unavailable (disk I/O error): "
                               "decisions are NOT being saved; retry when it is back")

    monkeypatch.setattr(ReviewStore, "decisions", down)
    at.run()
    assert not at.exception
    [banner] = [e.value for e in at.error]
    assert "Decisions are NOT being saved" in banner and "disk I/O error" in banner
    assert len(at.get("bidi_component")) == 1  # the grid stays: it holds the unsent decisions
    monkeypatch.undo()


def test_unusable_settings_let_nobody_in(project, monkeypatch):
    monkeypatch.delenv("MLFIX_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("MLFIX_REVIEWER_TOKEN", REVIEWER)
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state[ui_state.PROJECT_KEY] = str(project.dir)
    at.run()
    assert "no admin token" in at.sidebar.error[0].value
    assert [t.value for t in at.title] == ["mlfix"]


def test_oidc_mode_offers_the_sign_in_button(project, monkeypatch):
    monkeypatch.delenv("MLFIX_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("MLFIX_REVIEWER_TOKEN", raising=False)
    at = AppTest.from_file(APP, default_timeout=120)
    at.secrets["auth"] = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x" * 32,
                          "client_id": "c", "client_secret": "s",
                          "server_metadata_url": "https://id.example.org/.well-known/openid-configuration"}
    at.session_state[ui_state.PROJECT_KEY] = str(project.dir)
    at.run()
    assert not at.exception
    assert [b.label for b in at.sidebar.button] == ["Sign in"]
    assert "Sign in with the button" in at.info[0].value
