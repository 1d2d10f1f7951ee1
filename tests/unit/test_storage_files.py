"""The database file: rows still in its WAL survive a damaged file being set aside; backups, restore and
the integrity check, from Python and from `python -m core db`. Real SQLite files, a real process kill."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.chat.service import ChatService
from core.cli import main
from core.errors import StorageError
from core.settings import PROJECT_ROOT
from core.storage import files
from core.storage.db import Database, set_aside, sqlite_file

WRITE_THEN_DIE = """
import os, sys
from core.chat.service import ChatService
from core.storage import repo
from core.storage.db import Database
chat = ChatService(Database(sys.argv[1]), provider=lambda: None)
conversation = chat.new_conversation("kept")
with chat.db.engine.connect() as connection:
    connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")  # what came before is in the file
for i in range(50):
    with chat.db.begin() as session:
        repo.add_message(session, conversation.id, "user", f"committed message {i}")
os._exit(0)  # killed: the last 50 rows are committed, in the WAL only
"""


def titles_and_messages(url: str) -> list[str]:
    chat = ChatService(Database(url), provider=lambda: None)
    return [m.content for c in chat.conversations() for m in chat.messages(c.id)]


@pytest.mark.sqlite_only
def test_rows_still_in_the_wal_are_kept_when_a_damaged_file_is_set_aside(db_url: str) -> None:
    subprocess.run([sys.executable, "-c", WRITE_THEN_DIE, db_url], cwd=PROJECT_ROOT, check=True, timeout=60)
    path = sqlite_file(db_url)
    assert b"committed message 49" in path.with_name(path.name + "-wal").read_bytes()
    with path.open("r+b") as handle:  # every page after the first: the tables the WAL did not touch
        handle.seek(4096)
        handle.write(b"damaged!" * ((path.stat().st_size - 4096) // 8))

    with pytest.raises(StorageError, match="Cannot open the database"):
        Database(db_url)
    kept = set_aside(db_url)

    assert not path.exists() and not path.with_name(path.name + "-wal").exists()
    wals = list(kept.parent.glob(f"{kept.name}*-wal"))
    assert any(b"committed message 49" in wal.read_bytes() for wal in wals)  # nothing committed is lost
    assert titles_and_messages(db_url) == []  # and a new database starts


@pytest.mark.sqlite_only
def test_the_wal_copy_is_dropped_when_the_database_opens_fine(db_url: str) -> None:
    subprocess.run([sys.executable, "-c", WRITE_THEN_DIE, db_url], cwd=PROJECT_ROOT, check=True, timeout=60)
    assert len(titles_and_messages(db_url)) == 50
    assert list((sqlite_file(db_url).parent / files.RECOVERY_DIR).iterdir()) == []


COUNT_ELSEWHERE = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1])
print(connection.execute("SELECT count(*) FROM conversations").fetchone()[0])
connection.close()
"""


@pytest.mark.sqlite_only
def test_opening_the_database_again_in_a_process_loses_no_later_write(db_url: str) -> None:
    def count_in_another_process() -> int:
        path = str(sqlite_file(db_url))
        out = subprocess.run([sys.executable, "-c", COUNT_ELSEWHERE, path], capture_output=True, text=True)
        return int(out.stdout)

    chat = ChatService(Database(db_url), provider=lambda: None)
    chat.new_conversation("first")  # in the WAL, with this process's connection open
    Database(db_url)  # opened again here (the LAN gate does): it must not copy the live files
    assert count_in_another_process() == 1  # that process closes its connection: the last one, it thought
    chat.new_conversation("second")
    # Copying had dropped this process's locks; the other then deleted the WAL this one still wrote to.
    assert count_in_another_process() == 2


@pytest.mark.sqlite_only
def test_backups_restore_and_check(database: Database, db_url: str) -> None:
    chat = ChatService(database, provider=lambda: None)
    chat.new_conversation("before the backup")
    path = sqlite_file(db_url)
    copy = files.backup(path)
    chat.new_conversation("after the backup")
    assert files.problems(path) == []

    files.restore(path, copy)
    assert [c.title for c in chat.conversations()] == ["before the backup"]
    assert len(files.backups(path)) == 2  # the restore backed up what it replaced

    for _ in range(files.BACKUPS_KEPT + 3):
        files.backup(path)
    assert len(files.backups(path)) == files.BACKUPS_KEPT

    broken = path.parent / "broken.db"
    broken.write_bytes(b"SQLite format 3\x00" + b"\xff" * 5000)
    assert files.problems(broken)
    with pytest.raises(StorageError, match="not a sound SQLite database"):
        files.restore(path, broken)
    assert [c.title for c in chat.conversations()] == ["before the backup"]  # untouched


@pytest.mark.sqlite_only
def test_core_db_commands(database: Database, db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    ChatService(database, provider=lambda: None).new_conversation("saved")
    assert main(["db", "backup"]) == 0
    copy = Path(capsys.readouterr().out.strip())
    assert copy.is_file() and copy.parent.name == "backups"
    assert main(["db", "check"]) == 0
    assert ": ok (newest backup:" in capsys.readouterr().out

    ChatService(database, provider=lambda: None).new_conversation("later")
    assert main(["db", "restore", str(copy)]) == 0
    assert "Restored" in capsys.readouterr().out
    assert [c.title for c in ChatService(database, provider=lambda: None).conversations()] == ["saved"]

    assert main(["db", "restore", str(copy.parent / "missing.db")]) == 1
    assert "is not a file" in capsys.readouterr().err
