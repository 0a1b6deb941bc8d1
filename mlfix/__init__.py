"""mlfix: find and fix wrong labels in image datasets.

    >>> import mlfix
    >>> project = mlfix.Project.open("my-project")   # doctest: +SKIP
"""

from mlfix.project import NotAProjectError, Project

__all__ = ["Project", "NotAProjectError"]
__version__ = "0.1.0"
