"""Sign-in and roles in the app: who is using it, and which pages and controls they get.

The rules live in :mod:`mlfix.service.auth` (no Streamlit); this module reads ``st.secrets`` and
``os.environ``, draws the sign-in in the sidebar, and keeps the identity in the session.

- open mode (nothing configured): the local user is admin, named by the sidebar's reviewer field.
- token mode: a form (name + access token) in the sidebar; the identity lives in the session.
- oidc mode: a "Sign in" button (``st.login``); the identity comes from ``st.user``.

``app.py`` asks :func:`allowed_pages` which pages to put in the navigation; a reviewer gets the
Review and Codebook pages only, and nobody gets any page before signing in.
"""

from __future__ import annotations

import getpass
import os
import time

import streamlit as st

from mlfix.service import auth
from mlfix.ui import text

IDENTITY_KEY = "mlfix_identity"
REVIEWER_KEY = "mlfix_reviewer"
ENV_REVIEWER = "MLFIX_REVIEWER"
MESSAGE_KEY = "mlfix_sign_in_message"
FAILURES_KEY = "mlfix_sign_in_failures"
NAME_KEY = "mlfix_sign_in_name"
TOKEN_KEY = "mlfix_sign_in_token"
# What each page needs (the page file's stem -> action of mlfix.service.auth.ACTIONS).
PAGE_ACTIONS = {"dataset": "create_project", "training": "train", "codebook": "view", "review": "review",
                "clusters": "review", "duplicates": "view", "export": "export"}
SLOW_AFTER_FAILURES = 5  # then each further attempt of this browser session waits a little


def default_reviewer() -> str:
    try:
        return os.environ.get(ENV_REVIEWER) or getpass.getuser() or "reviewer"
    except Exception:  # no user name in some containers
        return "reviewer"


def reviewer() -> str:
    """The reviewer's name recorded with every decision (sidebar field, else the OS user)."""
    name = str(st.session_state.get(REVIEWER_KEY) or "").strip()
    return name or default_reviewer()


def set_reviewer(name: str) -> None:
    st.session_state[REVIEWER_KEY] = str(name).strip()


def read_secrets() -> dict:
    try:
        return st.secrets.to_dict()
    except Exception:  # no secrets file: nothing configured there
        return {}


def settings() -> auth.AuthSettings | None:
    """The auth settings, or None when they are unusable (the sidebar says why; nobody gets in)."""
    try:
        return auth.load_settings(read_secrets(), os.environ)
    except auth.AuthConfigError as err:
        st.session_state[MESSAGE_KEY] = f"The server's sign-in settings are unusable: {err}"
        return None


def mode() -> str | None:
    found = settings()
    return None if found is None else found.mode


def identity() -> auth.Identity | None:
    """Who is using this session, or None when they must sign in first."""
    found = settings()
    if found is None:
        return None
    if found.mode == "open":
        try:
            return auth.open_identity(reviewer())
        except auth.AuthError:
            return auth.Identity(default_reviewer() or "reviewer", "admin", "open")
    if found.mode == "token":
        me = st.session_state.get(IDENTITY_KEY)
        if not (isinstance(me, auth.Identity) and me.via == "token"):
            return None
        st.session_state[REVIEWER_KEY] = me.name  # decisions carry the signed-in name
        return me
    try:
        user = st.user.to_dict() if hasattr(st.user, "to_dict") else dict(st.user)
    except Exception:
        return None
    if not user.get("is_logged_in"):
        return None
    try:
        me = auth.identity_from_user(user, settings=found)
    except auth.AuthError as err:
        st.session_state[MESSAGE_KEY] = str(err)
        return None
    st.session_state[REVIEWER_KEY] = me.name
    return me


def can(action: str) -> bool:
    return auth.can(identity(), action)


def allowed_pages(pages: list[str]) -> list[str]:
    """The page stems of ``pages`` the current identity may open (none before signing in)."""
    me = identity()
    return [p for p in pages if auth.can(me, PAGE_ACTIONS.get(p, "create_project"))]


def require(action: str) -> auth.Identity:
    """The identity, if it may do ``action``; else a message in the page and ``st.stop()``."""
    me = identity()
    try:
        auth.require(me, action)
    except auth.PermissionDenied as err:
        st.warning(text.plain(err))  # the message names the identity: shown as typed
        st.stop()
    return me


# ------------------------------------------------------------------------------------ sign-in


def _sign_in_with_token() -> None:
    """Callback of the sign-in form: runs before the script, so the whole run sees the identity."""
    failures = int(st.session_state.get(FAILURES_KEY, 0))
    if failures >= SLOW_AFTER_FAILURES:
        time.sleep(min(10.0, 0.5 * (failures - SLOW_AFTER_FAILURES + 1)))  # guessing gets slow
    token = st.session_state.get(TOKEN_KEY, "")
    st.session_state[TOKEN_KEY] = ""  # never kept in the session
    try:
        me = auth.login_with_token(token, st.session_state.get(NAME_KEY, ""), settings=settings())
    except (auth.AuthError, auth.AuthConfigError) as err:
        st.session_state[FAILURES_KEY] = failures + 1
        st.session_state[MESSAGE_KEY] = str(err)
        return
    st.session_state[FAILURES_KEY] = 0
    st.session_state[IDENTITY_KEY] = me
    st.session_state[REVIEWER_KEY] = me.name
    st.session_state.pop(MESSAGE_KEY, None)


def _sign_out() -> None:
    st.session_state.pop(IDENTITY_KEY, None)
    st.session_state.pop(REVIEWER_KEY, None)


def render_sign_in() -> auth.Identity | None:
    """Draw the sign-in (or "signed in as") block into the sidebar; returns the identity."""
    found_mode = mode()
    me = identity()
    message = st.session_state.pop(MESSAGE_KEY, None)
    with st.sidebar:
        if found_mode is None:
            st.error(text.plain(message or "The server's sign-in settings are unusable."))
            return None
        if found_mode == "open":
            return me
        if me is not None:
            st.caption(f"Signed in as **{text.plain(me.name)}** ({me.role})")
            if found_mode == "oidc":
                st.button("Sign out", key="mlfix_sign_out", on_click=st.logout)
            else:
                st.button("Sign out", key="mlfix_sign_out", on_click=_sign_out)
            return me
        if found_mode == "oidc":
            st.button("Sign in", key="mlfix_sign_in", type="primary", on_click=st.login,
                      help="Sign in with your organisation's account.")
        else:
            with st.form("mlfix_sign_in_form", border=False):
                st.text_input("Your name", key=NAME_KEY, max_chars=auth.MAX_NAME_LENGTH,
                              help="Recorded with every decision you make.")
                st.text_input("Access token", key=TOKEN_KEY, type="password",
                              help="The reviewer (or admin) token from the person who runs this server.")
                st.form_submit_button("Sign in", type="primary", on_click=_sign_in_with_token)
        if message:
            st.error(text.plain(message))
    return None


def sign_in_page() -> None:
    """The only page before signing in."""
    st.title("mlfix")
    if mode() is None:
        st.error("This server's sign-in settings are unusable: see the sidebar, and tell the admin.")
    elif mode() == "oidc":
        st.info("Sign in with the button in the sidebar to review.")
    else:
        st.info("Sign in in the sidebar with your name and the access token the admin gave you.")


def page_denied(title: str, page: str) -> None:
    """What a page this identity may not open shows at its URL (``/export``), instead of "Page not found".

    ``page``: the page file's stem (a key of :data:`PAGE_ACTIONS`).
    """
    st.title(title)
    me = identity()
    if me is None:
        if mode() is None:
            st.error("This server's sign-in settings are unusable: see the sidebar, and tell the admin.")
        else:
            st.info(f"Sign in in the sidebar to open the **{title}** page.")
        return
    try:
        auth.require(me, PAGE_ACTIONS.get(page, "create_project"))
    except auth.PermissionDenied as err:
        st.warning(f"You may not open the **{title}** page: {text.plain(err)} Meanwhile, use the pages in the sidebar.")
