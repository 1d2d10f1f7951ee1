"""What the commands share: the database, the saved settings, the model library, how to print."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import click

from core.hub.library import ModelLibrary
from core.preferences import Preferences
from core.settings import load_settings
from core.storage.db import Database

if TYPE_CHECKING:
    from core.inference.engine import LocalEngine
    from core.inference.loading import LoadedModel

SLOW_LOAD_NOTICE_S = 2.0  # a cached load takes ~0.1 s; past this the weights are being prepared


def database() -> Database:
    return Database(load_settings().db_url)


def preferences() -> Preferences:
    return Preferences(database())


def library(endpoints: list[str] | None = None) -> ModelLibrary:
    """The user's models where the saved settings say (the same folder as the dashboard's)."""
    prefs = preferences()
    return ModelLibrary(prefs.db, prefs, endpoints_override=endpoints)


def warn(text: str) -> None:
    click.echo(text, err=True)


def load_with_notice(engine: LocalEngine, key: str, *, force: bool = False) -> LoadedModel:
    """Load `key`, saying on stderr why when it takes long: a first load (or the first after an update
    changed how weights are stored) quantizes them for this CPU once, up to a minute."""
    text = f"Loading {key}… (a first load prepares its weights for this machine, once)"
    notice = threading.Timer(SLOW_LOAD_NOTICE_S, warn, [text])
    notice.start()
    try:
        return engine.load(key, force=force)
    finally:
        notice.cancel()
