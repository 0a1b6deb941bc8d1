"""The review grid: a keyboard-driven custom component (``st.components.v2``, html/css/js, no build).

The browser side is ``grid.js`` / ``grid.css`` beside this file. How it talks to Python:

- Python sends ``data`` (see :func:`render`): the page's items ``{id, url, label, status,
  new_label, suggested}``, the label palette ``{label, key, color}``, the side panel of the focused
  image, the counter, the page, ``acks`` (per browser session, the highest action ``seq`` that
  Python has applied) and ``reviewer_tag`` (stamped on each action as ``by``).
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
from mlfix.service import liveness

HERE = Path(__file__).resolve().parent
COMPONENT_NAME = "mlfix_review_grid"
STATIC_SUBDIR = "mlfix-thumbs"
_MIRROR_SECRET = secrets.token_bytes(32)
MAX_MIRRORS = 16  # projects whose thumbnails stay linked under static/ (the rest are re-linked on use)
# Keys that are commands in the grid (r: select the run); labels get the digits, then the other letters.
COMMAND_KEYS = frozenset("fozrnp")
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

    Labels past the 30th get no key (their chips in the palette are still clickable).

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
    forget_old_mirrors(static_dir)
    base = Path(static_dir) / STATIC_SUBDIR / project_key
    if not base.exists():
        _prune_mirrors(base.parent)  # (a missing or read-only folder: nothing to prune)
    liveness.hold(base)  # another server on this app folder leaves it alone while this one runs
    urls = []
    for sample_id, path in zip(sample_ids, paths):
        if path == cache.unavailable_path:  # the image source is down: not mirrored, retried next time
            urls.append(_data_url(path))
            continue
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
_FORGOTTEN: set[str] = set()  # static folders cleared of earlier processes' mirrors (this process)


def forget_old_mirrors(static_dir: Path | None) -> None:
    """Remove every thumbnail mirror that this server process did not make (once per process).

    The mirrors are served without sign-in, under a key made with this process's secret: the ones
    left by an earlier server (another secret) are only reachable by a leaked URL, so they go at
    the first call, which the app makes at start (``app.py``). A restart (say, to rotate the
    tokens) thus ends every leaked thumbnail URL. The mirrors of another server running on the same
    app folder stay (:mod:`mlfix.service.liveness`).
    """
    if static_dir is None or str(static_dir) in _FORGOTTEN:
        return
    _FORGOTTEN.add(str(static_dir))
    folder = Path(static_dir) / STATIC_SUBDIR
    mine = {Path(p).relative_to(folder).parts[0] for p in _LINKED if Path(p).is_relative_to(folder)}
    try:
        old = [p for p in folder.iterdir() if p.name not in mine and not liveness.held_elsewhere(p)]
    except OSError:  # no mirrors yet, or no static folder
        return
    for path in old:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _prune_mirrors(folder: Path, keep: int = MAX_MIRRORS) -> None:
    """Forget the static mirrors of the projects used longest ago (temporary projects pile up)."""
    try:
        mirrors = sorted((p for p in folder.iterdir() if p.is_dir() and not liveness.held_elsewhere(p)),
                         key=lambda p: p.stat().st_mtime)
    except OSError:
        return
    for old in mirrors[:max(0, len(mirrors) - keep + 1)]:
        liveness.release(old)
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
    from mlfix.data.thumbnails import read_thumbnail  # a link under thumbs/ is never followed

    return "data:image/jpeg;base64," + base64.b64encode(read_thumbnail(path)).decode("ascii")


# ------------------------------------------------------------------------------------ the component


SHOWN_PAGES = 32  # pages of a tab whose images it may still decide on (decisions queued before a page turn)


def shown_ids(key: str) -> set[str]:
    """The sample ids the grid ``key`` showed this tab (its last :data:`SHOWN_PAGES` pages): the only
    ones a batch from this tab may decide on."""
    pages = st.session_state.get(f"{key}__shown") or {}
    return {sample_id for ids in pages.values() for sample_id in ids}


def _remember_shown(key: str, view: str, ids: list[str]) -> None:
    pages = dict(st.session_state.get(f"{key}__shown") or {})
    pages.pop(view, None)
    pages[view] = tuple(ids)
    while len(pages) > SHOWN_PAGES:
        pages.pop(next(iter(pages)))
    st.session_state[f"{key}__shown"] = pages


def render(*, key: str, view: str, items: list[dict], palette: list[dict], counter: dict,
           page: dict, acks: dict, panel: dict | None = None, errors: Sequence[str] = (),
           show_labels: bool = False, show_suggested: bool = False, batches: int = 0,
           reviewer_tag: str | None = None, on_actions: Callable[[], None] | None = None) -> Any:
    """Mount (or update) the grid; returns the component result (``.actions``: the last batch).

    Args:
        key: the component key; keep it fixed so the browser side keeps focus and selection.
        view: changes whenever the set of items changes (class, sort, page, view): the grid then
            resets its focus and selection.
        items: ``[{id, url, label, status, new_label, suggested, run}]`` for this page (``run``,
            optional: the run id in a similarity order; the grid marks where a run starts, and
            ``r`` selects the run around the focused image).
        palette: from :func:`palette`.
        counter: ``{reviewed, total, title}``; page: ``{index, count}``.
        acks: ``{browser_session: highest applied seq}``.
        panel: the focused image's side panel (``{id, url, label, ..., neighbours: [items]}``).
        show_labels: caption each tile with its given label (views and "all images" mix classes).
        show_suggested: mark unreviewed tiles whose suggested label differs (sorted by a score).
        batches: how many batches Python has received: a new value makes the browser re-read
            ``acks`` even when nothing else changed.
        reviewer_tag: the signed-in reviewer's :func:`~mlfix.review.guard.reviewer_tag`; the grid
            stamps it on every action it makes, so a batch is never stored under someone else.
        on_actions: the callback that applies a batch; it runs before the script, when the browser
            sends one (read the batch from ``st.session_state[key]["actions"]``).

    The items' ids are remembered as shown to this tab (:func:`shown_ids`).
    """
    _remember_shown(key, view, [str(item["id"]) for item in items])
    data = {"reviewer_tag": reviewer_tag, "view": view, "items": items, "palette": palette, "counter": counter,
            "page": page, "acks": acks, "panel": panel, "errors": list(errors), "show_labels": bool(show_labels),
            "show_suggested": bool(show_suggested), "batches": int(batches)}
    return _renderer(key=key, data=data, on_actions_change=on_actions or _noop)


def _noop() -> None:
    return None
