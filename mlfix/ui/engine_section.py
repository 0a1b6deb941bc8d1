"""The Training page's engine choice: where the features are extracted (this process or a Ray
cluster), turned into ``mlfix index`` arguments for the background job.

The address a reviewer types reaches the job's argv (never a shell): it is checked by
:class:`~mlfix.settings.IndexSettings` (the same rule as ``mlfix.toml`` and ``--ray-address``) and
passed as one ``--ray-address=ADDR`` argument, so it can never be read as another option.

    >>> from mlfix.settings import IndexSettings
    >>> engine_args(IndexSettings(), "ray", "auto")
    ['--engine', 'ray', '--ray-address=auto']
    >>> engine_args(IndexSettings(engine="ray", ray_address="auto"), "ray", "auto")
    []
    >>> engine_args(IndexSettings(engine="ray", ray_address="auto"), "local", "")
    ['--engine', 'local']
"""

from __future__ import annotations

import streamlit as st

from mlfix.errors import SettingsError
from mlfix.settings import ENGINES, IndexSettings
from mlfix.ui import text

ENGINE_LABELS = {"local": "local (this process)", "ray": "Ray cluster"}


def engine_args(settings: IndexSettings, engine: str, address: str) -> list[str]:
    """The ``mlfix index`` arguments that change the project's engine to ``engine`` (and, for Ray,
    its address to ``address``; ``""`` = join or start a Ray on this machine); ``[]`` when nothing
    changes. Raises :class:`~mlfix.errors.SettingsError` for an engine or address the settings refuse."""
    # "" clears the address (replace keeps the current value only for None)
    chosen = settings.replace(engine=engine, ray_address=address if engine == "ray" else None)
    args: list[str] = []
    if chosen.engine != settings.engine:
        args += ["--engine", chosen.engine]
    if chosen.engine == "ray" and chosen.ray_address != settings.ray_address:
        args.append(f"--ray-address={chosen.ray_address or ''}")  # one argument: never read as an option
    return args


def engine_controls(settings: IndexSettings) -> tuple[list[str], str | None]:
    """Draw the engine select (and the Ray address field when Ray is chosen) and return
    ``(mlfix index arguments, error)``: on a refused address the error says why and the arguments are ``[]``."""
    c1, c2 = st.columns(2)
    engine = c1.selectbox("Engine", ENGINES, index=ENGINES.index(settings.engine), key="ix_engine",
                          format_func=ENGINE_LABELS.get,
                          help="Ray: the features are extracted by Ray Data on a cluster (see the README, "
                               "\"On a Ray cluster\"); the project comes out the same.")
    address = ""
    if engine == "ray":
        address = c2.text_input("Ray address", value=settings.ray_address or "", key="ix_ray_address",
                                placeholder="auto, HOST:6379 or ray://HOST:10001",
                                help="Empty: join or start a Ray on this machine. auto: the cluster "
                                     "`ray start --head` started here.")
    try:
        return engine_args(settings, engine, address), None
    except SettingsError as err:
        return [], str(err)


def last_engine(project_dir) -> str | None:
    """The last features pass's engine in words (``features/engine.json``), or None."""
    try:
        from mlfix.pipeline.artifacts import read_engine
    except ImportError:  # an mlfix without the engine record
        return None
    from mlfix.pipeline.artifacts import engine_text

    record = read_engine(project_dir)
    return text.plain(engine_text(record)) if isinstance(record, dict) else None
