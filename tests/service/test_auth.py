"""Identity and roles: modes, tokens, names, OIDC users, and what each role may do."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlfix.service import auth
from mlfix.service.auth import (AuthConfigError, AuthError, Identity, PermissionDenied, auth_mode, can, identity_from_user,
                        load_settings, login_with_token, require, validate_name)

ADMIN = "admin-token-0123456789"
REVIEWER = "reviewer-token-0123456789"
ENV = {"MLFIX_ADMIN_TOKEN": ADMIN, "MLFIX_REVIEWER_TOKEN": REVIEWER}


def test_modes_follow_what_is_configured():
    assert auth_mode({}, {}) == "open"
    assert auth_mode(None, {}) == "open"
    assert auth_mode({}, ENV) == "token"
    assert auth_mode({"mlfix": {"admin_token": ADMIN}}, {}) == "token"
    oidc = {"auth": {"redirect_uri": "https://x/oauth2callback", "client_id": "c"}, "mlfix": {"admins": ["a@x.org"]}}
    assert auth_mode(oidc, ENV) == "oidc"  # [auth] wins: sign in with the identity provider


def test_environment_wins_over_secrets():
    secret_admin, secret_reviewer = "secret-admin-0123456789", "secret-reviewer-0123456789"
    settings = load_settings({"mlfix": {"admin_token": secret_admin, "reviewer_token": secret_reviewer}},
                             {"MLFIX_ADMIN_TOKEN": ADMIN})
    assert settings.admin_token == ADMIN and settings.reviewer_token == secret_reviewer
    assert ADMIN not in repr(settings)  # tokens never end up in a log line


@pytest.mark.parametrize("secrets, environ, message", [
    ({}, {"MLFIX_REVIEWER_TOKEN": REVIEWER}, "no admin token"),
    ({}, {"MLFIX_ADMIN_TOKEN": "short"}, "too short"),
    ({}, {"MLFIX_ADMIN_TOKEN": ADMIN, "MLFIX_REVIEWER_TOKEN": ADMIN}, "the same"),
    ({"mlfix": {"admin_token": 12345}}, {}, "must be a string"),
    ({"mlfix": {"admins": [1, 2]}}, {}, "list of e-mail"),
])
def test_unusable_settings_say_what_to_change(secrets, environ, message):
    with pytest.raises(AuthConfigError, match=message):
        load_settings(secrets, environ)


def test_token_gives_the_role():
    assert login_with_token(ADMIN, "Ann", environ=ENV) == Identity("Ann", "admin", "token")
    assert login_with_token(REVIEWER, " Bob ", environ=ENV) == Identity("Bob", "reviewer", "token")
    assert login_with_token(f"  {REVIEWER}\n", "Bob", environ=ENV).role == "reviewer"  # pasted with spaces


@pytest.mark.parametrize("token", ["wrong-token-0123456789", ADMIN[:-1], ADMIN + "x", ADMIN.upper(), None, 5])
def test_wrong_token_is_refused(token):
    with pytest.raises(AuthError, match="wrong token|enter the access token"):
        login_with_token(token, "Ann", environ=ENV)


def test_empty_token_and_admin_only_server():
    with pytest.raises(AuthError, match="enter the access token"):
        login_with_token("", "Ann", environ=ENV)
    only_admin = {"MLFIX_ADMIN_TOKEN": ADMIN}
    assert login_with_token(ADMIN, "Ann", environ=only_admin).is_admin
    with pytest.raises(AuthError, match="wrong token"):
        login_with_token(REVIEWER, "Bob", environ=only_admin)


def test_token_login_needs_token_mode():
    with pytest.raises(AuthConfigError, match="open mode"):
        login_with_token(ADMIN, "Ann", environ={})


@pytest.mark.parametrize("name, message", [
    ("", "enter your name"), ("   ", "enter your name"), (None, "enter your name"),
    ("x" * 65, "too long"), ("ann\x00", "control"), ("ann\u200b", "control"), ("a\x1b[31m", "control"),
])
def test_bad_names_are_refused(name, message):
    with pytest.raises(AuthError, match=message):
        login_with_token(ADMIN, name, environ=ENV)


def test_names_are_cleaned():
    assert validate_name("  Ann \t Lee ") == "Ann Lee"
    assert validate_name("Zoë") == "Zoë" and validate_name("x" * 64) == "x" * 64


@given(st.text(max_size=80))
def test_a_validated_name_is_printable_trimmed_and_short(name):
    try:
        cleaned = validate_name(name)
    except AuthError:
        return
    assert cleaned == cleaned.strip() and cleaned.isprintable() and 0 < len(cleaned) <= auth.MAX_NAME_LENGTH
    assert validate_name(cleaned) == cleaned


def test_oidc_identity_and_admins():
    secrets = {"auth": {"client_id": "c"}, "mlfix": {"admins": ["Ann@X.org"]}}
    ann = identity_from_user({"is_logged_in": True, "email": "ann@x.org", "name": "Ann"}, secrets, {})
    assert ann == Identity("ann@x.org", "admin", "oidc", "ann@x.org")
    bob = identity_from_user({"is_logged_in": True, "email": "bob@x.org"}, secrets, {})
    assert bob.role == "reviewer"
    with pytest.raises(AuthError, match="ann@x.org is not verified"):  # never an admin, nor anyone's name
        identity_from_user({"is_logged_in": True, "email": "ann@x.org", "email_verified": False}, secrets, {})
    assert identity_from_user({"is_logged_in": True, "name": "Carl"}, secrets, {}).name == "Carl"
    with pytest.raises(AuthError, match="sign in"):
        identity_from_user({"is_logged_in": False}, secrets, {})


def test_oidc_reviewer_allow_list():
    secrets = {"auth": {"client_id": "c"}, "mlfix": {"admins": ["boss@y.com"], "reviewers": ["*@x.org"]}}
    assert identity_from_user({"is_logged_in": True, "email": "dan@x.org"}, secrets, {}).role == "reviewer"
    assert identity_from_user({"is_logged_in": True, "email": "boss@y.com"}, secrets, {}).is_admin
    with pytest.raises(AuthError, match="not on this server's list"):
        identity_from_user({"is_logged_in": True, "email": "eve@evil.org"}, secrets, {})
    env = {"MLFIX_ADMINS": "a@b.c, d@e.f"}
    assert load_settings({"auth": {"client_id": "c"}}, env).admins == {"a@b.c", "d@e.f"}


def test_reviewer_may_only_review():
    bob, ann = Identity("bob", "reviewer", "token"), Identity("ann", "admin", "token")
    require(bob, "review")
    for action in ("create_project", "open_project", "train", "index", "export", "resolve_conflicts"):
        assert can(ann, action) and not can(bob, action)
        with pytest.raises(PermissionDenied, match="bob is a reviewer: only an admin may"):
            require(bob, action)
    with pytest.raises(PermissionError):  # PermissionDenied is a PermissionError
        require(None, "review")
    with pytest.raises(ValueError, match="unknown action"):
        can(ann, "fly")


def test_open_mode_is_admin_and_identity_checks_roles():
    assert auth.open_identity("me").is_admin
    with pytest.raises(ValueError, match="role"):
        Identity("x", "owner")
