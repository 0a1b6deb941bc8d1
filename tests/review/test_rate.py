"""The database's decisions-per-minute bucket (mlfix.review.rate) counts as the in-memory one does,
and picks: PostgreSQL gets the database's bucket, SQLite the process's."""

from __future__ import annotations

import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from mlfix.review.guard import RateLimiter, shared_limiter
from mlfix.review.rate import DatabaseRateLimiter, limiter_for
from tests.pg import postgres_server  # noqa: F401  (session fixture: a throwaway PostgreSQL server)

STEPS = st.lists(st.tuples(st.sampled_from(["ann", "bob"]), st.integers(1, 25), st.floats(0, 5)), max_size=30)


@settings(max_examples=40, deadline=None)
@given(steps=STEPS)
def test_the_database_bucket_allows_what_the_memory_bucket_allows(steps):
    now = [100.0]
    memory = RateLimiter(20, clock=lambda: now[0])
    database = DatabaseRateLimiter(sa.create_engine("sqlite://"), 20, clock=lambda: now[0])
    for reviewer, n, wait in steps:
        now[0] += wait
        assert database.take(reviewer, n) == memory.take(reviewer, n), (reviewer, n, now[0])
        assert abs(database.wait_s(reviewer, n) - memory.wait_s(reviewer, n)) < 1e-6


def test_postgresql_shares_one_bucket_between_limiters_and_sqlite_keeps_the_process_one(postgres_server, tmp_path):
    from mlfix.review.store import ReviewStore

    url = postgres_server.new_schema()
    with ReviewStore(url) as store, ReviewStore(url) as other:
        one, two = limiter_for(store, 7), DatabaseRateLimiter(other.engine, 7)  # two servers' limiters
        assert isinstance(one, DatabaseRateLimiter)
        assert [one.take("ann", 3), two.take("ann", 3), one.take("ann", 3), two.take("ann", 1)] == [True, True, False, True]
        assert two.wait_s("ann", 1) > 0 and two.take("bob", 7)
    with ReviewStore(f"sqlite:///{tmp_path / 'reviews.db'}") as local:
        assert limiter_for(local, 7) is shared_limiter(7)
    assert limiter_for(None, 7) is shared_limiter(7)
