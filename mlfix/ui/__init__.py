"""Streamlit helpers for the mlfix app: session state, the shared sidebar, cached loaders.

The only package under ``mlfix/`` that imports Streamlit (besides ``app.py`` and ``app_pages/``).
"""
