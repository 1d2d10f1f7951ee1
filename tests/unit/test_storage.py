"""Storage on a real SQLite file: round trips, current config, other processes, old and new schemas."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text

from core.chat.configs import ConfigStore
from core.errors import ConfigError, NotFoundError, SchemaTooNewError
from core.inference.params import GenerationParams
from core.settings import PROJECT_ROOT
from core.storage import repo
from core.storage.db import Database, display_url
from core.storage.schema import (
    SCHEMA_VERSION,
    ConversationRow,
    LanAccountRow,
    LanSessionRow,
    PresetRow,
    utcnow,
)
from ui.i18n import error_text

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


@pytest.mark.sqlite_only
def test_first_start_creates_the_database_file_with_wal_and_version(db_url: str) -> None:
    path = _sqlite_path(db_url)
    assert not path.exists()
    db = Database(db_url)
    assert path.exists()
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
        assert conn.execute(text("SELECT version FROM schema_info")).scalar() == SCHEMA_VERSION
    tables = set(inspect(db.engine).get_table_names())
    assert {"provider_configs", "conversations", "messages", "download_jobs", "custom_models"} <= tables


def test_config_round_trip_and_seed_api(database: Database) -> None:
    store = ConfigStore(database)
    params = GenerationParams(temperature=0.2, max_new_tokens=64)
    config_id = store.save_config(
        "openai_compatible", "llama3", "http://127.0.0.1:11434/v1", "sk-abcdef123456", params=params
    )
    local_id = store.save_config("local_model", "qwen2.5-0.5b")
    saved = store.get_config(config_id)
    assert (saved.provider, saved.model, saved.base_url, saved.api_key) == (
        "openai_compatible",
        "llama3",
        "http://127.0.0.1:11434/v1",
        "sk-abcdef123456",
    )
    assert saved.params == params
    assert saved.name == "llama3"  # unnamed: its model's name, as the form's placeholder says
    assert [c.id for c in store.list_configs()] == [config_id, local_id]

    updated = store.update_config(config_id, model="llama3.1", name="GPU box")
    assert (updated.model, updated.name, updated.api_key) == ("llama3.1", "GPU box", "sk-abcdef123456")
    store.delete_config(local_id)
    assert [c.id for c in store.list_configs()] == [config_id]
    with pytest.raises(NotFoundError):
        store.get_config(local_id)


def test_only_one_config_is_current(database: Database) -> None:
    store = ConfigStore(database)
    first = store.save_config("local_model", "qwen2.5-0.5b")
    second = store.save_config("local_model", "tinyllama-1.1b")
    assert store.get_current_config() is None
    store.set_current_config(first)
    assert store.get_current_config().id == first
    store.set_current_config(second)
    current = store.get_current_config()
    assert current.id == second and current.is_current
    assert [c.id for c in store.list_configs() if c.is_current] == [second]
    with pytest.raises(NotFoundError):
        store.set_current_config(999)
    assert store.get_current_config().id == second


@pytest.mark.parametrize(
    ("provider", "model", "base_url", "message", "in_chinese"),
    [
        ("foo", "m", None, "Unknown provider", None),  # (no page offers another provider)
        ("local_model", "  ", None, "model name is required", "设置无效：请填写模型名称。"),
        ("openai_compatible", "m", None, "needs a base URL",
         "设置无效：OpenAI 兼容服务需要填写服务地址（Base URL）。"),
        ("openai_compatible", "m", "ftp://x", "must start with http",
         "设置无效：服务地址（Base URL）必须以 `http://` 或 `https://` 开头。"),
        ("openai_compatible", "m", "http://[::1", "not a server address",
         r"设置无效：http://\[::1 不是有效的服务地址，正确的形如 `http://localhost:11434/v1`。"),
    ],
)  # fmt: skip
def test_invalid_configs_are_refused_with_a_message(
    database: Database,
    provider: str,
    model: str,
    base_url: str | None,
    message: str,
    in_chinese: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        ConfigStore(database).save_config(provider, model, base_url)
    assert ConfigStore(database).list_configs() == []
    monkeypatch.setattr("ui.state.language", lambda: "zh")  # as a page in Chinese says it
    assert in_chinese is None or error_text(refused.value) == in_chinese


def test_text_past_its_column_is_refused_with_a_sentence_before_anything_is_written(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ConfigStore(database)
    with pytest.raises(ConfigError, match=r"^The name is too long: 100000 characters, at most 200\.$"):
        store.save_config("openai_compatible", "m", "http://127.0.0.1:1/v1", name="n" * 100_000)
    with pytest.raises(ConfigError, match="The base url is too long") as refused:
        store.save_config("openai_compatible", "m", "http://" + "h" * 600)
    monkeypatch.setattr("ui.state.language", lambda: "zh")  # the page's form, in Chinese
    assert error_text(refused.value) == "设置无效：服务地址（Base URL）太长（607 个字符，最多 500 个）。"
    assert store.list_configs() == []
    config_id = store.save_config("local_model", "m" * 300)  # the longest model: its name is cut to fit
    assert len(store.get_config(config_id).name) == 200
    with pytest.raises(ConfigError, match="The api key is too long"):
        store.update_config(config_id, api_key="k" * 501)


def test_api_key_never_appears_in_repr_or_errors(database: Database) -> None:
    store = ConfigStore(database)
    secret = "sk-very-secret-key-1234"
    config_id = store.save_config("openai_compatible", "m", "http://127.0.0.1:1/v1", secret)
    config = store.get_config(config_id)
    assert secret not in repr(config)
    assert secret not in repr(store.list_configs())
    assert config.masked_api_key == "••••1234"
    with pytest.raises(ConfigError) as raised:
        store.update_config(config_id, api_key=secret, base_url="not a url")
    assert secret not in str(raised.value) and secret not in repr(raised.value.params)
    with database.begin() as session:
        from core.storage.schema import ProviderConfigRow

        assert secret not in repr(session.get(ProviderConfigRow, config_id))


def test_a_second_process_sees_committed_rows(database: Database, db_url: str) -> None:
    store = ConfigStore(database)
    store.set_current_config(store.save_config("local_model", "qwen2.5-0.5b", name="从另一个进程"))
    script = (
        "from core.chat.configs import ConfigStore; from core.storage.db import Database; import sys;"
        "c = ConfigStore(Database(sys.argv[1])).get_current_config(); print(c.name, c.model)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, db_url], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "从另一个进程 qwen2.5-0.5b"


@pytest.mark.sqlite_only
def test_a_database_from_an_older_schema_opens_without_loss(db_url: str) -> None:
    path = _sqlite_path(db_url)
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as conn:
        conn.executescript((FIXTURES / "schema_v0.sql").read_text())

    db = Database(db_url)

    assert db.found_version == 0
    store = ConfigStore(db)
    current = store.get_current_config()
    assert (current.name, current.api_key) == ("My server", "sk-old-key-9876")
    assert current.params == GenerationParams()
    with db.begin() as session:
        conversation = repo.list_conversations(session, "local")[0]
        assert conversation.title == "Old chat" and conversation.system_prompt == ""
        messages = repo.list_messages(session, conversation.id)
        assert [m.content for m in messages] == ["你好", "Hello! 你好！"]
        assert [m.parent_id for m in messages] == [None, 1]  # linked into one branch
        assert conversation.uid  # exports and imports know it
        added = repo.add_message(
            session, conversation.id, "assistant", "new", ttft_s=0.1, finish_reason="stop"
        )
        assert added.parent_id == 2  # continues the conversation
        repo.set_setting(session, "ui.language", "zh")
    with db.begin() as session:
        assert repo.list_messages(session, conversation.id)[-1].ttft_s == pytest.approx(0.1)
        assert repo.get_setting(session, "ui.language") == "zh"
    assert Database(db_url).found_version == SCHEMA_VERSION


def test_lan_names_kept_in_an_older_form_move_to_the_tidy_one_unless_it_is_taken(db_url: str) -> None:
    """Version 7 keys a LAN name by its NFKC form: "ａｌｉｃｅ" (full-width, as signed in before) is now
    "alice"; her account, sessions, conversations and presets move with it. Where the tidy key is already
    someone's ("ｂｏｂ" and "bob" both exist), nothing is merged."""
    database = Database(db_url)
    with database.begin() as session:
        for key in ("ａｌｉｃｅ", "ｂｏｂ", "bob"):
            session.add(LanAccountRow(name=key, display_name=key, password_hash="scrypt$x"))
            session.add(LanSessionRow(token_hash=key, name=key, display_name=key, expires_at=utcnow()))
            session.add(ConversationRow(owner=f"lan:{key}", title=f"{key}'s chat", uid=key))
            session.add(PresetRow(owner=f"lan:{key}", name=f"{key}'s preset"))
        session.add(ConversationRow(owner="lan:ｅｒｉｎ", title="before passwords", uid="erin"))
    with database.engine.begin() as conn:
        conn.execute(text("UPDATE schema_info SET version = 6"))

    assert Database(db_url).found_version == 6
    with database.begin() as session:
        assert set(session.scalars(select(LanAccountRow.name))) == {"alice", "ｂｏｂ", "bob"}
        shown = {row.name: row.display_name for row in session.scalars(select(LanAccountRow))}
        # As the admin's list shows them: the name left under its old key as it was typed, told apart.
        assert shown == {"alice": "alice", "ｂｏｂ": "ｂｏｂ", "bob": "bob"}
        assert {row.name: row.display_name for row in session.scalars(select(LanSessionRow))} == shown
        assert set(session.scalars(select(LanSessionRow.name))) == {"alice", "ｂｏｂ", "bob"}
        owners = {row.title: row.owner for row in session.scalars(select(ConversationRow))}
        presets = {row.name: row.owner for row in session.scalars(select(PresetRow))}
    assert owners == {
        "ａｌｉｃｅ's chat": "lan:alice",
        "ｂｏｂ's chat": "lan:ｂｏｂ",
        "bob's chat": "lan:bob",
        "before passwords": "lan:erin",
    }
    assert presets == {
        "ａｌｉｃｅ's preset": "lan:alice",
        "ｂｏｂ's preset": "lan:ｂｏｂ",
        "bob's preset": "lan:bob",
    }


def test_a_database_from_a_newer_app_is_refused_untouched(database: Database, db_url: str) -> None:
    with database.engine.begin() as conn:
        conn.execute(text("UPDATE schema_info SET version = :v"), {"v": SCHEMA_VERSION + 5})
    with pytest.raises(SchemaTooNewError, match="newer than this app"):
        Database(db_url)
    with database.engine.connect() as conn:
        assert conn.execute(text("SELECT version FROM schema_info")).scalar() == SCHEMA_VERSION + 5


def test_conversations_messages_and_search(database: Database) -> None:
    with database.begin() as session:
        mine = repo.create_conversation(session, owner="alice", title="Trip plan", system_prompt="Be brief.")
        repo.add_message(session, mine.id, "user", "Where is 西湖?")
        repo.add_message(
            session,
            mine.id,
            "assistant",
            "In Hangzhou.",
            model="qwen2.5-0.5b",
            prompt_tokens=12,
            completion_tokens=4,
            ttft_s=0.2,
            tokens_per_s=30.5,
            finish_reason="stop",
        )
        repo.create_conversation(session, owner="bob", title="Trip plan too")
    with database.begin() as session:
        assert [c.title for c in repo.list_conversations(session, "alice")] == ["Trip plan"]
        assert [c.title for c in repo.list_conversations(session, "alice", search="西湖")] == ["Trip plan"]
        assert repo.list_conversations(session, "alice", search="nothing like it") == []
        # Typed as it is: "%" and "_" match only themselves (as LIKE wildcards they matched anything).
        assert repo.list_conversations(session, "alice", search="Trip_plan") == []
        assert repo.list_conversations(session, "alice", search="\\") == []
        repo.create_conversation(session, owner="alice", title="Done 100%")
        assert [c.title for c in repo.list_conversations(session, "alice", search="0%")] == ["Done 100%"]
        reply = repo.list_messages(session, mine.id)[-1]
        assert (reply.prompt_tokens, reply.completion_tokens, reply.finish_reason) == (12, 4, "stop")
        assert reply.tokens_per_s == pytest.approx(30.5)
        with pytest.raises(NotFoundError):
            repo.add_message(session, 12345, "user", "orphan")


def test_display_url_hides_passwords() -> None:
    shown = display_url("postgresql://user:hunter2@db.example/localllm")
    assert "hunter2" not in shown and "user" in shown
