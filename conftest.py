"""pytest at the repository root: `--doctest-modules` (pyproject.toml) imports every module it meets.

The Streamlit entry and its pages run the app when imported, and the benchmarks are scripts with
their own quick mode (``make bench-quick``): none of them is a doctest module, even when a path
such as ``.`` is given on the command line.
"""

collect_ignore = ["app.py", "app_pages", "bench", "static", "test-output"]
