"""Two app servers on one PostgreSQL database: claims, decisions, conflicts and the rate limit stay right.

- The store and claims layer from two separate processes (forked before any connection is
  open: nothing shared but the database), each with reviewers on threads, all at once: no image is claimed by two reviewers at
  the same time; every decision is stored once, a decision resent through the other server too;
  the same image decided differently on the two is a conflict; ids become visible in increasing
  order (an incremental reader misses none); the decisions-per-minute allowance is one across both.
- Two live servers (the project's launcher, one reviewer each, claims on) on one project and one
  database, driven over Streamlit's websocket by ``bench.app_load_ws``'s client: the two pages
  share no image; decisions from both are stored once each; a decision made on A shows on B at its
  next rerun; B's different decision on that image is a conflict; a new session (a reload, or a tab
  moved from the other server) may still decide on an image its reviewer was shown a moment ago.

Skipped with the reason when PostgreSQL is unavailable (``make postgres``).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
import uuid

import pandas as pd
import pytest

from tests.pg import postgres_server  # noqa: F401  (session fixture: a throwaway PostgreSQL server)

ROWS = 24  # images (sample rows) the reviewers share
ROUNDS = 4  # claims per reviewer
PER_CLAIM = 3
RATE = 40  # decisions per minute in the rate test
BURST = 40  # single decisions per server, for the incremental reader (without the write lock it missed ~2%)
RESENT = [f"resent-{i}" for i in range(5)]  # client ids both servers write (a tab resending elsewhere)


def _frozen_clock() -> float:
    return 1_000_000.0  # both processes at the same instant: no refill, the count is exact


def _reviewer(url: str, reviewer: str, seed: int, out: list) -> None:
    """One reviewer: claim a few free images, decide on them, move on; ``out`` gets what it held."""
    import random

    from mlfix.errors import StoreUnavailable
    from mlfix.review.claims import ClaimBook
    from mlfix.review.store import ReviewStore

    rng = random.Random(seed)
    with ReviewStore(url) as store, ClaimBook.for_store(store) as book:
        for round_ in range(ROUNDS):
            others = book.held_by_others("samples", reviewer)
            free = [r for r in range(ROWS) if r not in others]
            wanted = rng.sample(free, min(PER_CLAIM, len(free)))
            try:
                taken = book.claim_rows("samples", wanted, reviewer)
            except StoreUnavailable:  # never expected: fail the test through `out`
                out.append(("error", reviewer, round_))
                continue
            if taken:
                continue  # someone took one of them in between: nothing changed, try other images
            store.decide([f"img-{r}" for r in wanted], "ok", reviewer=reviewer, client_id=f"{reviewer}-{round_}")
            out.append(("held", reviewer, tuple(wanted)))
        book.release("samples", reviewer)


def _server(url: str, name: str, start, results) -> None:
    """One "server" process: two reviewers on threads, a resent batch, a conflicting relabel, rate takes."""
    from mlfix.review.rate import DatabaseRateLimiter
    from mlfix.review.store import ReviewStore

    out: list = []
    threads = [threading.Thread(target=_reviewer, args=(url, f"{name}{i}", hash((name, i)) % 1000, out))
               for i in range(2)]
    start.wait()
    for thread in threads:
        thread.start()
    with ReviewStore(url) as store:
        store.record([{"client_id": c, "sample_id": c, "kind": "flag", "reviewer": "eve"} for c in RESENT])
        verdict = {"A": "dog", "B": "cat"}[name]
        store.decide("img-conflict", "relabel", verdict, reviewer=f"{name}-judge", client_id=f"conflict-{name}")
        for i in range(BURST):  # one-row transactions as fast as they go: ids taken and committed at once
            store.decide(f"burst-{i}", "ok", reviewer=f"{name}-burst", client_id=f"burst-{name}-{i}")
        bucket = DatabaseRateLimiter(store.engine, RATE, clock=_frozen_clock)
        allowed = sum(bucket.take("carl", 1) for _ in range(RATE))
    for thread in threads:
        thread.join()
    results.put((name, out, allowed))


def test_two_server_processes_share_claims_decisions_conflicts_and_the_rate(postgres_server):
    from mlfix.review.claims import ClaimBook
    from mlfix.review.store import ReviewStore

    url = postgres_server.new_database()
    with ReviewStore(url) as store, ClaimBook.for_store(store):  # tables made once, before the race
        pass
    context = multiprocessing.get_context("fork")  # forked before any connection or thread: shares nothing live
    start, results = context.Event(), context.Queue()
    processes = [context.Process(target=_server, args=(url, name, start, results)) for name in "AB"]
    for process in processes:
        process.start()
    seen: set[int] = set()
    done = threading.Event()

    def follow() -> None:  # an incremental reader: decisions(since_id=last) until the writers are done
        with ReviewStore(url) as reader:
            last = 0
            while True:
                finished = done.is_set()
                new = reader.decisions(since_id=last)
                seen.update(new["id"].tolist())
                last = max([last, *new["id"].tolist()])
                if finished:
                    return
                time.sleep(0.005)  # (leave the CPU to the writers)

    follower = threading.Thread(target=follow)
    follower.start()
    start.set()
    reports = {}
    for _ in processes:
        name, out, allowed = results.get(timeout=120)
        reports[name] = (out, allowed)
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    done.set()
    follower.join(60)

    held = [entry for out, _ in reports.values() for entry in out]
    assert not [e for e in held if e[0] == "error"]
    assert len(held) >= 6  # most rounds got their images (the rest found them taken: retried)
    with ReviewStore(url) as store, ClaimBook.for_store(store) as book:
        history = book.history("samples")
        log = store.decisions()
        samples = pd.DataFrame({"sample_id": ["img-conflict"], "label": ["cow"]})
        conflicts = store.conflicts(samples)
    # No image held by two reviewers at once: on every row, each claim ends before the next begins.
    assert history["ended_at"].notna().all()  # every claim ended (moved or released)
    for _, claims in history.sort_values(["page", "claimed_at", "id"]).groupby("page"):
        starts, ends = claims["claimed_at"].tolist(), claims["ended_at"].tolist()
        assert all(ends[i] <= starts[i + 1] for i in range(len(starts) - 1)), claims
    # Every decision once: each held claim's "ok"s, the batch both servers wrote, both relabels.
    expected = {f"{reviewer}-{i}" for _, reviewer, _ in held for i in range(ROUNDS)}
    oks = log[(log["kind"] == "ok") & ~log["reviewer"].str.endswith("-burst")]
    assert oks["client_id"].str.rsplit(":", n=1).str[0].nunique() == len(held)
    assert set(oks["client_id"].str.rsplit(":", n=1).str[0]) <= expected
    assert len(oks) == sum(len(rows) for _, _, rows in held)
    assert sorted(log.loc[log["kind"] == "flag", "client_id"]) == sorted(RESENT)  # stored once, not twice
    assert log["client_id"].is_unique and log["id"].is_unique
    assert (log["reviewer"].str.endswith("-burst")).sum() == 2 * BURST
    # Each "ok" is on an image its reviewer held when deciding.
    for _, row in oks.iterrows():
        rows = history[(history["reviewer"] == row["reviewer"]) & (history["page"] == int(row["sample_id"][4:]))]
        assert ((rows["claimed_at"] <= row["created_at"]) & (row["created_at"] <= rows["ended_at"])).any()
    # The same image decided differently on the two servers: a conflict, with both verdicts.
    assert conflicts["sample_id"].tolist() == ["img-conflict"]
    assert conflicts["verdicts"].iloc[0] == {"A-judge": "dog", "B-judge": "cat"}
    # Ids visible in increasing order: the incremental reader saw every one.
    assert seen == set(log["id"].tolist())
    # One allowance for both servers: exactly RATE decisions of carl's, however they were split.
    assert reports["A"][1] + reports["B"][1] == RATE


# ---------------------------------------------------------------------------------------- live servers

BIG = 206  # images of the class both reviewers open: more than one page (200), so both get some


def _project(folder):
    """An unindexed project (file order: nothing to index): class "blue" of BIG tiny images, "red" of 2."""
    from mlfix.project import Project
    from tests.conftest import COLORS, shape_image

    images = folder / "images"
    for name, count in (("blue", BIG), ("red", 2)):
        (images / name).mkdir(parents=True)
        for i in range(count):
            shape_image(COLORS[name], seed=i, size=16).save(images / name / f"{i:03d}.png")
    return Project.create(folder / "project", images=images)


async def _open_both(urls: list[str]):
    from bench.app_load_ws import open_session

    return await asyncio.gather(*(open_session(url) for url in urls))


async def _decide_all(sessions, picks):
    return await asyncio.gather(*(s.decide(pick, focus=pick) for s, pick in zip(sessions, picks)))


async def _relabel(session, sample_id: str, label: str):
    session.seq += 1
    client_id = str(uuid.uuid4())
    batch = {"session": session.browser_session, "focus": sample_id,
             "actions": [{"seq": session.seq, "client_id": client_id, "kind": "relabel", "ids": [sample_id],
                          "label": label}]}
    return await session.send_actions(batch, ack_seq=session.seq), client_id


async def _rerun(session):
    await session.rerun()
    return await session.read_run(time.perf_counter())


def _grid_status(session) -> dict[str, str]:
    return {item["id"]: item["status"] for item in session.grid["items"]}


@pytest.mark.slow
def test_two_live_servers_on_one_database_and_project(postgres_server, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from mlfix.review.claims import ClaimBook
    from mlfix.review.store import ENV_DB_URL, ReviewStore
    from mlfix.service.server import serve_app

    pytest.importorskip("websockets")
    url = postgres_server.new_database()
    project = _project(tmp_path)
    envs = [{**__import__("os").environ, ENV_DB_URL: url, "MLFIX_CLAIMS": "1", "MLFIX_REVIEWER": name,
             "MLFIX_PROJECT": str(project.dir)} for name in ("ann", "bob")]
    with ThreadPoolExecutor(2) as pool:  # both start at once (each takes seconds)
        apps = list(pool.map(lambda i: serve_app(project.dir, address="127.0.0.1", env=envs[i],
                                                 log=tmp_path / f"server-{i}.log"), range(2)))
    try:
        with apps[0], apps[1]:
            _check_live(apps, project, url, ClaimBook, ReviewStore)
    finally:
        for i in range(2):
            print(f"--- server {i} log (tail)\n" + (tmp_path / f"server-{i}.log").read_text()[-3000:])


def _check_live(apps, project, url, ClaimBook, ReviewStore) -> None:
    async def scenario():
        opened = await _open_both([app.url for app in apps])
        sessions = [s for s, _ in opened]
        try:
            return await _steps(sessions)
        finally:
            for s in sessions:
                await s.ws.close()

    async def _steps(sessions):
        pages = [s.grid_ids() for s in sessions]
        # 1. Both pages opened at once: no image on both; together every image of the class.
        assert not set(pages[0]) & set(pages[1])
        assert sorted(pages[0] + pages[1]) == sorted(project.samples.loc[project.samples["label"] == "blue", "sample_id"])
        big, small = sorted(range(2), key=lambda i: -len(pages[i]))
        # 2. Both decide at once, each on their own page: acknowledged, so in the store.
        decided = await _decide_all(sessions, [pages[0][0], pages[1][0]])
        assert all(run.acked_s is not None for run, _ in decided), [(run, s.grid.get("errors"), s.grid.get("acks"))
                                                                     for (run, _), s in zip(decided, sessions)]
        # 3. The big page's reviewer leaves (an admin frees their images); the other reruns: the image
        # decided on the first server shows as decided on the second.
        with ReviewStore(url) as store, ClaimBook.for_store(store) as book:
            book.release("samples", ["ann", "bob"][big])
        await _rerun(sessions[small])
        shown = _grid_status(sessions[small])
        x = pages[big][0]
        assert shown.get(x) == "ok"
        # 4. A different decision on that image from the second server: a conflict, as with one server.
        run, relabel_id = await _relabel(sessions[small], x, "red")
        assert run.acked_s is not None
        # 5. A new session of that reviewer (a reload, or a tab moved from another server) shows other
        # images; a decision its grid had queued on an image of the old page is still taken: the
        # reviewer held it a moment ago (the claims are in the database, whichever server showed it).
        late = pages[small][1]
        from bench.app_load_ws import open_session

        fresh, _ = await open_session(apps[small].url)
        try:
            assert late not in fresh.grid_ids()
            run, late_id = await fresh.decide(late, focus=late)
            assert run.acked_s is not None and not fresh.grid.get("errors"), fresh.grid.get("errors")
        finally:
            await fresh.ws.close()
        return big, small, x, [c for _, c in decided] + [f"{relabel_id}:{x}", late_id]  # rows' client ids

    big, small, x, sent = asyncio.run(asyncio.wait_for(scenario(), 180))
    names = ["ann", "bob"]
    with ReviewStore(url) as store:
        log = store.decisions()
        conflicts = store.conflicts(project.samples[["sample_id", "label"]])
    # Every decision from both servers stored exactly once ("ok"s: client id "<uuid>:<sample>").
    stored = log["client_id"].tolist()
    assert sorted(stored) == sorted(sent) and len(set(sent)) == 4
    assert sorted(log["reviewer"]) == sorted(["ann", "bob", names[small], names[small]])
    assert conflicts["sample_id"].tolist() == [x]
    assert conflicts["verdicts"].iloc[0] == {names[big]: "blue", names[small]: "red"}


def test_recent_claims_are_what_a_reviewer_was_shown_lately(tmp_path):
    import datetime as dt

    from mlfix.review.claims import ClaimBook

    now = [dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc)]
    with ClaimBook(f"sqlite:///{tmp_path / 'reviews.db'}", clock=lambda: now[0]) as book:
        assert book.claim_rows("samples", [1, 2], "ann") == {}
        now[0] += dt.timedelta(minutes=5)
        assert book.claim_rows("samples", [7], "ann") == {}  # moved on: 1 and 2 ended now
        assert book.claim_rows("samples", [3], "bob") == {}
        assert book.recent("samples", "ann") == {1, 2, 7}
        now[0] += dt.timedelta(minutes=14)
        assert book.recent("samples", "ann") == {1, 2, 7}  # 7 still held; 1, 2 ended 14 minutes ago
        now[0] += dt.timedelta(minutes=2)
        assert book.recent("samples", "ann") == {7}  # 7 expired 1 minute ago (not yet marked); 1, 2: 16
        now[0] += dt.timedelta(minutes=15)
        assert book.recent("samples", "ann") == set() and book.recent("samples", "bob") == set()
