"""Codebook: what the model has learned, as visual words.

Which codebook made the words (KMeans or a learned VQ codebook, the project's ``codebook`` setting)
and, for a VQ one, how its fit went; how often each word occurs; for one word, the image patches
where it fires and the classes it occurs in; for one image, its word grid drawn over it and the
weight each cell has in the combined order (the object in focus: a centre prior times the word's rarity). Everything heavy is cached (see
:mod:`mlfix.ui.loaders`).
"""

from __future__ import annotations

import numpy as np
import plotly.express as px
import streamlit as st

from mlfix.project import Project
from mlfix.ui import access, codebook_info, loaders, state, text

access.require("view")  # not only the menu: a page file run directly is checked too

PATCHES = 48
DISPLAY = 320  # px of the image and its word-grid overlay


def _frequency_section(project: Project, freq, fit: dict) -> None:
    st.subheader("How often each word occurs")
    used = int((freq["images"] > 0).sum())
    ranked = freq.sort_values(["images", "word"], ascending=[False, True], ignore_index=True)
    ranked["rank"] = np.arange(1, len(ranked) + 1)
    c1, c2, c3 = st.columns(3)
    c1.metric("Words", f"{len(freq):,}")
    c2.metric("Words in use", f"{used:,}")
    c3.metric("Images", f"{len(project.samples):,}")
    st.caption(codebook_info.codebook_caption(fit, len(freq), used))
    vq = codebook_info.vq_fit_text(fit)
    if vq:
        st.caption(vq)
    fig = px.bar(ranked, x="rank", y="images", hover_data={"word": True, "cells": True, "rank": False},
                 labels={"rank": "words, most frequent first", "images": "images containing the word"})
    fig.update_traces(marker_color="#2563eb", marker_line_width=0)
    fig.update_layout(height=280, margin=dict(l=10, r=10, t=10, b=10), bargap=0)
    st.plotly_chart(fig, key="cb_frequency", width="stretch")
    if used < len(freq):
        st.caption(f"{len(freq) - used} word(s) occur in no image: the codebook is larger than this "
                   "dataset needs, or those centroids sit between clusters.")


def _word_section(project: Project, freq) -> None:
    st.subheader("One word: where it fires")
    ranked = freq[freq["images"] > 0].sort_values(["images", "word"], ascending=[False, True])
    if ranked.empty:
        st.info("No word occurs in any image.")
        return
    counts = dict(zip(ranked["word"].tolist(), ranked["images"].tolist()))
    words = list(counts)
    # Words in most images are background; start on the most frequent word that is distinctive.
    half = len(project.samples) / 2
    start = next((i for i, w in enumerate(words) if counts[w] <= half), 0)
    word = st.selectbox("Word (most frequent first)", words, index=start, key="cb_word",
                        format_func=lambda w: f"word {w} · in {counts[w]:,} images")
    left, right = st.columns([3, 2], gap="large")
    with left:
        patches = loaders.word_patches(project, int(word), limit=PATCHES)
        st.caption(f"{len(patches)} patches from {min(counts[word], PATCHES)} of the {counts[word]:,} "
                   "images that contain it (the cell outlined in red, with some context around it).")
        if patches:
            st.image([p["jpeg"] for p in patches], width=72,
                     caption=[text.plain(p["label"]) for p in patches])
    with right:
        classes = loaders.word_classes(project, int(word))
        st.markdown("**Classes it occurs in**")
        shown = classes.head(30).assign(label=lambda t: t["label"].map(text.html_text))  # Plotly renders HTML
        fig = px.bar(shown, x="images", y="label", orientation="h",
                     hover_data={"share": ":.0%"}, labels={"images": "images with the word", "label": ""})
        fig.update_yaxes(type="category", autorange="reversed")
        fig.update_layout(height=max(200, 22 * min(len(classes), 30) + 60),
                          margin=dict(l=10, r=10, t=10, b=10))
        st.plotly_chart(fig, key="cb_word_classes", width="stretch")


def _image_section(project: Project) -> None:
    st.subheader("One image: its word grid")
    samples = project.samples
    labels = ["(all)"] + project.labels
    c1, c2 = st.columns([1, 2])
    label = c1.selectbox("Class", labels, key="cb_image_class", format_func=text.visible)
    pool = samples if label == "(all)" else samples[samples["label"] == label]
    ids = pool["sample_id"].astype(str).tolist()[:2000]  # a picker, not a browser: keep it light
    if not ids:
        st.info("No samples in this class.")
        return
    sample_id = c2.selectbox("Image", ids, key="cb_image", format_func=text.visible)
    try:
        plain = loaders.model_view_png(project, sample_id, DISPLAY)
        png, grid = loaders.word_overlay(project, sample_id, display=DISPLAY)
    except Exception as err:  # an unreadable image: say so, keep the page
        st.error(f"Cannot show {text.code(sample_id)}: {text.plain(err)}")
        return
    focus, _ = loaders.focus_overlay(project, sample_id, display=DISPLAY)
    words, cells = np.unique(grid, return_counts=True)
    picture, overlay, weighed, side = st.columns([1, 1, 1, 1], gap="medium")
    with side:
        highlight = st.selectbox("Highlight a word", [None] + words.tolist(), key="cb_highlight",
                                 format_func=lambda w: "all words" if w is None else f"word {w}")
        if highlight is not None:
            png, grid = loaders.word_overlay(project, sample_id, display=DISPLAY, highlight=int(highlight))
        freq = loaders.word_frequency(project).set_index("word")
        table = {"word": words.tolist(), "cells here": cells.tolist(),
                 "images with it": freq.loc[words, "images"].tolist()}
        st.dataframe(table, hide_index=True, key="cb_image_words", height=260)
        st.caption(f"{grid.shape[0]}×{grid.shape[1]} cells, {len(words)} distinct words. Common words "
                   "(in many images) describe background; rare ones are distinctive.")
    label = samples.set_index("sample_id").loc[sample_id, "label"]
    picture.image(plain, width="stretch",
                  caption=f"{text.plain(sample_id)} · {text.plain(label)}, as the model sees it")
    overlay.image(png, width="stretch", caption="its visual words")
    weighed.image(focus, width="stretch", caption="what the combined order weighs: bright cells count "
                  "most (near the centre, rare words)")


project = state.require_project()
st.title("Codebook")
if not project.is_indexed:
    st.info("This project is not indexed yet: build the index on the **Training** page first.")
    st.stop()
frequency = loaders.word_frequency(project)
_frequency_section(project, frequency, codebook_info.codebook_fit(project))
_word_section(project, frequency)
_image_section(project)
