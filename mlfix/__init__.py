"""mlfix: find and fix wrong labels in image datasets.

    >>> import mlfix, tempfile
    >>> from mlfix.demo import build_demo
    >>> folder = build_demo(tempfile.mkdtemp() + "/demo", limit=40, index=False).dir  # digits, not indexed
    >>> project = mlfix.Project.open(folder)
    >>> project.labels[:3], len(project.samples)
    (['eight', 'five', 'four'], 40)

The README's notebook example goes on from there (``project.index()``, ``.order``, ``.scores``).
"""

from mlfix.project import NotAProjectError, Project

__all__ = ["Project", "NotAProjectError"]
__version__ = "0.1.0"
