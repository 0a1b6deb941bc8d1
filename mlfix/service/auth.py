"""Who is reviewing, and what they may do: identity and the two roles (admin, reviewer).

No Streamlit here: the app passes in what it reads from ``st.secrets`` (a mapping) and
``os.environ``; the functions are plain and testable.

Modes (:func:`auth_mode`)
    ``oidc``  an ``[auth]`` section is configured in ``.streamlit/secrets.toml``: people sign in with
              ``st.login`` (OpenID Connect); the identity is their e-mail (or name); admins are the
              e-mails listed in ``[mlfix] admins = ["ann@example.org"]`` (or ``MLFIX_ADMINS``,
              comma-separated); ``[mlfix] reviewers = ["*@example.org"]`` optionally limits who may
              review (shell-style patterns; empty = anyone the identity provider lets in).
    ``token`` an access token is configured: ``MLFIX_ADMIN_TOKEN`` / ``MLFIX_REVIEWER_TOKEN`` in the
              environment, or ``[mlfix] admin_token = "..."`` / ``reviewer_token = "..."`` in the
              secrets (the environment wins when both set one). A person types a token and their
              name; the token gives the role. A token set but empty, or weak, is an AuthConfigError.
    ``open``  nothing configured (no token set at all): local single-user use, everyone is admin;
              ``mlfix serve`` refuses it on a non-loopback address without ``--insecure``.

Roles: ``admin`` creates and opens projects, trains, indexes, exports, resolves conflicts and
reviews; ``reviewer`` reviews only (see :data:`ACTIONS`).

Example::

    settings = load_settings(st.secrets.to_dict(), os.environ)
    if settings.mode == "token":
        me = login_with_token(typed_token, typed_name, settings=settings)   # AuthError if wrong
    require(me, "train")      # PermissionDenied for a reviewer: "only an admin may train ..."
"""

from __future__ import annotations

import fnmatch
import hmac
import os
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from mlfix.errors import AuthConfigError, AuthError, PermissionDenied

MODES = ("open", "token", "oidc")
ROLES = ("admin", "reviewer")
MIN_TOKEN_LENGTH = 16
MIN_TOKEN_DISTINCT = 8  # "aaaaaaaaaaaaaaaa" is long enough and guessed at once; token_urlsafe(24) has ~24
MAKE_TOKEN = "`python -c 'import secrets; print(secrets.token_urlsafe(24))'`"
MAX_NAME_LENGTH = 64
ENV_ADMIN_TOKEN = "MLFIX_ADMIN_TOKEN"
ENV_REVIEWER_TOKEN = "MLFIX_REVIEWER_TOKEN"
ENV_ADMINS = "MLFIX_ADMINS"
ENV_REVIEWERS = "MLFIX_REVIEWERS"
SECTION = "mlfix"

# What each role may do. Everything a page offers maps to one of these actions.
ACTIONS: dict[str, frozenset[str]] = {
    "review": frozenset({"admin", "reviewer"}),         # decide on samples, claim pages, see the grid
    "view": frozenset({"admin", "reviewer"}),           # read-only pages (dataset counts, codebook)
    "open_project": frozenset({"admin"}),               # switch the server to another project folder
    "create_project": frozenset({"admin"}),
    "train": frozenset({"admin"}),
    "index": frozenset({"admin"}),
    "export": frozenset({"admin"}),
    "resolve_conflicts": frozenset({"admin"}),          # pick the final-label rule, see conflicts
    "publish_view": frozenset({"admin"}),
    "release_claims": frozenset({"admin"}),             # free a page someone else holds
    "manage_classes": frozenset({"admin"}),             # add, rename and merge classes
}
_WHAT = {"review": "review", "view": "view pages", "open_project": "open another project",
         "create_project": "create a project", "train": "train the model", "index": "index the project",
         "export": "export labels", "resolve_conflicts": "resolve conflicts", "publish_view": "publish views",
         "release_claims": "release another reviewer's pages", "manage_classes": "add, rename or merge classes"}


@dataclass(frozen=True)
class Identity:
    """A signed-in person: ``name`` recorded with decisions, ``role`` admin or reviewer.

    ``via``: how they signed in (open, token, oidc); ``email`` when the identity provider gave one.
    """

    name: str
    role: str
    via: str = "open"
    email: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")
        if self.via not in MODES:
            raise ValueError(f"via must be one of {MODES}, got {self.via!r}")

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class AuthSettings:
    """Resolved settings (see :func:`load_settings`). Tokens are never shown by ``repr``."""

    mode: str
    admin_token: str | None = field(default=None, repr=False)
    reviewer_token: str | None = field(default=None, repr=False)
    admins: frozenset[str] = frozenset()
    reviewers: tuple[str, ...] = ()


def _section(secrets: Mapping[str, Any] | None, name: str) -> Mapping[str, Any]:
    if not secrets:
        return {}
    try:
        value = secrets.get(name)
    except Exception:  # st.secrets raises when no secrets file exists
        return {}
    return value if isinstance(value, Mapping) else {}


def _text_setting(secrets_section: Mapping[str, Any], key: str, environ: Mapping[str, str], env: str) -> str | None:
    """A token from the environment (wins) or the secrets; None when neither sets it.

    Set but empty (``MLFIX_ADMIN_TOKEN=`` when the command meant to make it failed) is an error, never
    "not configured": an empty token silently meant open mode, where every visitor is admin.
    """
    if env in environ:
        where, value = env, environ[env]
    elif key in secrets_section:
        where, value = f"[{SECTION}] {key}", secrets_section[key]
    else:
        return None
    if value is None or (isinstance(value, str) and not value.strip()):
        raise AuthConfigError(f"{where} is set but empty: give it a token of at least {MIN_TOKEN_LENGTH} random "
                              f"characters ({MAKE_TOKEN}), or remove it to run without sign-in on this machine only")
    if not isinstance(value, str):
        raise AuthConfigError(f"[{SECTION}] {key} must be a string, got {type(value).__name__}")
    return value.strip()


def _weak_token(role: str, token: str) -> str | None:
    """Why ``token`` is too weak to guard a server (too short, too few different characters), or None."""
    if len(token) < MIN_TOKEN_LENGTH:
        return f"the {role} token is too short ({len(token)} characters): use at least {MIN_TOKEN_LENGTH} random " \
               f"characters, e.g. {MAKE_TOKEN}"
    if len(set(token)) < MIN_TOKEN_DISTINCT:
        return f"the {role} token is too easy to guess ({len(set(token))} different characters): use at least " \
               f"{MIN_TOKEN_DISTINCT} different ones, e.g. {MAKE_TOKEN}"
    return None


def _list_setting(secrets_section: Mapping[str, Any], key: str, environ: Mapping[str, str], env: str) -> list[str]:
    """A list of addresses from the environment (comma-separated, wins) or the secrets.

    Set but naming nobody (``MLFIX_REVIEWERS=``, ``reviewers = [""]``) is an error: an empty
    ``reviewers`` means "anyone the identity provider lets in", so a blank must not turn into it.
    """
    if env in environ:
        where, value = env, [v.strip() for v in environ[env].split(",")]
    else:
        where, value = f"[{SECTION}] {key}", secrets_section.get(key, [])
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise AuthConfigError(f"[{SECTION}] {key} must be a list of e-mail addresses, e.g. "
                                  f"{key} = [\"ann@example.org\"]")
    cleaned = [v.strip() for v in value if v.strip()]
    if value and not cleaned:
        raise AuthConfigError(f"{where} is set but names nobody: list e-mail addresses (e.g. ann@example.org), "
                              "or remove it")
    return cleaned


def load_settings(secrets: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> AuthSettings:
    """Read the auth settings from the secrets mapping and the environment; check them.

    ``secrets``: what the app reads from ``st.secrets`` (``{"auth": {...}, "mlfix": {...}}``);
    ``environ``: defaults to ``os.environ``. Raises :class:`AuthConfigError` for a token (or list)
    that is set but empty, a reviewer token without an admin token, the same token for both roles,
    or a weak token (shorter than 16 characters, or fewer than 8 different ones).

    Example: ``load_settings({}, {"MLFIX_ADMIN_TOKEN": "admin-token-0123456789"}).mode == "token"``;
    ``load_settings({}, {"MLFIX_ADMIN_TOKEN": ""})`` raises "MLFIX_ADMIN_TOKEN is set but empty ...".
    """
    environ = os.environ if environ is None else environ
    section = _section(secrets, SECTION)
    admins = frozenset(a.lower() for a in _list_setting(section, "admins", environ, ENV_ADMINS))
    reviewers = tuple(r.lower() for r in _list_setting(section, "reviewers", environ, ENV_REVIEWERS))
    if _section(secrets, "auth"):
        return AuthSettings("oidc", admins=admins, reviewers=reviewers)
    admin = _text_setting(section, "admin_token", environ, ENV_ADMIN_TOKEN)
    reviewer = _text_setting(section, "reviewer_token", environ, ENV_REVIEWER_TOKEN)
    if admin is None and reviewer is None:
        return AuthSettings("open")
    if admin is None:
        raise AuthConfigError(f"a reviewer token is set but no admin token: set {ENV_ADMIN_TOKEN} (or "
                              f"[{SECTION}] admin_token) too, or nobody can administer the server")
    for role, token in (("admin", admin), ("reviewer", reviewer)):
        weak = None if token is None else _weak_token(role, token)
        if weak:
            raise AuthConfigError(weak)
    if reviewer is not None and hmac.compare_digest(admin.encode(), reviewer.encode()):
        raise AuthConfigError("the admin and reviewer tokens are the same: give them different values")
    return AuthSettings("token", admin_token=admin, reviewer_token=reviewer, admins=admins, reviewers=reviewers)


def auth_mode(secrets: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> str:
    """``"oidc"`` (an ``[auth]`` section), ``"token"`` (a token is set) or ``"open"`` (nothing set).

    Example: ``auth_mode({}, {}) == "open"``
    """
    return load_settings(secrets, environ).mode


def validate_name(name: Any) -> str:
    """The reviewer's name, cleaned (spaces collapsed), or :class:`AuthError` saying what is wrong.

    A name is 1-64 printable characters. Example: ``validate_name("  Ann  Lee ") == "Ann Lee"``
    """
    if not isinstance(name, str):
        raise AuthError("enter your name")
    cleaned = re.sub(r"\s+", " ", unicodedata.normalize("NFC", name)).strip()
    if not cleaned:
        raise AuthError("enter your name: it is recorded with every decision you make")
    if len(cleaned) > MAX_NAME_LENGTH:
        raise AuthError(f"the name is too long ({len(cleaned)} characters): use at most {MAX_NAME_LENGTH}")
    if not cleaned.isprintable():
        raise AuthError("the name has control or invisible characters: type it again with letters, digits "
                        "and punctuation only")
    return cleaned


def open_identity(name: str) -> Identity:
    """Open mode (nothing configured): the local user, admin. ``name`` is validated."""
    return Identity(validate_name(name), "admin", "open")


def login_with_token(token: Any, name: Any, secrets: Mapping[str, Any] | None = None,
                     environ: Mapping[str, str] | None = None, *, settings: AuthSettings | None = None) -> Identity:
    """Sign in with an access token and a name; the token decides the role.

    Raises :class:`AuthError` ("wrong token", or what is wrong with the name), and
    :class:`AuthConfigError` when the server is not in token mode. Both tokens are always compared
    (``hmac.compare_digest``), so the answer time does not tell which one nearly matched.

    Example: ``login_with_token(typed, "ann", settings=s) -> Identity("ann", "reviewer", "token")``
    """
    settings = settings or load_settings(secrets, environ)
    if settings.mode != "token":
        raise AuthConfigError(f"the server is in {settings.mode} mode: "
                              + ("sign in with the button" if settings.mode == "oidc" else "no token is needed"))
    cleaned = validate_name(name)
    typed = (token if isinstance(token, str) else "").strip().encode()
    is_admin = hmac.compare_digest(typed, settings.admin_token.encode())
    is_reviewer = settings.reviewer_token is not None and hmac.compare_digest(typed, settings.reviewer_token.encode())
    if not typed:
        raise AuthError("enter the access token the admin gave you")
    if not (is_admin or is_reviewer):
        raise AuthError("wrong token: check it with the admin who runs this server")
    return Identity(cleaned, "admin" if is_admin else "reviewer", "token")


def identity_from_user(user: Mapping[str, Any], secrets: Mapping[str, Any] | None = None,
                       environ: Mapping[str, str] | None = None, *, settings: AuthSettings | None = None) -> Identity:
    """The identity of a person signed in through OIDC (``st.user`` as a mapping).

    The name is the e-mail (else the name, else the subject id); the role is admin when the e-mail
    is in the admins list. Raises :class:`AuthError` when nobody is signed in, when the provider says
    the e-mail is unverified (``email_verified`` false: anyone could have typed that address, and it
    would be the name on their decisions), or when the e-mail is not allowed by ``reviewers``.

    Example: ``identity_from_user({"is_logged_in": True, "email": "ann@x.org"}, settings=s)``
    """
    settings = settings or load_settings(secrets, environ)
    if not user or not user.get("is_logged_in", False):
        raise AuthError("sign in to review")
    email = user.get("email")
    email = email.strip().lower() if isinstance(email, str) and email.strip() else None
    if email is not None and _unverified(user.get("email_verified")):
        raise AuthError(f"your identity provider says the address {email[:MAX_NAME_LENGTH]} is not verified: "
                        "verify it with the provider, then sign in again")
    shown = email or user.get("name") or user.get("sub")
    if not isinstance(shown, str) or not shown.strip():
        raise AuthError("the identity provider gave neither an e-mail nor a name: ask the admin to request the "
                        "'openid email profile' scopes")
    cleaned = validate_name(shown[:MAX_NAME_LENGTH])
    if settings.reviewers and not (email and any(fnmatch.fnmatchcase(email, p) for p in settings.reviewers)) \
            and (email is None or email not in settings.admins):
        raise AuthError(f"{cleaned} is not on this server's list of reviewers: ask the admin to add you")
    role = "admin" if email is not None and email in settings.admins else "reviewer"
    return Identity(cleaned, role, "oidc", email)


def _unverified(flag: Any) -> bool:
    """Whether the provider's ``email_verified`` claim says no (False, or "false" as some providers send)."""
    if isinstance(flag, str):
        return flag.strip().lower() in ("false", "0", "no", "")
    return flag is False or (type(flag) is int and flag == 0)


def can(identity: Identity | None, action: str) -> bool:
    """Whether ``identity`` may do ``action`` (one of :data:`ACTIONS`); nobody signed in may do nothing."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; use one of {sorted(ACTIONS)}")
    return identity is not None and identity.role in ACTIONS[action]


def require(identity: Identity | None, action: str) -> None:
    """Raise :class:`PermissionDenied` unless ``identity`` may do ``action``.

    Example: ``require(Identity("bob", "reviewer"), "train")`` raises
    ``PermissionDenied("bob is a reviewer: only an admin may train the model ...")``.
    """
    if can(identity, action):
        return
    if identity is None:
        raise PermissionDenied(f"sign in first: you need to be signed in to {_WHAT[action]}")
    raise PermissionDenied(f"{identity.name} is a {identity.role}: only an admin may {_WHAT[action]}. "
                           "Ask the admin who runs this server.")
