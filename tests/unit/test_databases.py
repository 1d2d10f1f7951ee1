"""Any SQLAlchemy URL works: the same storage on a SQLite file and on real PostgreSQL and MariaDB
servers (throwaway ones the tests start, tests/fixtures/database_servers.py). They refuse what SQLite
lets through: NUL characters in text (PostgreSQL), integers past 32 bits, strings past their column's
length, a boolean default written as 0, two processes creating the tables at once; MariaDB's default
collation takes "ｂｏｂ" for "bob", its TEXT holds 64 KB and it has no partial index. `make
test-postgresql` and `make test-mariadb` run the whole suite on them."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select, text, update
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.schema import CreateColumn

from core.chat import archive
from core.chat.configs import ConfigStore
from core.chat.providers import OpenAICompatibleProvider
from core.chat.service import ChatService
from core.cli import main
from core.errors import StorageError
from core.hub.manager import DownloadManager
from core.hub.transfer import DownloadTarget, TransferPolicy
from core.inference.events import TextDelta
from core.storage import jobs, repo
from core.storage.db import Database, display_url
from core.storage.schema import (
    SCHEMA_VERSION,
    Base,
    LanAccountRow,
    LanSessionRow,
    PresetRow,
    ProviderConfigRow,
    utcnow,
)
from tests.fixtures.hub_server import HubServer
from tests.fixtures.openai_faults import FaultyOpenAIServer

TINYLLAMA_BYTES = 2_200_119_864  # TinyLlama-1.1B's weights: past a 32-bit integer


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def url(request: pytest.FixtureRequest, db_url: str) -> str:
    return db_url if request.param == "sqlite" else request.getfixturevalue(request.param).new_database()


@pytest.fixture
def db(url: str) -> Iterator[Database]:
    database = Database(url)
    yield database
    database.dispose()


def test_the_app_and_the_cli_creating_the_tables_at_once_both_open_it(url: str) -> None:
    """`localllm app` and a `localllm` command started together on a new database: each waits for the
    other's migration instead of failing on a table the other just made."""
    opened: list[Database] = []
    failed: list[Exception] = []
    start = threading.Barrier(6)

    def open_it() -> None:
        start.wait()
        try:
            opened.append(Database(url))
        except Exception as exc:  # what a user would see: the sentence of the StorageError
            failed.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failed == []
    with opened[0].engine.connect() as conn:
        assert conn.execute(text("SELECT version FROM schema_info")).scalars().all() == [SCHEMA_VERSION]
    for database in opened:
        database.dispose()


def test_a_reply_holding_nul_characters_is_kept_without_them(db: Database) -> None:
    """A model's byte-level token can decode to NUL (the tiny model's do), as can a pasted file."""
    with db.begin() as session:
        conversation = repo.create_conversation(session, owner="local", title="Bytes\x00 and all")
        repo.add_message(session, conversation.id, "user", "Hello\x00 there")
        repo.add_message(session, conversation.id, "assistant", "Hi\x00\x00!", finish_reason="stop")
    with db.begin() as session:
        assert [m.content for m in repo.list_messages(session, conversation.id)] == ["Hello there", "Hi!"]
        assert [c.title for c in repo.list_conversations(session, "local", search="hello\x00 THERE")] == [
            "Bytes and all"
        ]


def test_a_reply_holding_nul_characters_shows_what_is_kept(db: Database) -> None:
    """Streamed to the page as stored: a server's (or the tiny model's) NUL is dropped from both."""
    event = json.dumps(
        {"choices": [{"index": 0, "delta": {"content": "Hi\x00 there"}, "finish_reason": "stop"}]}
    )
    with FaultyOpenAIServer(f"stream:{event}") as server:
        chat = ChatService(db, lambda: OpenAICompatibleProvider(server.url, None, "m"))
        conversation = chat.new_conversation()
        streamed = "".join(e.text for e in chat.send(conversation.id, "Hello") if isinstance(e, TextDelta))
    assert streamed == chat.messages(conversation.id)[-1].content == "Hi there"


def test_names_that_differ_only_in_width_or_case_stay_apart(db: Database) -> None:
    """LAN names are keyed as typed after NFKC (core.access.policy.name_key) and uids are exact: MariaDB's
    default collation would take "ｂｏｂ" (kept under its old key by the version-7 upgrade) for "bob"."""
    with db.begin() as session:
        for name in ("bob", "ｂｏｂ"):
            session.add(LanAccountRow(name=name, display_name=name, password_hash="scrypt$x"))
        for uid in ("chat", "Chat"):
            repo.create_conversation(session, owner="lan:bob", title=uid, uid=uid)
    with db.begin() as session:
        assert sorted(session.scalars(select(LanAccountRow.name))) == ["bob", "ｂｏｂ"]
        assert sorted(c.title for c in repo.list_conversations(session, "lan:bob")) == ["Chat", "chat"]


def test_several_saved_servers_and_one_current(db: Database) -> None:
    """SQLite and PostgreSQL keep "one current" with a partial unique index; MariaDB has none, and a plain
    one refused the second saved server."""
    store = ConfigStore(db)
    ids = [store.save_config("openai_compatible", f"m{n}", f"http://gpu-box:{8000 + n}/v1") for n in range(3)]
    for config_id in ids:
        store.set_current_config(config_id)
    listed = [(c.id, c.is_current) for c in store.list_configs()]
    assert listed == [(ids[0], False), (ids[1], False), (ids[2], True)]
    if db.engine.dialect.name in ("sqlite", "postgresql"):  # where it can, the database itself refuses two
        with pytest.raises(StorageError, match=r"uq_provider_configs_current|UNIQUE"), db.begin() as session:
            session.execute(
                update(ProviderConfigRow).where(ProviderConfigRow.id == ids[0]).values(is_current=True)
            )


def test_a_long_message_is_kept_whole(db: Database) -> None:
    """A pasted document: MySQL's TEXT would hold 64 KB of it."""
    document = "灯塔看守人的日记。" * 20_000  # 180,000 characters, 540,000 bytes
    with db.begin() as session:
        conversation = repo.create_conversation(session, owner="local", title="Long")
        repo.add_message(session, conversation.id, "user", document)
    with db.begin() as session:
        assert [m.content for m in repo.list_messages(session, conversation.id)] == [document]


def test_a_download_past_2_gib_keeps_its_progress(db: Database) -> None:
    with db.begin() as session:
        job = jobs.open_job(session, "tinyllama-1.1b", "TinyLlama/TinyLlama-1.1B-Chat-v1.0")
        jobs.save_progress(
            session, job.id, bytes_done=TINYLLAMA_BYTES - 1, bytes_total=TINYLLAMA_BYTES,
            current_file="model.safetensors", state="running",
        )  # fmt: skip
    with db.begin() as session:
        saved = jobs.latest_job(session, "tinyllama-1.1b")
    assert saved is not None and (saved.bytes_done, saved.bytes_total) == (
        TINYLLAMA_BYTES - 1,
        TINYLLAMA_BYTES,
    )


def test_a_download_from_a_hub_with_long_commit_ids_is_kept(
    db: Database, hub: HubServer, tmp_path: Path
) -> None:
    """The listing accepts a commit id of up to 100 characters (a mirror may name its revisions its own
    way); the download's job keeps it whole."""
    hub.add_repo("org/model", {"config.json": b"{}", "model.safetensors": b"\x00" * 4096}).commit = "c" * 100
    manager = DownloadManager(
        db, tmp_path / "models", lambda: [hub.url], policy=TransferPolicy(disk_margin_bytes=0)
    )
    assert manager.start(DownloadTarget("model", "org/model"))
    done = manager.wait("model", timeout=30)
    assert done is not None and done.state == "completed", done
    with db.begin() as session:
        assert jobs.latest_job(session, "model").commit == "c" * 100


def test_an_import_leaves_out_statistics_that_fit_no_column(db: Database) -> None:
    """An export from elsewhere (or a hostile one): a finish reason past its column's 40 characters and a
    token count past 32 bits are left out; the conversation and its text come in."""
    exported = {
        "format": archive.FORMAT,
        "version": archive.VERSION,
        "conversations": [{
            "uid": "from-elsewhere",
            "title": "Imported",
            "messages": [
                {"id": 1, "parent": None, "role": "user", "content": "Hi"},
                {"id": 2, "parent": 1, "role": "assistant", "content": "Hello", "finish_reason": "x" * 41,
                 "prompt_tokens": 2**31, "completion_tokens": 7, "model": "m" * 300},
            ],
        }],
    }  # fmt: skip
    result = archive.import_bytes(db, "local", json.dumps(exported).encode())
    assert result.imported == 1
    with db.begin() as session:
        [conversation] = repo.list_conversations(session, "local")
        *_, reply = repo.list_messages(session, conversation.id)
    assert (reply.content, reply.finish_reason, reply.prompt_tokens) == ("Hello", None, None)
    assert (reply.completion_tokens, reply.model) == (7, "m" * 300)


def test_pinned_conversations_come_first_and_search_ignores_case(db: Database) -> None:
    with db.begin() as session:
        older = repo.create_conversation(
            session, owner="local", title="Older: Lighthouse keepers", pinned_at=utcnow()
        )
        newer = repo.create_conversation(session, owner="local", title="Newer")
        repo.add_message(session, newer.id, "user", "关于灯塔的问题")
    with db.begin() as session:
        assert [c.id for c in repo.list_conversations(session, "local")] == [older.id, newer.id]
        assert [c.id for c in repo.list_conversations(session, "local", search="LIGHTHOUSE")] == [older.id]
        assert [c.id for c in repo.list_conversations(session, "local", search="灯塔")] == [newer.id]
        assert repo.list_conversations(session, "local", search="50%_off") == []


@pytest.mark.parametrize(
    ("row", "column", "default"),
    [
        (lambda: LanSessionRow(token_hash="t" * 64, name="alice", display_name="Alice", expires_at=utcnow()),
         LanSessionRow.is_admin, False),
        (lambda: PresetRow(owner="local", name="Terse"), PresetRow.params, {}),
        (lambda: PresetRow(owner="local", name="Terse"), PresetRow.system_prompt, ""),
    ],
    ids=["boolean", "json", "text"],
)  # fmt: skip
def test_a_column_added_by_a_later_version_gets_its_default_on_rows_already_there(
    url: str, row: Callable[[], Base], column: InstrumentedAttribute[Any], default: object
) -> None:
    """An older database lacks a column: the upgrade adds it with its default, written as each database
    takes it (a boolean as false, which PostgreSQL takes and 0 it does not; JSON and TEXT as an expression
    in parentheses, as MySQL 8 wants them)."""
    database = Database(url)
    with database.begin() as session:
        session.add(row())
    table = column.class_.__tablename__
    with database.engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column.key}"))
        conn.execute(text("UPDATE schema_info SET version = :version"), {"version": SCHEMA_VERSION - 1})
    database.dispose()

    upgraded = Database(url)
    assert upgraded.found_version == SCHEMA_VERSION - 1
    assert column.key in {found["name"] for found in inspect(upgraded.engine).get_columns(table)}
    with upgraded.begin() as session:
        assert session.scalars(select(column)).all() == [default]
    upgraded.dispose()


def test_text_and_json_defaults_are_written_as_mysql_8_takes_them() -> None:
    """MySQL 8 refuses a literal default on a TEXT or JSON column ("BLOB, TEXT, GEOMETRY or JSON column
    can't have a default value") and takes it in parentheses; MariaDB, which the suite runs, takes both,
    and no MySQL server is packaged here, so this checks the DDL each table is created with."""
    dialect = mysql.dialect()
    checked = []
    for table in Base.metadata.sorted_tables:
        for column in table.columns:
            kind = column.type.compile(dialect=dialect)
            if column.server_default is None or not re.search(r"TEXT|JSON|BLOB", kind):
                continue
            created = str(CreateColumn(column).compile(dialect=dialect))
            assert re.search(r" DEFAULT \(.*\)", created), created
            checked.append(f"{table.name}.{column.name}")
    assert "presets.params" in checked
    assert "conversations.system_prompt" in checked


def test_db_check_says_whether_the_database_opens(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOCALLLM_DB_URL", url)
    Database(url).dispose()
    assert main(["db", "check"]) == 0
    checked = capsys.readouterr().out
    if url.startswith("sqlite"):
        assert checked.endswith(": ok (no backup yet)\n")
        return
    shown = display_url(url)
    assert checked == f"{shown}: ok (schema version {SCHEMA_VERSION}; its server keeps the backups)\n"
    assert main(["db", "backup"]) == 2  # a copy of a file: SQLite's only
    refused = capsys.readouterr().err
    assert f"{shown} is not a SQLite file: back it up with its database server's own tools" in refused
