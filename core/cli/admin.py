"""`localllm settings | db | users | config`: saved settings, the database, LAN names, provider configs."""

from __future__ import annotations

from pathlib import Path

import click

from core.access.policy import load_access_policy
from core.access.sign_in import SignInGate
from core.chat.configs import ConfigStore
from core.cli.common import database, preferences, warn
from core.errors import ConfigError, NotFoundError
from core.preferences import PREFERENCES
from core.settings import load_settings
from core.storage import files
from core.storage.db import display_url, sqlite_file
from core.storage.schema import SCHEMA_VERSION

# -- settings ----------------------------------------------------------------------------------------


@click.group(short_help="saved settings: list, set NAME VALUE, reset NAME")
def settings() -> None:
    """The saved settings, shared by the dashboard and every command: list, set NAME VALUE, reset NAME."""


@settings.command("list")
def settings_list() -> int:
    """Each setting with its value and where the value comes from (saved, environment, default)."""
    values = preferences().values()
    width = max(len(value.name) for value in values)  # every value in one column
    for value in values:
        shown = ", ".join(value.value) if isinstance(value.value, list) else value.value
        click.echo(f"{value.name:<{width}}  {shown!s:<48} [{value.source}]")
        click.echo(f"{'':<{width}}  {value.help}")
    return 0


@settings.command("set")
@click.argument("name", type=click.Choice(list(PREFERENCES)))
@click.argument("value")
def settings_set(name: str, value: str) -> int:
    """Save NAME = VALUE, checked as the Settings page checks it (endpoints: comma-separated URLs)."""
    stored = preferences().set(name, value)
    click.echo(f"{name} = {', '.join(stored) if isinstance(stored, list) else stored}")
    return 0


@settings.command("reset")
@click.argument("name", type=click.Choice(list(PREFERENCES)))
def settings_reset(name: str) -> int:
    """Forget NAME's saved value: the environment's or the default applies again."""
    prefs = preferences()
    prefs.reset(name)
    value = prefs.value(name)
    click.echo(f"{name} = {value.value} [{value.source}]")
    return 0


# -- the database --------------------------------------------------------------------------------------


def _sqlite_path() -> Path:
    url = load_settings().db_url
    path = sqlite_file(url)
    if path is None:
        raise ConfigError(
            f"{display_url(url)} is not a SQLite file: back it up with its database server's own tools "
            "(PostgreSQL: pg_dump and pg_restore)."
        )
    return path


@click.group(short_help="the database: backup, restore FILE, check")
def db() -> None:
    """The database: backup, restore FILE, check."""


@db.command()
def backup() -> int:
    """Copy the database to data/backups/ (safe while the app runs; the last 7 are kept)."""
    path = _sqlite_path()
    if not path.exists():
        raise NotFoundError(f"There is no database at {path} yet.")
    click.echo(files.backup(path))
    return 0


@db.command()
@click.argument("file", type=click.Path(path_type=Path))
def restore(file: Path) -> int:
    """Replace the database's content with a backup FILE (checked first; what it replaces is backed up)."""
    before = files.restore(_sqlite_path(), file)
    database()  # brings an older backup's schema up to date
    click.echo(f"Restored {file}; what was there before is kept in {before}.")
    return 0


@db.command()
def check() -> int:
    """SQLite's integrity check of the database file (another database: that it opens, its tables
    brought up to date); exit 1 when it finds damage."""
    url = load_settings().db_url
    if sqlite_file(url) is None:
        database().dispose()  # a failure is the StorageError's sentence, exit 1
        click.echo(f"{display_url(url)}: ok (schema version {SCHEMA_VERSION}; its server keeps the backups)")
        return 0
    path = _sqlite_path()
    found = files.problems(path) if path.exists() else [f"there is no database at {path}"]
    for problem in found:
        warn(f"{path}: {problem}")
    if not found:
        newest = next(iter(files.backups(path)), None)
        click.echo(f"{path}: ok" + (f" (newest backup: {newest})" if newest else " (no backup yet)"))
    return 1 if found else 0


# -- LAN user names ----------------------------------------------------------------------------------


def _gate() -> SignInGate:
    return SignInGate(load_access_policy(), database())


@click.group(short_help="LAN user names: list, reset NAME")
def users() -> None:
    """LAN user names: list, reset NAME (a forgotten personal password)."""


@users.command("list")
def users_list() -> int:
    """Names, whether each is claimed with a personal password, and their last sign-in."""
    accounts = _gate().accounts()
    if not accounts:
        click.echo("No LAN user has signed in yet.")
    for account in accounts:
        state = "password set" if account.claimed else "not claimed yet"
        last = f"{account.last_sign_in_at:%Y-%m-%d %H:%M}" if account.last_sign_in_at else "-"
        click.echo(f"{account.display_name:<40} {state:<16} last sign-in {last}")
    return 0


@users.command("reset")
@click.argument("name")
def users_reset(name: str) -> int:
    """Forget NAME's personal password and sign it out everywhere; its next sign-in claims it again."""
    if not _gate().reset(name):
        raise NotFoundError(f"No LAN user named {name!r}.", name=name)
    click.echo(f"{name}: signed out everywhere; the next sign-in with this name sets a new password.")
    return 0


# -- provider configs --------------------------------------------------------------------------------


def _store() -> ConfigStore:
    return ConfigStore(database())


@click.group(short_help="provider configs: list, add, use, remove")
def config() -> None:
    """Provider configs (a local model or an OpenAI-compatible server): list, add, use, remove."""


@config.command("list")
def config_list() -> int:
    """The configs; * marks the current one; keys are shown masked."""
    configs = _store().list_configs()
    if not configs:
        click.echo("No provider configs yet. Add one with: localllm config add PROVIDER MODEL")
    for item in configs:
        mark = "*" if item.is_current else " "
        key = f" key={item.masked_api_key}" if item.api_key else ""
        url = f" {item.base_url}" if item.base_url else ""
        click.echo(f"{mark} {item.id:>3}  {item.name}  [{item.provider}] {item.model}{url}{key}")
    return 0


@config.command("add")
@click.argument("provider", type=click.Choice(["local_model", "openai_compatible"]))
@click.argument("model")
@click.option("--base-url", help="the server's OpenAI-compatible URL, e.g. http://gpu-box:11434/v1")
@click.option("--api-key", help="the server's key (stored in the database, shown masked)")
@click.option("--name", help="a name for the list (default: provider: model)")
@click.option("--use", is_flag=True, help="make it the current config")
def config_add(provider: str, model: str, base_url: str | None, api_key: str | None, name: str | None,
               use: bool) -> int:  # fmt: skip
    """Save a config and print its id."""
    store = _store()
    config_id = store.save_config(provider, model, base_url, api_key, name=name)
    if use:
        store.set_current_config(config_id)
    click.echo(config_id)
    return 0


@config.command("use")
@click.argument("config_id", metavar="ID", type=int)
def config_use(config_id: int) -> int:
    """Make config ID the current one."""
    _store().set_current_config(config_id)
    return 0


@config.command("remove")
@click.argument("config_id", metavar="ID", type=int)
def config_remove(config_id: int) -> int:
    """Delete config ID."""
    _store().delete_config(config_id)
    return 0
