"""Duplicates: each group of exact or near copies side by side; keep one, mark the rest ``duplicate``.

Thin: the page is :func:`mlfix.ui.duplicates_view.main` (groups from the scores table, decisions through
the Review page's store, guard and claims). Runs inside ``app.py`` and on its own (AppTest).
"""

from __future__ import annotations

from mlfix.ui import access, duplicates_view

access.require("view")  # anyone who may view sees the groups; deciding needs "review" (checked per action)
duplicates_view.main()
