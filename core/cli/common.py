"""What the commands share: the database, the saved settings, the model library, how to print."""

from __future__ import annotations

import click

from core.hub.library import ModelLibrary
from core.preferences import Preferences
from core.settings import load_settings
from core.storage.db import Database


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
