"""mlfix: the Streamlit app. Run ``streamlit run app.py -- --project DIR`` (or ``mlfix serve``).

A shared sidebar (project, reviewer) and one page per step: Dataset, Training, Codebook, Review,
Export. Pages are thin: they call :mod:`mlfix`.
"""

from pathlib import Path

import streamlit as st

from mlfix.ui import access, sidebar

HERE = Path(__file__).resolve().parent

st.set_page_config(layout="wide", page_title="mlfix")

PAGES = [
    ("app_pages/dataset.py", "Dataset", ":material/photo_library:"),
    ("app_pages/training.py", "Training", ":material/model_training:"),
    ("app_pages/codebook.py", "Codebook", ":material/grid_view:"),
    ("app_pages/review.py", "Review", ":material/fact_check:"),
    ("app_pages/export.py", "Export", ":material/download:"),
]

# A page file that is not there yet (built by another part of the project) is left out rather
# than breaking the whole app.
available = [(path, title, icon) for path, title, icon in PAGES if (HERE / path).exists()]
# Each role gets its pages only (a reviewer: Review and Codebook); before signing in, none.
allowed = set(access.allowed_pages([Path(path).stem for path, _, _ in available]))
pages = [st.Page(str(HERE / path), title=title, icon=icon, url_path=Path(path).stem,
                 default=Path(path).stem == "review" and "dataset" not in allowed)
         for path, title, icon in available if Path(path).stem in allowed]
navigation = st.navigation(pages or [st.Page(access.sign_in_page, title="Sign in", icon=":material/login:",
                                             url_path="sign-in")])
sidebar.render()
navigation.run()
