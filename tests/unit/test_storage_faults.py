"""The database under stress and damage: concurrent writers, a lock held too long, a file gone bad."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest

from core.chat.service import ChatService
from core.errors import StorageError
from core.storage import db as db_module
from core.storage import repo
from core.storage.db import Database, set_aside, sqlite_file

WRITERS, MESSAGES_EACH = 6, 40


def add_user_message(database: Database, conversation_id: int, text: str) -> None:
    """What sending a chat message writes first."""
    with database.begin() as session:
        repo.add_message(session, conversation_id, "user", text)


def _write_messages(url: str, owner: str) -> None:
    database = Database(url)
    conversation = ChatService(database, provider=lambda: None, owner=owner).new_conversation(f"{owner}'s")
    for number in range(MESSAGES_EACH):
        add_user_message(database, conversation.id, f"message {number} from {owner}")


def test_many_processes_writing_at_once_never_see_database_is_locked(db_url: str) -> None:
    """Also the first start of a new database file by several processes at once (one migrates)."""
    context = multiprocessing.get_context("spawn")  # separate interpreters, as separate app processes
    processes = [context.Process(target=_write_messages, args=(db_url, f"user{n}")) for n in range(WRITERS)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0] * WRITERS  # a "database is locked" would exit 1
    for n in range(WRITERS):
        chat = ChatService(Database(db_url), provider=lambda: None, owner=f"user{n}")
        [conversation] = chat.conversations()
        assert len(chat.messages(conversation.id)) == MESSAGES_EACH


def test_many_threads_writing_at_once_lose_nothing(db_url: str) -> None:
    errors: list[BaseException] = []

    def write(owner: str) -> None:
        try:
            _write_messages(db_url, owner)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(f"thread{n}",)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


@pytest.mark.sqlite_only
def test_a_lock_held_past_the_busy_timeout_is_a_storage_error_not_a_crash(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "BUSY_TIMEOUT_S", 0.3)  # the real one is 30 s
    database = Database(db_url)
    chat = ChatService(database, provider=lambda: None)
    conversation = chat.new_conversation("kept")
    blocker = sqlite3.connect(sqlite_file(db_url))
    blocker.execute("BEGIN EXCLUSIVE")  # another program holds the write lock
    try:
        with pytest.raises(StorageError, match="database is locked"):
            add_user_message(database, conversation.id, "waits, then gives up")
    finally:
        blocker.rollback()
        blocker.close()
    add_user_message(database, conversation.id, "works again")  # nothing is stuck afterwards
    assert [m.content for m in chat.messages(conversation.id)] == ["works again"]


@pytest.mark.sqlite_only
def test_a_damaged_file_is_set_aside_and_a_new_database_starts(db_url: str) -> None:
    path = sqlite_file(db_url)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a database" * 1000)
    with pytest.raises(StorageError, match="Cannot open the database"):
        Database(db_url)
    kept = set_aside(db_url)
    assert kept.read_bytes() == b"not a database" * 1000  # renamed, not deleted
    assert kept.name.startswith("test.db.damaged-")
    assert not path.exists()
    assert ChatService(Database(db_url), provider=lambda: None).conversations() == []


def test_only_sqlite_files_can_be_set_aside(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        set_aside("sqlite:///:memory:")
    with pytest.raises(StorageError):
        set_aside(f"sqlite:///{tmp_path / 'missing.db'}")
