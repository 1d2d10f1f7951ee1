"""Engine and sessions: any SQLAlchemy URL; SQLite gets WAL mode, a busy timeout and foreign keys."""

from __future__ import annotations

import itertools
import sqlite3
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from core.errors import StorageError
from core.storage import files
from core.storage.migrations import migrate

BUSY_TIMEOUT_S = 30
WAL_RETRY_S = 0.05
# SQLite files this process has opened. Copying one of them again (keep_wal_before_opening) would open
# and close it with plain file calls, and closing any descriptor of a file drops every POSIX lock the
# process holds on it, SQLite's included: another process could then take the file for its own alone
# and delete the WAL that this one still writes to (those writes were lost when the app closed).
_opened_here: set[Path] = set()
_open_databases: weakref.WeakSet[Database] = weakref.WeakSet()


def _enable_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
    # Switching a new file to WAL needs the exclusive lock, and SQLite answers "locked" at once,
    # without waiting, when connections opened together would otherwise deadlock: try again.
    for attempt in itertools.count():
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt * WAL_RETRY_S >= BUSY_TIMEOUT_S:
                raise
            time.sleep(WAL_RETRY_S)
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def parse_url(url: str) -> URL:
    """The database URL read, or a StorageError saying what one looks like (never echoing it: it may
    hold a password)."""
    try:
        return make_url(url)
    except ArgumentError:
        raise StorageError(
            "The database URL (LOCALLLM_DB_URL) is not one SQLAlchemy can read; one looks like "
            "sqlite:///path/to/localllm.db or postgresql://user:password@host/name."
        ) from None


def display_url(url: str) -> str:
    """The URL with any password hidden, safe to show or log."""
    return parse_url(url).render_as_string(hide_password=True)


def sqlite_file(url: str) -> Path | None:
    """The file behind a SQLite URL; None for other databases, in-memory SQLite and unreadable URLs."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database).expanduser()


def set_aside(url: str) -> Path:
    """Move a damaged SQLite file (with its WAL files, after a recovery copy) out of the way; return
    where it is kept."""
    path = sqlite_file(url)
    if path is None or not path.exists():
        raise StorageError(f"There is no database file to set aside for {display_url(url)}.")
    return files.set_aside(path)


def create_db_engine(url: str) -> Engine:
    parsed = parse_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)
    if (path := sqlite_file(url)) is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False})
    event.listen(engine, "connect", _enable_sqlite_pragmas)
    return engine


class Database:
    """An engine with its schema brought up to date, and a session factory (callers own sessions)."""

    def __init__(self, url: str) -> None:
        self.url = url
        path = sqlite_file(url)
        try:
            first_open = path is not None and path.resolve() not in _opened_here
            kept_wal = files.keep_wal_before_opening(path) if path and first_open else None
            self.engine = create_db_engine(url)
            self.found_version = migrate(self.engine)
        except StorageError:
            raise
        except ImportError as exc:  # the database's driver (psycopg, MySQLdb, ...), imported by create_engine
            raise StorageError(
                f"Cannot open the database {display_url(url)}: its driver ({exc.name or exc}) is not "
                "installed in this app's environment; install it there with pip (psycopg for PostgreSQL; "
                "for MySQL or MariaDB, pymysql, with a URL that begins mysql+pymysql://).",
                url=display_url(url),
            ) from exc
        except NoSuchModuleError as exc:  # a scheme SQLAlchemy has no dialect for ("postgres://", a typo)
            scheme = url.split(":", 1)[0].split("+", 1)[0]
            raise StorageError(
                f"Cannot open the database {display_url(url)}: SQLAlchemy knows no database called "
                f"'{scheme[:40]}' (sqlite, postgresql, mysql, mariadb, ...; PostgreSQL's is written "
                "postgresql://, not postgres://).",
                url=display_url(url),
            ) from exc
        except (SQLAlchemyError, OSError) as exc:
            detail = str(getattr(exc, "orig", None) or exc).rstrip().rstrip(".")
            raise StorageError(
                f"Cannot open the database {display_url(url)}: {exc.__class__.__name__}: {detail}.",
                url=display_url(url),
            ) from exc
        files.drop_copy(kept_wal)  # it opened: the WAL's rows are in the database now
        if path is not None:
            _opened_here.add(path.resolve())
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        _open_databases.add(self)

    @contextmanager
    def begin(self) -> Iterator[Session]:
        """`with db.begin() as session:` commits on success, rolls back on error.

        A database failure (locked past the busy timeout, disk full, damaged file) becomes a StorageError.
        """
        try:
            with self.sessions.begin() as session:
                yield session
        except SQLAlchemyError as exc:
            raise StorageError(
                f"The database {display_url(self.url)} failed: {getattr(exc, 'orig', None) or exc}",
                url=display_url(self.url),
            ) from exc

    def session(self) -> Session:
        return self.sessions()

    def dispose(self) -> None:
        self.engine.dispose()


def close_databases() -> None:
    """Close every open database's connections (SQLite folds its WAL into the file as the last closes)."""
    for database in list(_open_databases):
        database.dispose()
