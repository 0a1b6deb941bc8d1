"""The review grid: a keyboard-driven custom component (``st.components.v2``, html/css/js, no build).

The browser side is ``grid.js`` / ``grid.css`` beside this file. How it talks to Python:

- Python sends ``data`` (see :func:`render`): the page's items ``{id, url, label, status,
  new_label, suggested}``, the label palette ``{label, key, color}``, the side panel of the focused
  image, the counter, the page, and ``acks`` (per browser session, the highest action ``seq`` that
  Python has applied).
- The browser sends one trigger, ``actions``: ``{session, focus, actions: [...]}`` with every action
  it has not seen acknowledged yet (see :mod:`mlfix.review.actions`) and the focused sample id (for
  the side panel's neighbours). One channel: a key press that decides and moves the focus costs
  one script run.

Thumbnails travel by URL, not inside ``data``: with ``server.enableStaticServing`` the page's
thumbnails are hard-linked (or copied) from ``<project>/thumbs`` into the app's ``static/`` folder
and served under ``app/static/``; without it (or when that folder cannot be written) they are sent
as data URLs (slower, but it works).

Unacknowledged actions are kept in the tab's ``sessionStorage`` too, so a reload or a remount of
the page delivers them (once) instead of losing them.

Example (a page)::

    grid.render(key="review", view="cat|0", items=items, palette=grid.palette(project.labels),
                counter={"reviewed": 3, "total": 180, "title": "Class: cat"},
                page={"index": 0, "count": 1}, acks=applier.last_seq, on_actions=apply_batch)
"""

from __future__ import annotations

import base64
import hmac
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import streamlit as st
from mlfix.atomic import atomic_path

HERE = Path(__file__).resolve().parent
COMPONENT_NAME = "mlfix_review_grid"
STATIC_SUBDIR = "mlfix-thumbs"
_MIRROR_SECRET = secrets.token_bytes(32)
MAX_MIRRORS = 16  # projects whose thumbnails stay linked under static/ (the rest are re-linked on use)
# Keys that are commands in the grid; labels get the digits, then the remaining letters.
COMMAND_KEYS = frozenset("foznp")
PALETTE_KEYS = tuple("1234567890") + tuple(c for c in "abcdeghijklmqrstuvwxy" if c not in COMMAND_KEYS)
# A qualitative palette readable as white-on-colour badges (Tableau 10, then darker variants).
COLORS = ("#1f77b4", "#e8590c", "#2b8a3e", "#c92a2a", "#7048e8", "#8c564b", "#d6336c", "#495057",
          "#808000", "#0c8599", "#364fc7", "#a61e4d", "#5c940d", "#862e9c", "#d9480f", "#087f5b")


def _read(name: str) -> str:
    text = (HERE / name).read_text(encoding="utf-8")
    # A one-line string with "/" or ending in ".js" is taken for a file path by Streamlit.
    return text if "\n" in text else text + "\n"


_renderer = st.components.v2.component(
    COMPONENT_NAME,
    html='<div id="mlfix-root"></div>\n',
    css=_read("grid.css"),
    js=_read("grid.js"),
    isolate_styles=True,
)


def palette(labels: Sequence[str]) -> list[dict]:
    """One entry per label: ``{label, key, color}``; keys 1-9, 0, then letters that are not commands.

    Labels past the 31st get no key (their chips in the palette are still clickable).

    >>> [p["key"] for p in palette(["a", "b", "c"])]
    ['1', '2', '3']
    >>> palette([str(i) for i in range(12)])[10]["key"]
    'a'
    """
    labels = [str(label) for label in labels]
    if len(set(labels)) != len(labels):
        raise ValueError("palette labels must be unique")
    return [{"label": label, "key": PALETTE_KEYS[i] if i < len(PALETTE_KEYS) else None,
             "color": COLORS[i % len(COLORS)]} for i, label in enumerate(labels)]


# ------------------------------------------------------------------------------------ thumbnails


def static_serving_dir() -> Path | None:
    """The app's ``static/`` folder when ``server.enableStaticServing`` is on, else None."""
    from streamlit import config
    from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

    if not config.get_option("server.enableStaticServing"):
        return None
    ctx = get_script_run_ctx(suppress_warning=True)
    main = getattr(ctx, "main_script_path", None) if ctx is not None else None
    if not main:
        return None
    return Path(main).resolve().parent / "static"


def thumbnail_urls(cache, sample_ids: Sequence[str], static_dir: Path | None = None) -> list[str]:
    """URLs the browser loads the thumbnails of ``sample_ids`` from (made on disk when missing).

    ``cache`` is a :class:`mlfix.data.thumbnails.ThumbnailCache`. With a ``static_dir`` the files are
    hard-linked there (copied across file systems) and the URLs are ``app/static/...``; without one
    they are ``data:`` URLs.
    """
    paths = cache.ensure_many(sample_ids)
    if static_dir is None:
        return [_data_url(p) for p in paths]
    # Keyed with a secret of this server process: a reviewer cannot work out the folder of another
    # project's thumbnails (mirrors of projects opened earlier stay under static/ for a while).
    project_key = hmac.new(_MIRROR_SECRET, str(Path(cache.folder).resolve()).encode(), "sha256").hexdigest()[:24]
    base = Path(static_dir) / STATIC_SUBDIR / project_key
    if not base.exists():
        _prune_mirrors(base.parent)  # (a missing or read-only folder: nothing to prune)
    urls = []
    for sample_id, path in zip(sample_ids, paths):
        rel = cache.relpath(sample_id)
        target = base / rel
        if str(target) not in _LINKED:
            try:
                if not target.exists():
                    _link_or_copy(path, target)
            except OSError:  # e.g. the app folder is read-only: this one goes inline
                urls.append(_data_url(path))
                continue
            _LINKED.add(str(target))
        urls.append(f"app/static/{STATIC_SUBDIR}/{project_key}/{rel}")
    return urls


_LINKED: set[str] = set()  # mirror files known to exist (this process): no stat per page view


def _prune_mirrors(folder: Path, keep: int = MAX_MIRRORS) -> None:
    """Forget the static mirrors of the projects used longest ago (temporary projects pile up)."""
    try:
        mirrors = sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    except OSError:
        return
    for old in mirrors[:max(0, len(mirrors) - keep + 1)]:
        shutil.rmtree(old, ignore_errors=True)
        prefix = str(old) + os.sep
        _LINKED.difference_update({p for p in _LINKED if p.startswith(prefix)})


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)  # a hard link: no copy, and the static route accepts it
    except FileExistsError:
        pass
    except OSError:
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)


def _data_url(path: Path) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


# ------------------------------------------------------------------------------------ the component


def render(*, key: str, view: str, items: list[dict], palette: list[dict], counter: dict,
           page: dict, acks: dict, panel: dict | None = None, errors: Sequence[str] = (),
           show_labels: bool = False, show_suggested: bool = False, batches: int = 0,
           on_actions: Callable[[], None] | None = None) -> Any:
    """Mount (or update) the grid; returns the component result (``.actions``: the last batch).

    Args:
        key: the component key; keep it fixed so the browser side keeps focus and selection.
        view: changes whenever the set of items changes (class, sort, page, view): the grid then
            resets its focus and selection.
        items: ``[{id, url, label, status, new_label, suggested}]`` for this page.
        palette: from :func:`palette`.
        counter: ``{reviewed, total, title}``; page: ``{index, count}``.
        acks: ``{browser_session: highest applied seq}``.
        panel: the focused image's side panel (``{id, url, label, ..., neighbours: [items]}``).
        show_labels: caption each tile with its given label (views and "all images" mix classes).
        show_suggested: mark unreviewed tiles whose suggested label differs (sorted by a score).
        batches: how many batches Python has received: a new value makes the browser re-read
            ``acks`` even when nothing else changed.
        on_actions: the callback that applies a batch; it runs before the script, when the browser
            sends one (read the batch from ``st.session_state[key]["actions"]``).
    """
    data = {"view": view, "items": items, "palette": palette, "counter": counter, "page": page,
            "acks": acks, "panel": panel, "errors": list(errors), "show_labels": bool(show_labels),
            "show_suggested": bool(show_suggested), "batches": int(batches)}
    return _renderer(key=key, data=data, on_actions_change=on_actions or _noop)


def _noop() -> None:
    return None
