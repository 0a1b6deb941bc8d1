"""mlfix: the Streamlit app. Run ``streamlit run app.py -- --project DIR`` (or ``mlfix serve``).

A shared sidebar (project, reviewer) and one page per step: Dataset, Training, Codebook, Review,
Export. Pages are thin: they call :mod:`mlfix`.
"""

from functools import partial
from pathlib import Path

import streamlit as st

from mlfix.ui import access, grid, sidebar, state

HERE = Path(__file__).resolve().parent

st.set_page_config(layout="wide", page_title="mlfix")
# Thumbnail mirrors an earlier server left under static/ (served without sign-in) go at start.
grid.forget_old_mirrors(grid.static_serving_dir())

PAGES = [
    ("app_pages/dataset.py", "Dataset", ":material/photo_library:"),
    ("app_pages/training.py", "Training", ":material/model_training:"),
    ("app_pages/codebook.py", "Codebook", ":material/grid_view:"),
    ("app_pages/review.py", "Review", ":material/fact_check:"),
    ("app_pages/duplicates.py", "Duplicates", ":material/content_copy:"),
    ("app_pages/clusters.py", "Clusters", ":material/workspaces:"),
    ("app_pages/export.py", "Export", ":material/download:"),
]

# A page file that is not there yet (built by another part of the project) is left out rather
# than breaking the whole app.
available = [(path, title, icon) for path, title, icon in PAGES if (HERE / path).exists()]
# Each role gets its pages only (a reviewer: Review and Codebook); before signing in, none.
allowed = set(access.allowed_pages([Path(path).stem for path, _, _ in available]))
pages = [st.Page(str(HERE / path), title=title, icon=icon, url_path=Path(path).stem)
         for path, title, icon in available if Path(path).stem in allowed]
# A page this identity may not open still answers its URL (/export), saying why ("sign in first",
# "admins only") instead of Streamlit's "Page not found"; hidden from the menu.
denied = [st.Page(partial(access.page_denied, title, Path(path).stem), title=title, icon=icon,
                  url_path=Path(path).stem, visibility="hidden")
          for path, title, icon in available if Path(path).stem not in allowed]
if pages:
    # Streamlit serves its default page at "/" only (its own /dataset would be "Page not found"), so
    # the default is a hidden "/" that moves on to the first page (a reviewer's: Review), keeping
    # the URL's query (?project=). Every page keeps its own URL for deep links and reloads.
    review = next((p for p in pages if p.url_path == "review"), None)
    first = review if review is not None and "dataset" not in allowed else pages[0]

    def first_page() -> st.Page:
        # A project whose images came without labels opens on Review too: label mode is where work starts.
        return review if review is not None and state.project_without_labels() else first

    home = st.Page(lambda: st.switch_page(first_page(), query_params=st.query_params.to_dict()),
                   title=first.title, icon=first.icon, url_path="", default=True, visibility="hidden")
else:
    # Same URL as the hidden "/" above, so signing in here goes on to the first page.
    home = st.Page(access.sign_in_page, title="Sign in", icon=":material/login:", url_path="", default=True)
navigation = st.navigation([home, *pages, *denied])
sidebar.render()
navigation.run()
