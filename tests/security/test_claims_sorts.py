"""Two reviewers who page or sort differently never get the same images (#15, item 9).

Before, a claim was on "page 3 of cat, sorted by score, 100 per page": another sort or page size was
another claim unit, so two reviewers could hold the same images. Now the Review page claims the
sample rows on screen (``ClaimBook.claim_rows``) and leaves out of a reviewer's pages what someone
else holds (``team.free_page``), whatever the order or page size.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mlfix.review.claims import ClaimBook
from mlfix.review.store import sqlite_url
from mlfix.ui.team import CLAIM_UNIT, free_page

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc)
N = 60


def open_page(book: ClaimBook, reviewer: str, order: np.ndarray, page: int, size: int) -> set[int]:
    """What the Review page does for one reviewer: the free images of the page, claimed (retried once)."""
    for _ in range(2):
        _, chosen, _, _ = free_page(order, book.held_by_others(CLAIM_UNIT, reviewer), page, size)
        if not book.claim_rows(CLAIM_UNIT, order[chosen], reviewer):
            return set(order[chosen].tolist())
    raise AssertionError("claimed twice without success")


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), steps=st.lists(
    st.tuples(st.sampled_from(["ann", "bob"]), st.integers(0, 3), st.sampled_from([10, 15, 20]), st.integers(0, 4)),
    min_size=2, max_size=8))
def test_different_sorts_and_page_sizes_never_share_an_image(tmp_path_factory, seed, steps):
    rng = np.random.default_rng(seed)
    sorts = [rng.permutation(N) for _ in range(4)]  # four orders of the same 60 sample rows
    url = sqlite_url(tmp_path_factory.mktemp("claims") / "reviews.db")
    with ClaimBook(url, clock=lambda: T0) as book:
        on_screen: dict[str, set[int]] = {}
        for reviewer, sort, size, page in steps:
            on_screen[reviewer] = open_page(book, reviewer, sorts[sort], page, size)
            held = book.active(CLAIM_UNIT)
            mine = {r: set(held.loc[held["reviewer"] == r, "page"]) for r in ("ann", "bob")}
            assert not mine["ann"] & mine["bob"]
            assert on_screen[reviewer] == mine[reviewer]  # exactly the images on screen are held
        if len(on_screen) == 2:
            assert not on_screen["ann"] & on_screen["bob"]


def test_a_page_of_another_size_and_sort_skips_what_is_held(tmp_path):
    with ClaimBook(sqlite_url(tmp_path / "reviews.db"), clock=lambda: T0) as book:
        ann = open_page(book, "ann", np.arange(N), 0, 20)  # rows 0-19, by similarity
        by_score = np.arange(N)[::-1]  # another sort: 59, 58, ... 0
        bob = open_page(book, "bob", by_score, 1, 15)  # bob's second page of 15
        assert ann == set(range(20)) and bob == set(range(30, 45))  # 44..30: past ann's, none of them
        free, chosen, page, pages = free_page(by_score, book.held_by_others(CLAIM_UNIT, "bob"), 9, 15)
        assert (page, pages, int(free.sum())) == (2, 3, 40)  # 40 images left to bob: 3 pages, the last clamped
        assert by_score[chosen].tolist() == list(range(29, 19, -1))
