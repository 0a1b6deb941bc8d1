"""A decisions database that is down at start or goes down mid-session: a clear error, retries,
and nothing acknowledged is lost or stored twice."""

from __future__ import annotations

import pytest

from mlfix.review.claims import ClaimBook
from mlfix.review.store import ReviewStore, StoreUnavailable, sqlite_url
from tests.pg import free_port, postgres_server  # noqa: F401  (session fixture: a throwaway PostgreSQL server)


def test_down_at_start_retries_then_says_so_without_the_password():
    url = f"postgresql+psycopg://mlfix:s3cret@127.0.0.1:{free_port()}/mlfix"  # nothing listens there
    waits = []
    with pytest.raises(StoreUnavailable) as error:
        ReviewStore.connect_with_retry(url, attempts=3, delay=0.5, sleep=waits.append)
    assert waits == [0.5, 1.0]
    message = str(error.value)
    assert "decisions are NOT being saved" in message and "tried 3 times" in message
    assert "127.0.0.1" in message and "s3cret" not in message
    with pytest.raises(ValueError, match="attempts"):
        ReviewStore.connect_with_retry(url, attempts=0)
    with pytest.raises(StoreUnavailable):
        ClaimBook(url)


def test_sqlite_in_a_missing_folder_is_unavailable(tmp_path):
    with pytest.raises(StoreUnavailable, match="unavailable"):
        ReviewStore(sqlite_url(tmp_path / "gone" / "reviews.db"))


def durable_schema(server) -> str:
    """A new schema whose commits wait for their WAL write: the test server runs with
    synchronous_commit off, where a crash may lose the last commits (not what is tested here)."""
    url = server.new_schema() + "%20-csynchronous_commit%3Don"
    ReviewStore(url).close()  # the schema and tables exist, written before any crash
    return url


def test_database_coming_up_during_the_retries(postgres_server):
    url = durable_schema(postgres_server)
    postgres_server.crash()
    waits = []

    def wait_and_start(seconds):
        waits.append(seconds)
        if len(waits) == 2:  # the server is back before the third attempt
            postgres_server.restart()

    try:
        store = ReviewStore.connect_with_retry(url, attempts=5, delay=0.01, sleep=wait_and_start)
    finally:
        if len(waits) < 2:
            postgres_server.restart()
    with store:
        assert len(waits) == 2 and store.decisions().empty


def test_down_mid_session_raises_and_a_retry_stores_each_decision_once(postgres_server):
    url = durable_schema(postgres_server)
    batch = [{"client_id": f"k{i}", "sample_id": f"s{i}", "kind": "ok", "reviewer": "ann"} for i in range(5)]
    with ReviewStore(url) as store, ClaimBook.for_store(store) as book:
        acknowledged = store.record(batch[:3])
        assert book.claim_next("cat", 3, "ann") == 0
        postgres_server.crash()
        try:
            with pytest.raises(StoreUnavailable, match="decisions are NOT being saved"):
                store.record(batch)  # the UI keeps the batch and resends it
            with pytest.raises(StoreUnavailable):
                store.decisions()
            with pytest.raises(StoreUnavailable):
                book.claim_next("cat", 3, "bob")
        finally:
            postgres_server.restart()
        ids = store.record(batch)  # the resend, once the database is back
        assert ids[:3] == acknowledged
        log = store.decisions()
        assert sorted(log["client_id"]) == [f"k{i}" for i in range(5)]  # nothing lost, nothing twice
        assert book.holder("cat", 0).reviewer == "ann"  # claims survived the crash too
        assert book.claim_next("cat", 3, "bob") == 1


def test_serve_db_option_reaches_the_server_process(tmp_path, tiny_image_folder, monkeypatch):
    from mlfix import cli
    from mlfix.project import Project

    project = Project.create(tmp_path / "project", tiny_image_folder)
    calls = []
    monkeypatch.setattr("subprocess.call", lambda command, env=None, **options: calls.append((command, env)) or 0)
    monkeypatch.delenv("MLFIX_DB_URL", raising=False)
    url = sqlite_url(tmp_path / "team.db")
    assert cli.main(["serve", "--project", str(project.dir), "--db", url]) == 0
    [(command, env)] = calls
    assert env["MLFIX_DB_URL"] == url and "--project" in command
    assert (tmp_path / "team.db").exists()  # reached (and made) before the server starts


def test_serve_refuses_to_start_on_a_database_that_is_down(tmp_path, tiny_image_folder, monkeypatch, capsys):
    from mlfix import cli
    from mlfix.project import Project

    project = Project.create(tmp_path / "project", tiny_image_folder)
    monkeypatch.setattr("subprocess.call", lambda *a, **k: pytest.fail("the server must not start"))
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    url = f"postgresql+psycopg://mlfix:pw@127.0.0.1:{free_port()}/mlfix"
    assert cli.main(["serve", "--project", str(project.dir), "--db", url, "--db-retries", "2"]) == 2
    err = capsys.readouterr().err
    assert "unavailable" in err and "tried 2 times" in err and ":pw@" not in err
