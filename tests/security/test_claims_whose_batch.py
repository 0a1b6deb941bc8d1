"""The Review page binds a tab's batches to who is signed in, and to what it was shown (#15, 3 and 9).

The grid is rendered with the signed-in reviewer's opaque tag (stamped on every action it makes: a
batch queued before a restart is refused for whoever signs in next, see tests/review/test_actions.py)
and the page's images are remembered as shown to this tab (the only ones its batches may decide on).
"""

from __future__ import annotations

import json

from mlfix.review.guard import reviewer_tag
from tests.ui.test_team_app import REVIEWER, project, signed_in, tokens  # noqa: F401  (fixtures)


def test_the_grid_carries_the_reviewers_tag_and_the_tab_remembers_what_it_showed(project, tokens):
    ann = signed_in(project.dir, "ann", REVIEWER, mlfix_review_class="red")
    bob = signed_in(project.dir, "bob", REVIEWER, mlfix_review_class="blue")
    data = {name: json.loads(at.get("bidi_component")[0].proto.json) for name, at in (("ann", ann), ("bob", bob))}
    assert data["ann"]["reviewer_tag"] == reviewer_tag("ann") != data["bob"]["reviewer_tag"] == reviewer_tag("bob")
    shown = ann.session_state["mlfix_review_grid__shown"]  # what grid.shown_ids() reads
    assert {s for ids in shown.values() for s in ids} == {item["id"] for item in data["ann"]["items"]}
    assert not {item["id"] for item in data["ann"]["items"]} & {item["id"] for item in data["bob"]["items"]}
