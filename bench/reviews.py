"""Decisions store under load: many reviewer processes at once, and writers killed mid-stream.

    python -m bench.reviews [--quick] [--backends sqlite,postgresql]

1. Throughput: N reviewer processes (default 20) write 10,000 decisions in all, one transaction per
   decision (as the UI does, one per action), and every 10th one is resent (a retry). Figures:
   decisions/s, latency per acknowledged write (p50, p99), lost and duplicated decisions (counted by
   client id: both must be 0).
2. SIGKILL: writer processes append each client id to an ack file only after ``record`` returned,
   and are killed with SIGKILL midway (for PostgreSQL the server is crashed too: ``pg_ctl stop -m
   immediate``, then started again). After the restart every acknowledged decision must be in the
   store; then the writers are started again and resend *all* their decisions with the same client
   ids, which must store each decision exactly once.
3. Derivation: current_state for 100k samples from the 10k-decision log.

PostgreSQL runs on a throwaway server (tests/pg.py) with default durability (fsync on); when it
cannot be found, that backend prints a skip line.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import emit, parser, timer
from mlfix.review.log import derive_state
from mlfix.review.store import ReviewStore, sqlite_url

BENCH = "reviews"
CTX = multiprocessing.get_context("fork")


def decision(client_id: str, i: int, worker: int) -> dict:
    """A mix like real review: mostly relabels, some ok and flag."""
    kind = ("relabel", "relabel", "ok", "flag")[i % 4]
    return {"client_id": client_id, "sample_id": f"img/{(i * 7919 + worker) % 2000:05d}.png", "kind": kind,
            "label": f"class{(i + worker) % 10}" if kind == "relabel" else None, "reviewer": f"reviewer{worker}"}


# -- 1. throughput -------------------------------------------------------------------------------

def _reviewer(url: str, worker: int, count: int, barrier, results) -> None:
    store = ReviewStore(url)
    store.last_id()  # connect before the clock starts
    latencies = np.empty(count)
    barrier.wait()
    for i in range(count):
        row = decision(f"t{worker}-{i}", i, worker)
        start = time.perf_counter()
        store.record(row)
        latencies[i] = time.perf_counter() - start
        if i % 10 == 9:
            store.record(row)  # a retry of an acknowledged write: must store nothing
    results.put((worker, latencies.tolist()))
    store.close()


def throughput(url: str, backend: str, processes: int, total: int) -> pd.DataFrame:
    per = total // processes
    barrier, results = CTX.Barrier(processes + 1), CTX.Queue()
    workers = [CTX.Process(target=_reviewer, args=(url, w, per, barrier, results)) for w in range(processes)]
    for p in workers:
        p.start()
    barrier.wait()
    with timer() as elapsed:
        latencies = [results.get(timeout=900)[1] for _ in workers]
        for p in workers:
            p.join()
    seconds = elapsed()
    with ReviewStore(url) as store:
        log = store.decisions()
    expected = {f"t{w}-{i}" for w in range(processes) for i in range(per)}
    stored = set(log["client_id"])
    lost = len(expected - stored)
    duplicated = len(log) - len(stored) + len(stored - expected)
    lat = np.concatenate(latencies) * 1000
    setup = {"backend": backend, "processes": processes, "decisions_per_transaction": 1,
             "retries": total // 10, "durability": "WAL synchronous=FULL" if backend == "sqlite" else "fsync on"}
    emit(BENCH, "write_throughput", round(per * processes / seconds, 1), "decisions/s", n=per * processes, **setup)
    emit(BENCH, "ack_latency_p50", round(float(np.percentile(lat, 50)), 2), "ms", n=lat.size, **setup)
    emit(BENCH, "ack_latency_p99", round(float(np.percentile(lat, 99)), 2), "ms", n=lat.size, **setup)
    emit(BENCH, "lost", lost, "decisions", n=per * processes, **setup)
    emit(BENCH, "duplicated", duplicated, "decisions", n=per * processes, **setup)
    return log


# -- 2. SIGKILL midway -----------------------------------------------------------------------------

def _acking_writer(url: str, worker: int, planned: int, ack_path: str) -> None:
    store = ReviewStore(url)
    ack = os.open(ack_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    for i in range(planned):
        client_id = f"k{worker}-{i}"
        store.record(decision(client_id, i, worker))
        os.write(ack, f"{client_id}\n".encode())  # the acknowledgement: only after commit returned


def _resender(url: str, worker: int, planned: int) -> None:
    with ReviewStore(url) as store:
        rows = [decision(f"k{worker}-{i}", i, worker) for i in range(planned)]
        for start in range(0, planned, 50):
            store.record(rows[start:start + 50])


def acknowledged(ack_paths: list[Path]) -> set[str]:
    """Client ids whose ack line is complete (a kill can cut the last line short)."""
    ids: set[str] = set()
    for path in ack_paths:
        if path.exists():
            text = path.read_text()
            ids.update(text[: text.rfind("\n") + 1].split())
    return ids


def sigkill(url: str, backend: str, folder: Path, writers: int, planned: int, kill_after: int, server=None) -> None:
    ack_paths = [folder / f"ack-{backend}-{w}.txt" for w in range(writers)]
    procs = [CTX.Process(target=_acking_writer, args=(url, w, planned, str(a)))
             for w, a in enumerate(ack_paths)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 600
    while len(acknowledged(ack_paths)) < kill_after and time.monotonic() < deadline:
        time.sleep(0.005)
    for p in procs:
        os.kill(p.pid, signal.SIGKILL)
    if server is not None:
        server.crash()  # the database server goes down with them, without a checkpoint
    for p in procs:
        p.join()
    acked = acknowledged(ack_paths)
    if server is not None:
        server.restart()
    with ReviewStore(url) as store:  # "after restart": a fresh store (SQLite recovers the WAL on open)
        after_kill = store.decisions()
    stored = set(after_kill["client_id"])
    missing = len(acked - stored)
    in_flight = len(stored - acked)  # committed, killed before the ack: the client will resend these
    setup = {"backend": backend, "writers": writers, "planned": writers * planned,
             "killed_with": "SIGKILL" + (" + pg_ctl stop -m immediate" if server is not None else ""),
             "exit_codes": sorted({p.exitcode for p in procs})}
    emit(BENCH, "sigkill_acknowledged", len(acked), "decisions", n=writers * planned, **setup)
    emit(BENCH, "sigkill_acknowledged_missing", missing, "decisions", n=len(acked), **setup)
    emit(BENCH, "sigkill_stored_unacknowledged", in_flight, "decisions", n=len(stored), **setup)
    resend = [CTX.Process(target=_resender, args=(url, w, planned)) for w in range(writers)]
    for p in resend:
        p.start()
    for p in resend:
        p.join()
    with ReviewStore(url) as store:
        log = store.decisions()
    expected = {f"k{w}-{i}" for w in range(writers) for i in range(planned)}
    final = set(log["client_id"])
    emit(BENCH, "sigkill_after_resend_lost", len(expected - final), "decisions", n=len(expected), **setup)
    emit(BENCH, "sigkill_after_resend_duplicated", len(log) - len(final) + len(final - expected), "decisions",
         n=len(expected), **setup)


# -- 3. derivation -------------------------------------------------------------------------------

def derivation(url: str, backend: str, samples: int) -> None:
    table = pd.DataFrame({"sample_id": [f"img/{i:05d}.png" for i in range(samples)], "label": "class0"})
    with ReviewStore(url) as store:
        with timer() as read:
            log = store.decisions()
        with timer() as derive:
            derive_state(log, table)
        with timer() as end_to_end:
            store.current_state(table)
    setup = {"backend": backend, "decisions": len(log)}
    emit(BENCH, "read_log", round(read() * 1000, 1), "ms", n=len(log), **setup)
    emit(BENCH, "derive_state", round(derive() * 1000, 1), "ms", n=samples, **setup)
    emit(BENCH, "current_state", round(end_to_end() * 1000, 1), "ms", n=samples, includes="reading the log",
         **setup)


# -- main ----------------------------------------------------------------------------------------

def run_backend(backend: str, args, folder: Path) -> None:
    server = None
    if backend == "postgresql":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.pg import PostgresServer, PostgresUnavailable

        try:
            server = PostgresServer.start(durable=True)
        except PostgresUnavailable as error:
            print(json.dumps({"bench": "skip", "backend": backend, "reason": str(error)}), file=sys.stderr)
            return
    try:
        def new_url(name: str) -> str:
            return sqlite_url(folder / f"{name}.db") if server is None else server.new_database()

        url = new_url("throughput")
        ReviewStore(url).close()  # create the table before the processes race for it
        throughput(url, backend, args.processes, args.decisions)
        derivation(url, backend, args.samples)
        url = new_url("sigkill")
        ReviewStore(url).close()
        sigkill(url, backend, folder, args.kill_writers, args.kill_planned, args.kill_after, server=server)
    finally:
        if server is not None:
            server.stop()


def main(argv=None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--backends", default="sqlite,postgresql")
    args = p.parse_args(argv)
    sizes = dict(processes=4, decisions=200, samples=10_000, kill_writers=3, kill_planned=100, kill_after=40) \
        if args.quick else \
        dict(processes=20, decisions=10_000, samples=100_000, kill_writers=8, kill_planned=1000, kill_after=1500)
    for key, value in sizes.items():
        setattr(args, key, value)
    with tempfile.TemporaryDirectory(prefix="mlfix-bench-reviews-") as folder:
        for backend in args.backends.split(","):
            run_backend(backend.strip(), args, Path(folder))


if __name__ == "__main__":
    main()
