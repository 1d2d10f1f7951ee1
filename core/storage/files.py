"""The SQLite file on disk: its WAL kept safe before an open, a damaged file set aside with a recovery
copy, automatic backups through SQLite's backup API, restore and an integrity check.

SQLite deletes the `-wal` file when the last connection closes, even after it failed to read a
damaged main file: rows committed but not yet checkpointed would be gone before anyone could set the
file aside. So before the first connection, a file with a non-empty WAL is copied with it into
`recovery/`; the copy is dropped once the database opened fine and kept (and set aside with the file)
when it did not.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import threading
import time
from datetime import datetime
from pathlib import Path

from core.errors import StorageError

SIDE_FILES = ("-wal", "-shm")
RECOVERY_DIR = "recovery"
BACKUPS_DIR = "backups"
BACKUPS_KEPT = 7
BACKUP_EVERY_S = 24 * 3600.0
logger = logging.getLogger(__name__)


def _stamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S-%f")


def _copy_with_side_files(path: Path, target: Path) -> Path:
    """Copy a SQLite file and its -wal/-shm beside `target` (same suffixes), each synced to disk."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", *SIDE_FILES):
        source = path.with_name(path.name + suffix)
        if source.exists():
            copy = target.with_name(target.name + suffix)
            shutil.copy2(source, copy)
            with copy.open("rb+") as handle:
                os.fsync(handle.fileno())
    return target


def _with_side_files(path: Path) -> list[Path]:
    return [p for p in (path, *(path.with_name(path.name + s) for s in SIDE_FILES)) if p.exists()]


def keep_wal_before_opening(path: Path) -> Path | None:
    """Copy the file and its WAL into recovery/ when the WAL holds anything; return the copy."""
    wal = path.with_name(path.name + "-wal")
    if not (path.exists() and wal.exists() and wal.stat().st_size > 0):
        return None
    return _copy_with_side_files(path, path.parent / RECOVERY_DIR / f"{path.name}.{_stamp()}")


def drop_copy(copy: Path | None) -> None:
    for file in _with_side_files(copy) if copy else []:
        file.unlink(missing_ok=True)


def set_aside(path: Path) -> Path:
    """Move a damaged SQLite file out of the way, kept for recovery; return where it is now.

    A recovery copy of the file with its -wal/-shm is made first (synced), then copies taken before
    earlier opens join it, and only then are the originals removed."""
    if not path.exists():
        raise StorageError(f"There is no database file to set aside at {path}.")
    kept = _copy_with_side_files(path, path.with_name(f"{path.name}.damaged-{_stamp()}"))
    for number, copy in enumerate(sorted((path.parent / RECOVERY_DIR).glob(f"{path.name}.*[0-9]")), 1):
        for file in _with_side_files(copy):
            file.rename(kept.with_name(f"{kept.name}.before-open-{number}{file.name[len(copy.name) :]}"))
    for file in _with_side_files(path):
        file.unlink()
    return kept


def _connect(path: Path, read_only: bool = False) -> sqlite3.Connection:
    if read_only:
        return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    return sqlite3.connect(path, timeout=30)


def problems(path: Path) -> list[str]:
    """What SQLite's integrity check finds wrong with a database file; [] when it is sound."""
    try:
        with contextlib.closing(_connect(path, read_only=True)) as connection:
            found = [row[0] for row in connection.execute("PRAGMA integrity_check")]
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    return [] if found == ["ok"] else found


def backup(path: Path, folder: Path | None = None) -> Path:
    """A consistent copy of the live database (SQLite's backup API: safe while the app writes), in
    backups/ beside it; the oldest beyond BACKUPS_KEPT are removed."""
    folder = folder or path.parent / BACKUPS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{path.stem}-{_stamp()}.db"
    try:
        with contextlib.closing(_connect(path)) as source, contextlib.closing(_connect(target)) as copy:
            source.backup(copy)
    except sqlite3.Error as exc:
        target.unlink(missing_ok=True)
        raise StorageError(f"The backup of {path} failed: {exc}.") from exc
    for old in sorted(folder.glob(f"{path.stem}-*.db"))[:-BACKUPS_KEPT]:
        old.unlink()
    return target


def backups(path: Path) -> list[Path]:
    """The backups of this database, newest first."""
    return sorted((path.parent / BACKUPS_DIR).glob(f"{path.stem}-*.db"), reverse=True)


def backup_due(path: Path, every_s: float = BACKUP_EVERY_S) -> bool:
    newest = next(iter(backups(path)), None)
    return newest is None or time.time() - newest.stat().st_mtime >= every_s


def restore(path: Path, source: Path) -> Path:
    """Replace the database's content with a backup file's (checked first); the current content is
    backed up before. Returns that backup."""
    if not source.is_file():
        raise StorageError(f"{source} is not a file.")
    if found := problems(source):
        raise StorageError(f"{source} is not a sound SQLite database ({found[0]}); nothing was changed.")
    before = backup(path) if path.exists() and not problems(path) else None
    try:
        with (
            contextlib.closing(_connect(source, read_only=True)) as backup_file,
            contextlib.closing(_connect(path)) as live,
        ):
            backup_file.backup(live)
    except sqlite3.Error as exc:
        raise StorageError(f"Restoring {source} failed: {exc}.") from exc
    logger.info("restored %s from %s (previous content in %s)", path, source, before)
    return before or path


_scheduled: set[Path] = set()
_scheduled_lock = threading.Lock()


def keep_daily_backups(path: Path, every_s: float = BACKUP_EVERY_S) -> None:
    """Back the database up now (when the newest backup is older than an hour) and then every day, on a
    daemon thread of this process; once per file whatever the callers."""
    with _scheduled_lock:
        if path in _scheduled:
            return
        _scheduled.add(path)

    def run() -> None:
        wait = 0.0 if backup_due(path, every_s=3600.0) else every_s
        while True:
            time.sleep(wait)
            try:
                logger.info("backed up the database to %s", backup(path))
            except (StorageError, OSError) as exc:
                logger.warning("automatic backup failed: %s", exc)
            wait = every_s

    threading.Thread(target=run, name="database-backups", daemon=True).start()
