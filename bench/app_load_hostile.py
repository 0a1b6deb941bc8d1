"""One hostile session beside the honest ones of ``bench.app_load_ws --hostile``: what it got stored.

It opens the Review page like the honest sessions, names itself ``mallory`` in the sidebar's
reviewer field (open mode: the honest sessions are ``bench``, so the per-reviewer rate limit is its
own), and, while the honest sessions decide, sends as the grid's ``actions`` trigger:

- ``oversized_ids``: one "ok" on ``ids_per_action + 1`` ids (its page's, repeated): refused;
- ``oversized_batch``: ``actions_per_batch + 5`` "ok" actions on its page: the first
  ``actions_per_batch`` may be stored, the rest are deferred (this client never resends them);
- ``replay``: that batch's first action again (same seq and client id): skipped, stored once;
- ``off_page``: "ok" and relabel on images of other classes, and its page plus one other: refused;
- ``unknown``: ids not in the project (a 300-character path, a 100 kB one, HTML): refused;
- ``bad_label``: a relabel to a label the project lacks: refused;
- ``other_reviewer``: "ok" stamped with the honest reviewer's tag: refused;
- ``flood``: "ok" on every image of its page, over ``decisions_per_minute``: stored up to the
  reviewer's bucket, the rest deferred with "Slow down";
- ``malformed``: payloads that are not batches, and actions that cannot be read: refused.

Then it sends them again, with new client ids, until the honest sessions are done.
:meth:`Attacker.verdict` reads the store back: rows per attack, ``forbidden_stored`` (rows of
actions the rules refuse: must be 0), mallory's rows against what the bucket allows, and the
refusal messages the grid showed it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from pathlib import Path

from bench.common import emit
from mlfix import limits as _limits
from mlfix.review.guard import reviewer_tag

REVIEWER = "mallory"
HONEST = "bench"
CHEAP = ("oversized_ids", "off_page", "unknown", "bad_label", "other_reviewer", "malformed", "flood")


class Attacker:
    """The hostile session's batches and what it saw; :meth:`run` is the session, :meth:`verdict` the judge."""

    def __init__(self, project_dir: Path, open_session, limits: _limits.Limits | None = None) -> None:
        """``open_session(url)``: the websocket session opener of :mod:`bench.app_load_ws` (passed in,
        so that neither module imports the other)."""
        from mlfix.project import Project

        project = Project.open(project_dir)
        self.open_session = open_session
        self.project_dir, self.limits = project_dir, limits or _limits.current()
        self.all_ids = project.samples["sample_id"].astype(str).tolist()
        self.labels = project.labels
        self.error: str | None = None
        self.expect: dict[str, tuple[str, str]] = {}  # client id -> (attack, "refuse" | "allow")
        self.messages: dict[str, Counter] = {}
        self.batch_s: list[float] = []
        self.sent = Counter()
        self.session_id, self.seq, self.page = str(uuid.uuid4()), 0, []
        self.t_first = self.t_last = None

    # ---------------------------------------------------------------- the actions it makes

    def _action(self, attack: str, rule: str, kind: str, ids: list, **extra) -> dict:
        self.seq += 1
        client_id = str(uuid.uuid4())
        self.expect[client_id] = (attack, rule)
        return {"seq": self.seq, "client_id": client_id, "kind": kind, "ids": ids, **extra}

    def _batch(self, actions: list) -> dict:
        return {"session": self.session_id, "actions": actions}

    def attacks(self, first: bool) -> list[tuple[str, object]]:
        """``(attack, payload)`` in the order sent; ``first``: the whole catalogue, else :data:`CHEAP`."""
        page, lim = self.page, self.limits
        off = [s for s in self.all_ids if s not in set(page)][:50]
        out = [("oversized_ids", self._batch([self._action("oversized_ids", "refuse", "ok",
                                                            (page * (lim.ids_per_action // len(page) + 2))
                                                            [:lim.ids_per_action + 1])]))]
        if first:
            actions = [self._action("oversized_batch", "allow" if i < lim.actions_per_batch else "refuse", "ok",
                                    [page[i % len(page)]]) for i in range(lim.actions_per_batch + 5)]
            out += [("oversized_batch", self._batch(actions)), ("replay", self._batch(actions[:1]))]
        out += self._refused(page, off)
        per_batch, batches = self._flood_size()
        out += [("flood", self._batch([self._action("flood", "allow", "ok", list(page)) for _ in range(per_batch)]))
                for _ in range(batches if first else 1)]
        out += [("malformed", payload) for payload in self._malformed()]
        return out if first else [(name, p) for name, p in out if name in CHEAP]

    def _refused(self, page: list[str], off: list[str]) -> list[tuple[str, dict]]:
        """Batches every action of which the rules refuse: off the page, unknown, bad label, another's tag."""
        return [("off_page", self._batch([self._action("off_page", "refuse", "ok", off[:10]),
                                          self._action("off_page", "refuse", "relabel", off[10:20],
                                                       label=self.labels[-1]),
                                          self._action("off_page", "refuse", "ok", page + off[:1])])),
                ("unknown", self._batch([self._action("unknown", "refuse", "ok", ["x/" + "a" * 300 + ".png"]),
                                         self._action("unknown", "refuse", "ok", ["y" * 100_000]),
                                         self._action("unknown", "refuse", "ok",
                                                      ['<img src=x onerror="alert(1)">', page[0]])])),
                ("bad_label", self._batch([self._action("bad_label", "refuse", "relabel", page[:3],
                                                        label="[Session expired](https://evil.example)")])),
                ("other_reviewer", self._batch([self._action("other_reviewer", "refuse", "ok", page[:3],
                                                             by=reviewer_tag(HONEST))]))]

    def _flood_size(self) -> tuple[int, int]:
        """Actions per flood batch and batches: together over ``decisions_per_minute``, whatever the page."""
        lim = self.limits
        per_action = min(len(self.page), lim.ids_per_action)
        per_batch = min(lim.actions_per_batch, lim.decisions_per_minute // per_action + 5)
        return per_batch, lim.decisions_per_minute // (per_action * per_batch) + 2

    def _malformed(self) -> list:
        page = self.page
        actions = [{"seq": "1", "client_id": "c", "kind": "ok", "ids": page[:1]},
                   self._action("malformed", "refuse", "delete", page[:1]),
                   self._action("malformed", "refuse", "ok", [1, 2]),
                   self._action("malformed", "refuse", "ok", []),
                   self._action("malformed", "refuse", "relabel", page[:1], label={"x": 1}),
                   {**self._action("malformed", "refuse", "ok", page[:1]), "client_id": "z" * 500},
                   self._action("malformed", "refuse", "undo", page[:1], undoes=["not", "an", "id"])]
        self.expect["z" * 500] = ("malformed", "refuse")
        return ["not a batch", [1, 2, 3], {"session": "", "actions": []},
                {"session": self.session_id, "actions": {"seq": 1}}, self._batch(actions)]

    # ---------------------------------------------------------------- the session

    async def run(self, url: str, start: asyncio.Event, honest_done: asyncio.Event) -> dict:
        """Open the page as ``mallory``, send the catalogue, then the cheap attacks until ``honest_done``."""
        await start.wait()
        try:
            session, _ = await self.open_session(url)
        except Exception as error:
            self.error = f"open: {type(error).__name__}: {str(error)[:200]}"
            return {}
        try:
            if session.reviewer_field is None:
                raise RuntimeError("no reviewer field in the sidebar (is sign-in configured?)")
            session.widgets[session.reviewer_field] = REVIEWER
            await session.rerun()
            await session.read_run(time.perf_counter())
            if (session.grid or {}).get("reviewer_tag") != reviewer_tag(REVIEWER):
                raise RuntimeError("the page did not take the reviewer name")
            self.page = session.grid_ids()
            self.t_first = time.time()
            first = True
            while first or not honest_done.is_set():
                for attack, payload in self.attacks(first):
                    await self._send(session, attack, payload)
                first = False
        except Exception as error:  # counted; the honest sessions go on
            self.error = f"attack: {type(error).__name__}: {str(error)[:200]}"
        finally:
            self.t_last = time.time()
            await session.ws.close()
        return {"page": len(self.page)}

    async def _send(self, session, attack: str, payload) -> None:
        t0 = time.perf_counter()
        await session.send_actions(payload)
        self.batch_s.append(time.perf_counter() - t0)
        self.sent[attack] += 1
        for message in (session.grid or {}).get("errors", []):
            self.messages.setdefault(attack, Counter())[str(message)[:160]] += 1

    # ---------------------------------------------------------------- the judge

    def verdict(self) -> dict:
        """What the store holds of the hostile's actions, against the rules."""
        from mlfix.project import Project

        log = Project.open(self.project_dir).reviews.decisions()
        prefix = log["client_id"].astype(str).str.split(":", n=1).str[0]
        mine = log[prefix.isin(list(self.expect)) | (log["reviewer"] == REVIEWER)]
        rows, forbidden, unexpected = Counter(), 0, 0
        for client_id, reviewer in zip(mine["client_id"].astype(str), mine["reviewer"]):
            attack, rule = self.expect.get(client_id.split(":", 1)[0], ("?", "refuse"))
            rows[attack] += 1
            forbidden += rule == "refuse" or reviewer != REVIEWER
            unexpected += attack == "?"
        elapsed = (self.t_last or time.time()) - (self.t_first or time.time())
        cap = self.limits.decisions_per_minute * (1 + elapsed / 60.0)
        return {"stored_rows": dict(rows), "forbidden_stored": forbidden, "unexpected": unexpected,
                "duplicated": int(mine["client_id"].duplicated().sum()), "mallory_rows": len(mine),
                "rate_cap": int(cap), "elapsed_s": round(elapsed, 1), "sent": dict(self.sent),
                "batch_s": self.batch_s, "messages": {a: sorted(m) for a, m in self.messages.items()},
                "error": self.error}


def report(seen: dict, medians: dict, **setup) -> None:
    """Emit the hostile session's figures, and the honest median latency with it over without it."""
    from bench.app_load import stats

    setup = {**setup, "variant": "hostile", "reviewer": REVIEWER}
    emit("app_load_ws", "hostile_forbidden_stored", seen["forbidden_stored"], "rows", **setup,
         stored_rows=seen["stored_rows"], duplicated=seen["duplicated"], unexpected=seen["unexpected"])
    emit("app_load_ws", "hostile_stored_rows", seen["mallory_rows"], "rows", **setup,
         rate_cap=seen["rate_cap"], elapsed_s=seen["elapsed_s"], limits=vars(_limits.current()))
    emit("app_load_ws", "hostile_batches", sum(seen["sent"].values()), "batches", **setup, sent=seen["sent"],
         error=seen["error"])
    if seen["batch_s"]:
        median, p90 = stats(seen["batch_s"])
        emit("app_load_ws", "hostile_batch_s_median", round(median, 3), "s", n=len(seen["batch_s"]), **setup,
             p90=round(p90, 3))
    emit("app_load_ws", "hostile_refusals", sum(len(m) for m in seen["messages"].values()), "messages",
         **setup, messages={a: m[:4] for a, m in seen["messages"].items()})
    for metric in ("decide_s", "decide_run_s", "page_answer_s"):
        base, with_hostile = medians.get("baseline", {}).get(metric), medians.get("hostile", {}).get(metric)
        if base and with_hostile:
            emit("app_load_ws", f"{metric}_median_ratio", round(with_hostile / base, 3), "x", **setup,
                 baseline=round(base, 3), hostile=round(with_hostile, 3), budget=1.2)
