"""mlfix: the Streamlit app. Run ``streamlit run app.py -- --project DIR`` (or ``mlfix serve``).

A shared sidebar (project, reviewer) and one page per step: Dataset, Training, Codebook, Review,
Export. Pages are thin: they call :mod:`mlfix`.
"""

from pathlib import Path

import streamlit as st

from mlfix.ui import sidebar

HERE = Path(__file__).resolve().parent

st.set_page_config(layout="wide", page_title="mlfix")

PAGES = [
    ("pages/dataset.py", "Dataset", ":material/photo_library:"),
    ("pages/training.py", "Training", ":material/model_training:"),
    ("pages/codebook.py", "Codebook", ":material/grid_view:"),
    ("pages/review.py", "Review", ":material/fact_check:"),
    ("pages/export.py", "Export", ":material/download:"),
]

# A page file that is not there yet (built by another part of the project) is left out rather
# than breaking the whole app.
navigation = st.navigation([st.Page(str(HERE / path), title=title, icon=icon,
                                    url_path=Path(path).stem)
                            for path, title, icon in PAGES if (HERE / path).exists()])
sidebar.render()
navigation.run()
