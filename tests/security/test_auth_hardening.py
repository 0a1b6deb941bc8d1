"""Sign-in settings an attacker (or a careless admin) gets wrong, and admin pages run outside the menu.

- A token variable set but empty (``MLFIX_ADMIN_TOKEN=`` when ``$(python -c ...)`` failed) used to
  mean open mode, where every visitor is admin: it is now a refusal that says what to do, and the
  app serves no page.
- A weak token (short, or a few characters repeated) is refused the same way.
- With OpenID Connect, an address the provider marks unverified neither passes the reviewer
  allow-list nor makes an admin.
- Each admin page checks the role itself: a reviewer who runs the page file (or reaches it by URL)
  gets the refusal, not the page.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from streamlit.testing.v1 import AppTest

from mlfix.errors import AuthConfigError, AuthError
from mlfix.service import auth
from mlfix.service.auth import identity_from_user, load_settings
from mlfix.ui import access
from mlfix.ui import state as ui_state

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
ADMIN, REVIEWER = "admin-token-0123456789", "reviewer-token-0123456789"
OIDC = {"auth": {"client_id": "c"}}


def shown(markdown: str) -> str:
    """What a reader sees of a message drawn as Markdown (escapes and word joiners removed)."""
    return markdown.replace("\\", "").replace("\u2060", "")


# ------------------------------------------------------------------------------ empty and weak tokens


@pytest.mark.parametrize("environ, secrets, message", [
    ({"MLFIX_ADMIN_TOKEN": ""}, {}, "MLFIX_ADMIN_TOKEN is set but empty"),
    ({"MLFIX_ADMIN_TOKEN": "  \t\n"}, {}, "MLFIX_ADMIN_TOKEN is set but empty"),
    ({"MLFIX_ADMIN_TOKEN": ADMIN, "MLFIX_REVIEWER_TOKEN": ""}, {}, "MLFIX_REVIEWER_TOKEN is set but empty"),
    ({"MLFIX_ADMIN_TOKEN": "", "MLFIX_REVIEWER_TOKEN": ""}, {}, "MLFIX_ADMIN_TOKEN is set but empty"),
    ({}, {"mlfix": {"admin_token": ""}}, r"\[mlfix\] admin_token is set but empty"),
    ({}, {"mlfix": {"admin_token": ADMIN, "reviewer_token": " "}}, r"\[mlfix\] reviewer_token is set but empty"),
    # an empty variable does not fall back to the secrets either: it is a mistake to fix
    ({"MLFIX_ADMIN_TOKEN": ""}, {"mlfix": {"admin_token": ADMIN}}, "MLFIX_ADMIN_TOKEN is set but empty"),
])
def test_a_set_but_empty_token_is_refused_not_open_mode(environ, secrets, message):
    with pytest.raises(AuthConfigError, match=message) as refused:
        load_settings(secrets, environ)
    assert "token_urlsafe" in str(refused.value) and "remove it" in str(refused.value)


@pytest.mark.parametrize("token, message", [
    ("short-token", "too short \\(11 characters\\)"),
    ("a" * 40, "too easy to guess \\(1 different characters\\)"),
    ("abcabcabcabcabcabc", "too easy to guess \\(3 different characters\\)"),
    ("1234567" * 3, "too easy to guess \\(7 different characters\\)"),
])
def test_a_weak_token_is_refused(token, message):
    with pytest.raises(AuthConfigError, match=f"the admin token is {message}"):
        load_settings({}, {"MLFIX_ADMIN_TOKEN": token})
    with pytest.raises(AuthConfigError, match=f"the reviewer token is {message}"):
        load_settings({}, {"MLFIX_ADMIN_TOKEN": ADMIN, "MLFIX_REVIEWER_TOKEN": token})


def test_a_token_pasted_with_a_newline_still_works():
    settings = load_settings({}, {"MLFIX_ADMIN_TOKEN": f"{ADMIN}\n", "MLFIX_REVIEWER_TOKEN": f" {REVIEWER} "})
    assert (settings.admin_token, settings.reviewer_token) == (ADMIN, REVIEWER)
    assert auth.login_with_token(REVIEWER, "bob", settings=settings).role == "reviewer"


@given(st.text(alphabet=" \t\r\n\u00a0\u2003", max_size=5))
def test_a_blank_token_never_means_open_mode(blank):
    for environ in ({"MLFIX_ADMIN_TOKEN": blank}, {"MLFIX_ADMIN_TOKEN": ADMIN, "MLFIX_REVIEWER_TOKEN": blank}):
        with pytest.raises(AuthConfigError, match="is set but empty"):
            load_settings({}, environ)


@given(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=16, max_size=64))
def test_a_strong_token_loads_and_signs_in(token):
    if len(set(token)) < auth.MIN_TOKEN_DISTINCT or token == ADMIN:
        with pytest.raises(AuthConfigError):
            load_settings({}, {"MLFIX_ADMIN_TOKEN": ADMIN, "MLFIX_REVIEWER_TOKEN": token})
        return
    settings = load_settings({}, {"MLFIX_ADMIN_TOKEN": ADMIN, "MLFIX_REVIEWER_TOKEN": token})
    assert settings.mode == "token" and auth.login_with_token(token, "bob", settings=settings).role == "reviewer"


@pytest.mark.parametrize("environ, secrets, message", [
    ({"MLFIX_REVIEWERS": ""}, OIDC, "MLFIX_REVIEWERS is set but names nobody"),
    ({"MLFIX_REVIEWERS": " , ,"}, OIDC, "MLFIX_REVIEWERS is set but names nobody"),
    ({}, {**OIDC, "mlfix": {"reviewers": [""]}}, r"\[mlfix\] reviewers is set but names nobody"),
    ({"MLFIX_ADMINS": " "}, OIDC, "MLFIX_ADMINS is set but names nobody"),
])
def test_a_blank_allow_list_is_refused_not_everyone(environ, secrets, message):
    with pytest.raises(AuthConfigError, match=message):
        load_settings(secrets, environ)


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("MLFIX_ADMIN_TOKEN", "MLFIX_REVIEWER_TOKEN", "MLFIX_ADMINS", "MLFIX_REVIEWERS", "MLFIX_DB_URL",
                 "MLFIX_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_app_shows_the_refusal_and_serves_no_page(clean_env, tmp_path):
    clean_env.setenv("MLFIX_ADMIN_TOKEN", "")
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state[ui_state.PROJECT_KEY] = str(tmp_path)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    [error] = [shown(e.value) for e in at.sidebar.error]
    assert error.startswith("The server's sign-in settings are unusable: MLFIX_ADMIN_TOKEN is set but empty")
    assert [t.value for t in at.title] == ["mlfix"]
    for page in ("app_pages/dataset.py", "app_pages/review.py", "app_pages/export.py"):
        with pytest.raises(ValueError, match="Could not find a navigation page"):
            at.switch_page(page)


# ------------------------------------------------------------------------------ OIDC: unverified e-mail


ALLOW = {**OIDC, "mlfix": {"admins": ["boss@x.org"], "reviewers": ["*@x.org"]}}


@pytest.mark.parametrize("flag", [False, "false", "FALSE", 0])
@pytest.mark.parametrize("email", ["dan@x.org", "boss@x.org"])
def test_an_unverified_address_passes_neither_the_allow_list_nor_the_admins(email, flag):
    user = {"is_logged_in": True, "email": email, "email_verified": flag}
    with pytest.raises(AuthError, match=f"the address {email} is not verified"):
        identity_from_user(user, ALLOW, {})
    with pytest.raises(AuthError, match="is not verified"):  # no allow-list: still not anyone's name
        identity_from_user(user, {**OIDC, "mlfix": {"admins": ["boss@x.org"]}}, {})


@pytest.mark.parametrize("flag", [True, "true", None])
def test_a_verified_or_unstated_address_signs_in(flag):
    user = {"is_logged_in": True, "email": "Boss@X.org"}
    if flag is not None:
        user["email_verified"] = flag
    assert identity_from_user(user, ALLOW, {}) == auth.Identity("boss@x.org", "admin", "oidc", "boss@x.org")
    assert identity_from_user({**user, "email": "dan@x.org"}, ALLOW, {}).role == "reviewer"
    with pytest.raises(AuthError, match="eve@evil.org is not on this server's list"):
        identity_from_user({**user, "email": "eve@evil.org"}, ALLOW, {})


def test_without_an_address_the_allow_list_refuses_even_an_admins_name():
    with pytest.raises(AuthError, match="boss@x.org is not on this server's list"):
        identity_from_user({"is_logged_in": True, "name": "boss@x.org"}, ALLOW, {})


# ------------------------------------------------------------------------------ admin pages check the role


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from mlfix.project import Project
    from tests.conftest import write_image_folder

    root = tmp_path_factory.mktemp("hardening")
    return Project.create(root / "project", write_image_folder(root / "images", per_class=3))


ADMIN_PAGES = {"dataset": "create a project", "training": "train the model", "export": "export labels"}


@pytest.mark.parametrize("page", sorted(ADMIN_PAGES))
def test_a_reviewer_running_an_admin_page_file_is_refused(page, project, clean_env):
    clean_env.setenv("MLFIX_ADMIN_TOKEN", ADMIN)
    clean_env.setenv("MLFIX_REVIEWER_TOKEN", REVIEWER)
    at = AppTest.from_file(str(ROOT / "app_pages" / f"{page}.py"), default_timeout=120)
    at.session_state[ui_state.PROJECT_KEY] = str(project.dir)
    at.session_state[access.IDENTITY_KEY] = auth.Identity("bob", "reviewer", "token")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [shown(w.value) for w in at.warning] == [
        f"bob is a reviewer: only an admin may {ADMIN_PAGES[page]}. Ask the admin who runs this server."]
    assert not at.title and not at.button and not at.text_input and not at.get("download_button")


@pytest.mark.parametrize("page", sorted(ADMIN_PAGES))
def test_nobody_signed_in_running_an_admin_page_file_is_refused(page, project, clean_env):
    clean_env.setenv("MLFIX_ADMIN_TOKEN", ADMIN)
    at = AppTest.from_file(str(ROOT / "app_pages" / f"{page}.py"), default_timeout=120)
    at.session_state[ui_state.PROJECT_KEY] = str(project.dir)
    at.run()
    assert [shown(w.value) for w in at.warning] == [f"sign in first: you need to be signed in to {ADMIN_PAGES[page]}"]
    assert not at.title


@pytest.mark.parametrize("page", sorted(ADMIN_PAGES))
def test_an_admin_still_gets_the_page(page, project, clean_env):
    clean_env.setenv("MLFIX_ADMIN_TOKEN", ADMIN)
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state[ui_state.PROJECT_KEY] = str(project.dir)
    at.session_state[access.IDENTITY_KEY] = auth.Identity("ann", "admin", "token")
    at.run()
    at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == [page.capitalize()] and not at.warning
