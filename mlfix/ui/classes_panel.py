"""The classes of the Review page: the effective class list, the admin's Classes menu, label mode.

- :func:`effective` gives the page the class list (the grid's palette: number keys and chips; and
  the labels the action applier accepts) and the given labels as they read after renames and merges.
- :func:`section` draws, above the grid, the **Classes** menu (admins: add several classes at once,
  rename one, merge one into another; everyone: the list and its history) and, in label mode, a
  line that says so: a project with unlabeled images opens on all images in similarity order, and
  with no class yet the page asks for the first ones.

Class changes are stored as class events beside the decisions (:mod:`mlfix.review.classes`).
"""

from __future__ import annotations

import re
import pandas as pd
import streamlit as st

from mlfix.errors import ClassListError
from mlfix.review import classes as class_events
from mlfix.ui import access, team
from mlfix.ui.text import code, plain

NEW_KEY = "mlfix_classes_new"
RENAME_FROM_KEY = "mlfix_classes_rename_from"
RENAME_TO_KEY = "mlfix_classes_rename_to"
MERGE_FROM_KEY = "mlfix_classes_merge_from"
MERGE_INTO_KEY = "mlfix_classes_merge_into"
MESSAGE_KEY = "mlfix_classes_message"
NO_CLASSES = ("No classes yet: add the first ones under **Classes** (e.g. `cat, dog, bird`); then number key "
              "1, 2, ... (or a class chip) labels the focused image or the selected ones.")
NO_CLASSES_REVIEWER = "No classes yet: ask an admin to add them (Review page, **Classes**); then label with number keys."


def effective(store, originals: pd.Series, labels: list[str]) -> tuple[pd.Series, list[str]]:
    """``(originals, classes)``: the given labels by sample id as they read after the renames and
    merges, and the class list (given ``labels`` + classes added − renamed/merged away). While the
    store is down: the given ones."""
    events = team.read_or(lambda: class_events.read_events(store), lambda: None, key="class_events")
    if events is None or events.empty:
        return originals, list(labels)
    # Mapping every given label is a pass over the samples (seconds at 10M): once per class event.
    key = (getattr(store, "url", None), id(originals), len(originals), tuple(labels), int(events["id"].max()),
           len(events))
    source, mapped = _effective_labels(key, originals, events, labels)
    if source is not originals:  # another table that happens to share the id: not the one cached
        mapped = class_events.effective_labels(originals, events, labels)
    return mapped, class_events.class_list(labels, events)


@st.cache_resource(show_spinner=False, max_entries=4)
def _effective_labels(key: tuple, _originals: pd.Series, _events: pd.DataFrame,
                      _labels: list[str]) -> tuple[pd.Series, pd.Series]:
    return _originals, class_events.effective_labels(_originals, _events, _labels)


def split_names(text: str) -> list[str]:
    """Class names typed in one field: separated by commas or new lines, blanks dropped, in order.

    >>> split_names(" cat, dog,,bird\\ncat")
    ['cat', 'dog', 'bird']
    """
    return list(dict.fromkeys(n.strip() for n in re.split(r"[,\n]", text or "") if n.strip()))


def _say(kind: str, text: str) -> None:
    st.session_state[MESSAGE_KEY] = (kind, plain(text))  # names typed by a person: shown as text


def _change(book: class_events.ProjectClasses, kind: str, *names: str | None) -> bool:
    """One class change by the signed-in admin; False (and the reason on the page) when refused."""
    if not access.can("manage_classes"):
        _say("error", "Only an admin adds, renames or merges classes.")
        return False
    try:
        getattr(book, kind)(*names, reviewer=access.reviewer())
    except (ClassListError, ValueError) as err:
        _say("error", str(err))
        return False
    return True


def _add(book: class_events.ProjectClasses) -> None:
    names = split_names(st.session_state.get(NEW_KEY, ""))
    if not names:
        _say("error", "Type a class name (several: separate them with commas).")
        return
    added = [n for n in names if _change(book, "add", n)]
    if added:
        st.session_state[NEW_KEY] = ""
        kept = st.session_state.get(MESSAGE_KEY) if len(added) < len(names) else None
        _say("success", f"Added {', '.join(added)}." + (f" Not added: {kept[1]}" if kept else ""))


def _rename(book: class_events.ProjectClasses) -> None:
    name, new = st.session_state.get(RENAME_FROM_KEY), (st.session_state.get(RENAME_TO_KEY) or "").strip()
    if _change(book, "rename", name, new):
        st.session_state[RENAME_TO_KEY] = ""
        _say("success", f"Renamed {name} to {new}: its images and decisions now read {new}.")


def _merge(book: class_events.ProjectClasses) -> None:
    name, into = st.session_state.get(MERGE_FROM_KEY), st.session_state.get(MERGE_INTO_KEY)
    if _change(book, "merge", name, into):
        _say("success", f"Merged {name} into {into}: its images and decisions now read {into}.")


def _menu(book: class_events.ProjectClasses, classes: list[str], can_edit: bool) -> None:
    """The popover: the list, and for admins the forms that change it."""
    st.markdown("**Classes** (keys in order: 1-9, 0, then letters): " +
                (", ".join(code(c) for c in classes) if classes else "none yet"))
    if can_edit:
        with st.form("mlfix_classes_add_form", clear_on_submit=False, border=False):
            st.text_input("New classes", key=NEW_KEY, placeholder="cat, dog, bird",
                          help="One class, or several separated by commas.")
            st.form_submit_button("Add", icon=":material/add:", on_click=_add, args=(book,))
        if classes:
            left, right = st.columns(2)
            left.selectbox("Rename", classes, key=RENAME_FROM_KEY)
            left.text_input("to", key=RENAME_TO_KEY, placeholder="new name")
            left.button("Rename", key="mlfix_classes_rename", on_click=_rename, args=(book,))
        if len(classes) > 1:
            right.selectbox("Merge", classes, key=MERGE_FROM_KEY)
            right.selectbox("into", classes, index=1, key=MERGE_INTO_KEY)
            right.button("Merge", key="mlfix_classes_merge", on_click=_merge, args=(book,),
                         help="Every image and decision of the first class then counts as the second.")
    else:
        st.caption("Only an admin adds, renames or merges classes.")
    events = team.read_or(lambda: book.events, lambda: None, key="class_events")
    if events is not None and len(events):
        st.caption("History (kept for good; exported with the labels):")
        st.dataframe(events[["created_at", "reviewer", "kind", "name", "target"]], hide_index=True,
                     key="mlfix_classes_history")


def section(store, labels: list[str], classes: list[str], unlabeled: int, total: int) -> None:
    """Above the grid: the Classes menu, the last class change's message, and the label-mode line.

    ``labels``: the project's given labels; ``classes``: the effective list (:func:`effective`);
    ``unlabeled``, ``total``: images without a given label, and all images.
    """
    can_edit = access.can("manage_classes")
    left, right = st.columns([1, 7], vertical_alignment="center")
    with left.popover("Classes", icon=":material/label:", width="stretch"):
        _menu(class_events.ProjectClasses(store, labels), classes, can_edit)
    message = st.session_state.pop(MESSAGE_KEY, None)
    if message:
        (right.success if message[0] == "success" else right.error)(message[1])
    if not classes:
        right.info(NO_CLASSES if can_edit else NO_CLASSES_REVIEWER)
    elif unlabeled:
        # "given": decisions do not change this count, so "have no label" read wrong once labelled
        right.caption(f"Label mode: {unlabeled:,} of {total:,} images came without a label. All images are in "
                      f"similarity order: select a run of similar ones and press a class key.")
