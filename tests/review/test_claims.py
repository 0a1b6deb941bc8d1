"""Page claims: taking, moving, renewing, releasing, expiry, and reviewers claiming at once."""

from __future__ import annotations

import datetime as dt
import multiprocessing

import pytest
import sqlalchemy as sa

from mlfix.review.claims import ACTIVE_COLUMNS, ClaimBook, ClaimTaken, claims_table
from mlfix.review.store import ReviewStore, sqlite_url
from tests.pg import postgres_server  # noqa: F401  (session fixture: a throwaway PostgreSQL server)

T0 = dt.datetime(2026, 11, 27, 13, 50, tzinfo=dt.timezone.utc)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: dt.datetime = T0):
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, minutes: float) -> None:
        self.now += dt.timedelta(minutes=minutes)


def make_url(backend: str, request, tmp_path) -> str:
    if backend == "sqlite":
        return sqlite_url(tmp_path / "reviews.db")
    return request.getfixturevalue("postgres_server").new_schema()


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    return make_url(request.param, request, tmp_path)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def book(url, clock):
    with ClaimBook(url, clock) as b:
        yield b


def test_others_see_the_page_taken_and_get_the_next_free_one(book):
    claim = book.claim("cat", 2, "ann")
    assert (claim.page, claim.reviewer, claim.expires_at) == (2, "ann", T0 + dt.timedelta(minutes=15))
    with pytest.raises(ClaimTaken) as taken:
        book.claim("cat", 2, "bob")
    assert (taken.value.by, taken.value.until, taken.value.page) == ("ann", T0 + dt.timedelta(minutes=15), 2)
    assert "page 3 of 'cat' is being reviewed by ann until 14:05 UTC" in str(taken.value)
    assert book.claim_next("cat", 5, "bob", start=2) == 3
    assert book.claim_next("cat", 5, "cy", start=2) == 4
    assert book.claim_next("cat", 5, "dan", start=2) == 0  # wraps around
    assert book.claim("dog", 2, "bob").page == 2  # another class: its own pages
    assert book.holder("cat", 2).reviewer == "ann" and book.holder("cat", 1) is None


def test_all_pages_taken_gives_none(book):
    assert [book.claim_next("cat", 2, name) for name in ("ann", "bob", "cy")] == [0, 1, None]
    assert book.claim_next("cat", 0, "ann") is None


def test_a_reviewer_holds_one_page_per_label_and_asking_again_keeps_it(book):
    assert book.claim_next("cat", 5, "ann") == 0
    assert book.claim_next("cat", 5, "ann") == 0  # theirs already
    book.claim("cat", 3, "ann")  # moves: page 0 is free again
    assert book.active("cat")[["page", "reviewer"]].values.tolist() == [[3, "ann"]]
    assert book.claim_next("cat", 5, "bob") == 0
    book.claim("cat", 4, "ann", keep_others=True)
    assert book.active("cat")["page"].tolist() == [0, 3, 4]
    assert book.history("cat")["ended_by"].tolist() == ["move", None, None, None]


def test_expired_claim_frees_the_page(book, clock):
    book.claim("cat", 0, "ann", minutes=15)
    clock.advance(14.9)
    with pytest.raises(ClaimTaken):
        book.claim("cat", 0, "bob")
    assert book.active()["minutes_left"].tolist() == [0.1]
    clock.advance(0.1)  # exactly at the expiry: free
    assert book.active().empty and book.holder("cat", 0) is None
    assert book.claim_next("cat", 3, "bob") == 0
    history = book.history("cat")
    assert history["ended_by"].tolist() == ["expiry", None]
    assert history["ended_at"].iloc[0] == T0 + dt.timedelta(minutes=15)


def test_renew_extends_or_reclaims_and_fails_when_taken(book, clock):
    book.claim("cat", 1, "ann")
    clock.advance(10)
    assert book.renew("cat", 1, "ann") == T0 + dt.timedelta(minutes=25)
    assert book.active()["claimed_at"].tolist() == [T0]  # the same claim, extended
    clock.advance(30)  # expired, nobody took it: renewing re-claims it
    assert book.renew("cat", 1, "ann", minutes=5) == T0 + dt.timedelta(minutes=45)
    clock.advance(6)
    book.claim("cat", 1, "bob")
    with pytest.raises(ClaimTaken, match="bob"):
        book.renew("cat", 1, "ann")


def test_release_and_admin_force(book):
    book.claim("cat", 0, "ann")
    book.claim("cat", 1, "bob")
    assert book.release("cat", "ann") == 1
    assert book.release("cat", "ann") == 0
    assert book.claim_next("cat", 3, "cy") == 0
    assert book.release("cat", page=1, force=True) == 1  # an admin frees bob's page
    assert book.active("cat")[["page", "reviewer"]].values.tolist() == [[0, "cy"]]
    assert book.history("cat")["ended_by"].tolist() == ["release", "admin", None]
    with pytest.raises(ValueError, match="needs the reviewer"):
        book.release("cat")
    with pytest.raises(ValueError, match="needs a page or a reviewer"):
        book.release("cat", force=True)


@pytest.mark.parametrize("call, message", [
    (lambda b: b.claim("", 0, "ann"), "label must be"),
    (lambda b: b.claim("cat", -1, "ann"), "page must be"),
    (lambda b: b.claim("cat", True, "ann"), "page must be"),
    (lambda b: b.claim("cat", 0, " "), "reviewer must be"),
    (lambda b: b.claim("cat", 0, "ann", minutes=0), "minutes must be"),
    (lambda b: b.claim("cat", 0, "ann", minutes=10_000), "minutes must be"),
    (lambda b: b.claim_next("cat", -2, "ann"), "n_pages"),
])
def test_bad_arguments_say_what_to_fix(book, call, message):
    with pytest.raises(ValueError, match=message):
        call(book)


def test_naive_clock_is_refused(url):
    with ClaimBook(url, clock=lambda: dt.datetime(2026, 1, 1)) as book:
        with pytest.raises(ValueError, match="timezone-aware"):
            book.claim("cat", 0, "ann")


def test_active_frame_shape(book):
    assert list(book.active().columns) == ACTIVE_COLUMNS and book.active().empty
    book.claim("cat", 0, "ann")
    frame = book.active()
    assert frame.dtypes["page"] == "int64" and frame["expires_at"].iloc[0] == T0 + dt.timedelta(minutes=15)


def test_database_refuses_a_second_open_claim_on_a_page(book):
    book.claim("cat", 0, "ann")
    with pytest.raises(sa.exc.IntegrityError):
        with book.engine.begin() as conn:
            conn.execute(claims_table.insert().values(label="cat", page=0, reviewer="bob", claimed_at=T0,
                                                      expires_at=T0 + dt.timedelta(minutes=1)))
    assert book.active()["reviewer"].tolist() == ["ann"]


def test_claims_share_the_decisions_database(url, clock):
    with ReviewStore(url) as store, ClaimBook.for_store(store, clock) as book:
        store.decide("a", "ok", reviewer="ann")
        assert book.claim_next("cat", 2, "ann") == 0
        with ClaimBook(url, clock) as other:  # another process's view of the same database
            assert other.holder("cat", 0).reviewer == "ann"
        assert len(store.decisions()) == 1


def _claim_at_once(url, n_pages, name, barrier, results):
    with ClaimBook(url) as book:
        barrier.wait(timeout=60)
        results.put((name, book.claim_next("cat", n_pages, name)))


@pytest.mark.parametrize("n_pages", [12, 3])
def test_reviewers_claiming_at_once_get_different_pages(url, n_pages):
    ctx = multiprocessing.get_context("fork")
    n = 6
    ClaimBook(url).close()  # the table exists before the race (creating it is serialised too)
    barrier, results = ctx.Barrier(n), ctx.Queue()
    workers = [ctx.Process(target=_claim_at_once, args=(url, n_pages, f"r{i}", barrier, results)) for i in range(n)]
    for w in workers:
        w.start()
    got = dict(results.get(timeout=120) for _ in workers)
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    pages = [p for p in got.values() if p is not None]
    assert len(pages) == len(set(pages)) == min(n, n_pages)
    with ClaimBook(url) as book:
        active = book.active("cat")
    assert sorted(active["page"]) == sorted(pages)
    assert dict(zip(active["reviewer"], active["page"])) == {k: v for k, v in got.items() if v is not None}


# ---- claims on sample rows (the Review page): the same images whatever the sort or page size ----

def test_rows_are_claimed_all_or_nothing(book, clock):
    assert book.claim_rows("samples", [3, 1, 2], "ann") == {}
    taken = book.claim_rows("samples", [2, 5], "bob")
    assert list(taken) == [2] and taken[2].reviewer == "ann" and taken[2].expires_at == T0 + dt.timedelta(minutes=15)
    assert sorted(book.active("samples")["page"]) == [1, 2, 3]  # bob got nothing, not even row 5
    assert set(book.held_by_others("samples", "bob")) == {1, 2, 3} and book.held_by_others("samples", "ann") == {}


def test_claiming_other_rows_moves_the_claim_and_renewing_extends_it(book, clock):
    book.claim_rows("samples", [1, 2, 3], "ann")
    clock.advance(10)
    assert book.claim_rows("samples", [3, 4], "ann") == {}
    active = book.active("samples").set_index("page")
    assert sorted(active.index) == [3, 4]
    assert active.loc[3, "expires_at"] == active.loc[4, "expires_at"] == T0 + dt.timedelta(minutes=25)
    assert book.claim_rows("samples", [1, 2], "bob") == {}  # ann moved on: free
    clock.advance(16)  # ann's claims expire
    assert book.claim_rows("samples", [3, 4], "cy") == {}


def test_rows_must_be_row_numbers(book):
    import numpy as np

    assert book.claim_rows("samples", np.array([7, 8]), "ann") == {}
    with pytest.raises(ValueError, match="page must be a 0-based int"):
        book.claim_rows("samples", [-1], "ann")
    with pytest.raises(ValueError, match="page must be a 0-based int"):
        book.claim_rows("samples", ["3"], "ann")
