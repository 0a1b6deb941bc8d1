"""The Streamlit server's own answer times under many Review-page sessions (websocket clients).

    python -m bench.app_load_ws [--quick] [--sessions N] [--decisions R] [--project DIR] [--hostile]

``bench.app_load`` drives real Chromium pages; on a 2-core machine 20 browsers eat the CPU, so its
figures measure Chromium as much as the server. This client speaks Streamlit's websocket protocol
itself (``/_stcore/stream``, Streamlit's own protobufs), so nearly all the CPU is the server's:

- ``page_answer_s``: a session connects and asks for the Review page (``rerun_script`` with
  ``page_name="review"``, as the browser does for ``/review``); time until the run's
  ``script_finished`` (median, p90 over sessions, N at once).
- ``grid_answer_s``: until the review grid's element (its ``data``) has arrived in that run.
- ``decide_s``: every session sends R "ok" decisions, one at a time, all sessions at once: the grid's
  ``actions`` trigger exactly as grid.js sends it; time until the grid's data of the run it starts
  carries ``acks[session] >= seq`` (the decision is in the store). ``decide_run_s``: until that
  run's ``script_finished``.
- ``stored_decisions``, ``lost``, ``duplicated``: the store read back afterwards; every decision
  must be there exactly once.
- ``--hostile``: on one server, the sessions alone (``variant: baseline``), then again with one
  hostile session alongside (``variant: hostile``; :mod:`bench.app_load_hostile`: oversized,
  off-page, flooding and malformed batches). Its figures: ``hostile_forbidden_stored`` (rows of
  actions the limits refuse: must be 0), ``hostile_stored_rows`` (against what the rate allows),
  ``hostile_refusals`` (the messages its grid showed), and ``*_median_ratio``: the honest
  sessions' median with the hostile session over without it (budget 1.2).

The protocol, as Chromium speaks it (captured with Playwright's ``route_web_socket``):

1. Connect with subprotocol ``streamlit``; send ``BackMsg(rerun_script=ClientState(page_name=
   "review", context_info=...))``. The server answers with ForwardMsgs: ``new_session`` (the run's
   id in ``metadata.run``), ``delta`` (elements; the grid is a ``bidi_component`` whose ``json`` is
   its data), ... and ``script_finished``.
2. A grid action is a rerun whose widget states hold one trigger: id
   ``$$STREAMLIT_INTERNAL_KEY_{component id}__events``, ``json_trigger_value`` =
   ``[{"event": "actions", "value": {session, focus, actions: [{seq, client_id, kind, ids}]}}]``,
   with the page's ``page_script_hash`` (from ``new_session``/the deltas' ``active_script_hash``).
3. Messages the client says it has (``cached_message_hashes``) come back as ``ref_hash`` only.

Differences from a browser: the client sends only the trigger (the browser also repeats the
sidebar's and the page's widget values; the server keeps them anyway), fetches no thumbnails or
static files, and does not resend an unacknowledged batch (nothing else reruns its session).
Without ``--project`` it builds the demo (200 digits, 100 with ``--quick``) in a temporary folder.
Every wait is bounded (120 s); the server is stopped at the end. Timings depend on the machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bench.app_load import bench_project, stats
from bench.common import emit, parser
from mlfix.service.server import running_app

LIMIT_S = 120
PAGE = "review"
GRID_COMPONENT = "mlfix_review_grid"  # mlfix.ui.grid.COMPONENT_NAME (importing it needs a script run)
REVIEWER_FIELD = "mlfix_reviewer"  # mlfix.ui.access.REVIEWER_KEY: the sidebar's reviewer field (open mode)
CONTEXT = {"timezone": "UTC", "timezone_offset": 0, "locale": "en-US", "is_embedded": False,
           "color_scheme": "light"}


@dataclass
class RunResult:
    """One script run as this client saw it (times from the send, in seconds)."""

    status: str | None = None
    finished_s: float | None = None
    grid_s: float | None = None
    acked_s: float | None = None


@dataclass
class Session:
    """One Streamlit session over the websocket: the grid as it last arrived, and the message cache."""

    ws: object
    url: str
    page_hash: str = ""
    grid_id: str | None = None
    grid: dict | None = None
    cache: dict = field(default_factory=dict)  # hash -> cacheable ForwardMsg (answered by ref_hash)
    browser_session: str = field(default_factory=lambda: str(uuid.uuid4()))
    seq: int = 0
    reviewer_field: str | None = None  # the sidebar's "Reviewer" text input (open mode), once seen
    widgets: dict = field(default_factory=dict)  # widget id -> string value, sent with every rerun

    async def rerun(self, widgets: list | None = None) -> None:
        """Ask for a script run of the Review page (with these widget states)."""
        from streamlit.proto.BackMsg_pb2 import BackMsg

        msg = BackMsg()
        state = msg.rerun_script
        state.page_name = PAGE
        if self.page_hash:
            state.page_script_hash = self.page_hash
        state.widget_states.SetInParent()
        state.widget_states.widgets.extend(self._widget_states() + list(widgets or []))
        state.cached_message_hashes.extend(self.cache)
        for key, value in CONTEXT.items():
            setattr(state.context_info, key, value)
        state.context_info.url = f"{self.url}/{PAGE}"
        await self.ws.send(msg.SerializeToString())

    async def read_run(self, t0: float, ack_seq: int | None = None) -> RunResult:
        """Read ForwardMsgs until a run finishes (a run stopped early for a rerun: the next one)."""
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        result = RunResult()
        deadline = t0 + LIMIT_S
        while True:
            raw = await asyncio.wait_for(self.ws.recv(), max(0.01, deadline - time.perf_counter()))
            msg = ForwardMsg.FromString(raw)
            kind = msg.WhichOneof("type")
            if kind == "ref_hash":
                msg = self.cache[msg.ref_hash]
                kind = msg.WhichOneof("type")
            elif msg.metadata.cacheable:
                self.cache[msg.hash] = msg
            if kind == "delta" and self._read_grid(msg):
                result.grid_s = result.grid_s or time.perf_counter() - t0
                acks = (self.grid or {}).get("acks", {})
                if ack_seq is not None and result.acked_s is None and acks.get(self.browser_session, 0) >= ack_seq:
                    result.acked_s = time.perf_counter() - t0
            elif kind == "script_finished":
                result.status = ForwardMsg.ScriptFinishedStatus.Name(msg.script_finished)
                if result.status != "FINISHED_EARLY_FOR_RERUN":
                    result.finished_s = time.perf_counter() - t0
                    return result

    def _widget_states(self) -> list:
        from streamlit.proto.WidgetStates_pb2 import WidgetState

        return [WidgetState(id=key, string_value=value) for key, value in self.widgets.items()]

    def _read_grid(self, msg) -> bool:
        element = msg.delta.new_element
        if element.WhichOneof("type") == "text_input" and element.text_input.id.endswith("-" + REVIEWER_FIELD):
            self.reviewer_field = element.text_input.id
        if element.WhichOneof("type") != "bidi_component" or element.bidi_component.component_name != GRID_COMPONENT:
            return False
        self.page_hash = msg.metadata.active_script_hash or self.page_hash
        self.grid_id = element.bidi_component.id
        self.grid = json.loads(element.bidi_component.json) if element.bidi_component.json else {}
        return True

    def grid_ids(self) -> list[str]:
        return [item["id"] for item in (self.grid or {}).get("items", [])]

    async def decide(self, sample_id: str, focus: str) -> tuple[RunResult, str]:
        """Send one "ok" on ``sample_id`` as the grid's ``actions`` trigger; read the run it starts."""
        self.seq += 1
        client_id = str(uuid.uuid4())
        batch = {"session": self.browser_session, "focus": focus,
                 "actions": [{"seq": self.seq, "client_id": client_id, "kind": "ok", "ids": [sample_id]}]}
        return await self.send_actions(batch, ack_seq=self.seq), f"{client_id}:{sample_id}"

    async def send_actions(self, value, ack_seq: int | None = None) -> RunResult:
        """Send ``value`` (a batch, or anything a hostile client makes) as the grid's ``actions``
        trigger, exactly as grid.js does; read the run it starts."""
        from streamlit.components.v2.bidi_component.main import _make_trigger_id
        from streamlit.proto.WidgetStates_pb2 import WidgetState

        trigger = WidgetState(id=_make_trigger_id(self.grid_id, "events"),
                              json_trigger_value=json.dumps([{"event": "actions", "value": value}]))
        t0 = time.perf_counter()
        await self.rerun([trigger])
        return await self.read_run(t0, ack_seq=ack_seq)


async def open_session(url: str) -> tuple[Session, RunResult]:
    """Connect a session and ask for the Review page (times from the connect); raises when it shows no grid."""
    import websockets

    t0 = time.perf_counter()
    ws = await asyncio.wait_for(websockets.connect(url.replace("http", "ws", 1) + "/_stcore/stream",
                                                   subprotocols=["streamlit"], max_size=None), LIMIT_S)
    session = Session(ws, url)
    await session.rerun()
    run = await session.read_run(t0)
    if not session.grid_ids():
        await ws.close()
        raise RuntimeError(f"the Review page showed no grid ({run.status})")
    return session, run


async def _session(url: str, index: int, decisions: int, start: asyncio.Event, barrier: asyncio.Barrier) -> dict:
    out = {"page": None, "grid": None, "decide": [], "decide_run": [], "sent": [], "unacknowledged": 0}
    ws = None
    try:
        await start.wait()
        session, run = await open_session(url)
        ws = session.ws
        out["page"], out["grid"] = run.finished_s, run.grid_s
    except Exception as error:  # a session that fails is counted, the others go on
        out["error"] = f"open: {type(error).__name__}: {str(error)[:200]}"
    for r in range(decisions):
        await barrier.wait()  # every session decides at once
        if "error" in out:
            continue
        ids = session.grid_ids()
        k = (index * decisions + r) % len(ids)
        try:
            run, client_id = await session.decide(ids[k], focus=ids[(k + 1) % len(ids)])
        except Exception as error:
            out["error"] = f"decide: {type(error).__name__}: {str(error)[:200]}"
            continue
        out["sent"].append(client_id)
        out["decide_run"].append(run.finished_s)
        if run.acked_s is None:
            out["unacknowledged"] += 1
        else:
            out["decide"].append(run.acked_s)
    if ws is not None:
        await ws.close()
    return out


async def _warm_up(url: str) -> None:
    """One session opens the page first (thumbnails made, caches filled), untimed."""
    await asyncio.wait_for(_session(url, 0, 0, _set_event(), asyncio.Barrier(1)), LIMIT_S)


def _set_event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


async def _run_sessions(url: str, sessions: int, decisions: int, hostile=None) -> tuple[list[dict], dict | None]:
    """The honest sessions (and, given ``hostile(url, start, done)``, one hostile session alongside)."""
    start, barrier, done = asyncio.Event(), asyncio.Barrier(sessions), asyncio.Event()
    tasks = [asyncio.create_task(_session(url, i, decisions, start, barrier)) for i in range(sessions)]
    attacker = asyncio.create_task(hostile(url, start, done)) if hostile else None
    await asyncio.sleep(0.1)
    start.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=LIMIT_S * (2 + decisions))
    done.set()
    return results, (await asyncio.wait_for(attacker, LIMIT_S) if attacker else None)


def run(project_dir: Path, sessions: int, decisions: int) -> tuple[list[dict], dict]:
    """Start the app on ``project_dir``, run the sessions; the results and the store's count."""
    with running_app(project_dir, env={**os.environ, "MLFIX_REVIEWER": "bench"}) as url:
        asyncio.run(_warm_up(url))
        results, _ = asyncio.run(_run_sessions(url, sessions, decisions))
    return results, store_count(project_dir, results)


def run_variants(project_dir: Path, sessions: int, decisions: int) -> dict[str, tuple[list[dict], dict, dict | None]]:
    """One server; the honest sessions alone, then again with one hostile session alongside
    (:mod:`bench.app_load_hostile`): ``{"baseline"|"hostile": (results, store count, hostile report)}``."""
    from bench import app_load_hostile

    out = {}
    with running_app(project_dir, env={**os.environ, "MLFIX_REVIEWER": "bench"}) as url:
        asyncio.run(_warm_up(url))
        for variant in ("baseline", "hostile"):
            attacker = app_load_hostile.Attacker(project_dir, open_session) if variant == "hostile" else None
            results, _ = asyncio.run(_run_sessions(url, sessions, decisions, attacker and attacker.run))
            out[variant] = (results, store_count(project_dir, results), attacker and attacker.verdict())
    return out


def store_count(project_dir: Path, results: list[dict]) -> dict:
    """The honest sessions' decisions read back from the store: sent, stored, lost, duplicated."""
    from mlfix.project import Project

    sent = [client_id for r in results for client_id in r["sent"]]
    stored = Project.open(project_dir).reviews.decisions()["client_id"].value_counts()
    counts = [int(stored.get(client_id, 0)) for client_id in sent]
    store = {"sent": len(sent), "stored": sum(c > 0 for c in counts), "lost": sum(c == 0 for c in counts),
             "duplicated": sum(c - 1 for c in counts if c > 1)}
    return store


def report(results: list[dict], store: dict, sessions: int, decisions: int, load_before: float,
           **extra) -> dict:
    """Emit the figures of one variant; returns the medians by metric."""
    setup = {"sessions": sessions, "decisions_per_session": decisions, "client": "websockets (protobuf)",
             "server": "streamlit loopback", "load_avg_1m_before": round(load_before, 1),
             "load_avg_1m_after": round(os.getloadavg()[0], 1), **extra}
    medians = {}
    for metric, values in (("page_answer_s", [r["page"] for r in results if r["page"] is not None]),
                           ("grid_answer_s", [r["grid"] for r in results if r["grid"] is not None]),
                           ("decide_s", [v for r in results for v in r["decide"]]),
                           ("decide_run_s", [v for r in results for v in r["decide_run"] if v is not None])):
        if values:
            median, p90 = stats(values)
            medians[metric] = median
            emit("app_load_ws", metric + "_median", round(median, 3), "s", n=len(values), **setup)
            emit("app_load_ws", metric + "_p90", round(p90, 3), "s", n=len(values), **setup)
    failed = [r for r in results if "error" in r]
    emit("app_load_ws", "failed_sessions", len(failed), "sessions", n=sessions, **setup,
         errors=sorted({r["error"] for r in failed})[:3])
    emit("app_load_ws", "unacknowledged_decisions", sum(r["unacknowledged"] for r in results), "decisions",
         n=sessions * decisions, **setup)
    for metric in ("stored", "lost", "duplicated"):
        emit("app_load_ws", f"{metric}_decisions" if metric == "stored" else metric, store[metric], "decisions",
             n=sessions * decisions, **setup, sent=store["sent"])
    return medians


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, help="simultaneous sessions (default 20; 2 with --quick)")
    p.add_argument("--decisions", type=int, help="decisions per session (default 5; 2 with --quick)")
    p.add_argument("--project", help="an existing project (default: build the 200-image demo)")
    p.add_argument("--hostile", action="store_true", help="run the honest sessions alone, then with one "
                   "hostile session alongside (oversized, off-page, flooding and malformed batches)")
    args = p.parse_args(argv)
    sessions = args.sessions or (2 if args.quick else 20)
    decisions = args.decisions if args.decisions is not None else (2 if args.quick else 5)
    with tempfile.TemporaryDirectory(prefix="mlfix-bench-load-ws-") as tmp:
        project_dir = bench_project(args.project, args.quick, Path(tmp))
        load_before = os.getloadavg()[0]
        if not args.hostile:
            results, store = run(project_dir, sessions, decisions)
            report(results, store, sessions, decisions, load_before)
            return
        variants = run_variants(project_dir, sessions, decisions)
    medians = {}
    for variant, (results, store, seen) in variants.items():
        medians[variant] = report(results, store, sessions, decisions, load_before, variant=variant)
        if seen is not None:
            from bench.app_load_hostile import report as report_hostile

            report_hostile(seen, medians, sessions=sessions, decisions_per_session=decisions)


if __name__ == "__main__":
    main()
