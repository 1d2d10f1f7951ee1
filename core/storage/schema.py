"""Tables (SQLAlchemy 2.0 typed ORM). Bump SCHEMA_VERSION when a table or column changes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    false,
    text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator, TypeEngine

SCHEMA_VERSION = 8
INT_MAX = 2**31 - 1  # Integer columns: 32 bits on PostgreSQL and MySQL


def utcnow() -> datetime:
    return datetime.now(UTC)


MYSQL = ("mysql", "mariadb")  # SQLAlchemy's names for MySQL and MariaDB
# Text compared as written on MySQL and MariaDB: their default collations take "ｂｏｂ" for "bob" and "A"
# for "a", which would merge two LAN names, two conversations' uids, two keys.
EXACT = "utf8mb4_bin"


class _WithoutNul(TypeDecorator[str]):
    """Text stored without NUL characters: PostgreSQL's text refuses them, and a model's byte-level token,
    a pasted file or a request can hold one (it shows as nothing); the same on every database."""

    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return value.replace("\x00", "") if value else value

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return dialect.type_descriptor(self.mysql_type() if dialect.name in MYSQL else self.impl_instance)

    def mysql_type(self) -> TypeEngine[Any]:
        raise NotImplementedError


class Chars(_WithoutNul):
    impl = String
    cache_ok = True

    def mysql_type(self) -> TypeEngine[Any]:
        return mysql.VARCHAR(self.impl_instance.length, collation=EXACT)


class LongText(_WithoutNul):
    """Text of any length: MySQL's TEXT holds 64 KB, a message may be longer."""

    impl = Text
    cache_ok = True

    def mysql_type(self) -> TypeEngine[Any]:
        return mysql.LONGTEXT(collation=EXACT)


# The defaults of TEXT and JSON columns are written as expressions, in parentheses: MySQL 8 refuses a bare
# literal there ("BLOB, TEXT, GEOMETRY or JSON column can't have a default value"); the others take both.
EMPTY_JSON = text("('{}')")
EMPTY_TEXT = text("('')")


class Base(DeclarativeBase):
    type_annotation_map: ClassVar = {
        dict[str, Any]: JSON,
        # MySQL's DATETIME keeps whole seconds unless told: messages of one second would tie.
        datetime: DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), *MYSQL),
    }


class SchemaInfo(Base):
    __tablename__ = "schema_info"

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int]


class ProviderConfigRow(Base):
    __tablename__ = "provider_configs"
    __table_args__ = (
        # At most one current config, enforced by the database itself.
        # (MySQL and MariaDB have no partial index: there, ConfigStore's one transaction is the rule.)
        Index(
            "uq_provider_configs_current",
            "is_current",
            unique=True,
            sqlite_where=text("is_current = 1"),
            postgresql_where=text("is_current"),
        ).ddl_if(dialect=("sqlite", "postgresql")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(Chars(200))
    provider: Mapped[str] = mapped_column(Chars(40))
    model: Mapped[str] = mapped_column(Chars(300))
    base_url: Mapped[str | None] = mapped_column(Chars(500))
    api_key: Mapped[str | None] = mapped_column(Chars(500))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=EMPTY_JSON)
    is_current: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:  # never show the api_key
        return f"ProviderConfigRow(id={self.id!r}, name={self.name!r}, provider={self.provider!r})"


class ConversationRow(Base):
    __tablename__ = "conversations"
    __table_args__ = (Index("uq_conversations_owner_uid", "owner", "uid", unique=True),)

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(Chars(100), index=True)
    title: Mapped[str] = mapped_column(Chars(300))
    config_id: Mapped[int | None] = mapped_column(ForeignKey("provider_configs.id", ondelete="SET NULL"))
    system_prompt: Mapped[str] = mapped_column(LongText, default="", server_default=EMPTY_TEXT)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=EMPTY_JSON)
    preset: Mapped[str | None] = mapped_column(Chars(60))  # the preset applied last ("builtin:…", "user:…")
    uid: Mapped[str | None] = mapped_column(Chars(100))  # stable across export and import
    leaf_id: Mapped[int | None] = mapped_column(Integer)  # the branch shown: its last message
    pinned_at: Mapped[datetime | None] = mapped_column(default=None)  # pinned to the list's top since
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    messages: Mapped[list[MessageRow]] = relationship(
        back_populates="conversation", cascade="all, delete-orphan", passive_deletes=True
    )


class MessageRow(Base):
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    parent_id: Mapped[int | None] = mapped_column(Integer, index=True)  # the message this one follows
    role: Mapped[str] = mapped_column(Chars(20))
    content: Mapped[str] = mapped_column(LongText)
    model: Mapped[str | None] = mapped_column(Chars(300))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    ttft_s: Mapped[float | None] = mapped_column(Float)
    tokens_per_s: Mapped[float | None] = mapped_column(Float)
    finish_reason: Mapped[str | None] = mapped_column(Chars(40))
    # A reply's use of the attached files: [{"file", "passages" (None: the whole file), "of"}]
    sources: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    conversation: Mapped[ConversationRow] = relationship(back_populates="messages")


class AttachmentRow(Base):
    """A file's text, given with a user message (the file itself is not kept)."""

    __tablename__ = "attachments"

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(Chars(255))
    kind: Mapped[str] = mapped_column(Chars(20))
    size_bytes: Mapped[int] = mapped_column(Integer)
    pages: Mapped[int | None] = mapped_column(Integer)
    truncated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    text: Mapped[str] = mapped_column(LongText)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DownloadJobRow(Base):
    __tablename__ = "download_jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_key: Mapped[str] = mapped_column(Chars(300), index=True)
    repo_id: Mapped[str] = mapped_column(Chars(300))
    commit: Mapped[str | None] = mapped_column(Chars(100))  # as long as listing.fetch_listing accepts
    endpoint: Mapped[str | None] = mapped_column(Chars(500))
    state: Mapped[str] = mapped_column(Chars(20), index=True)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    bytes_total: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    current_file: Mapped[str | None] = mapped_column(Chars(1024))  # a Hub path: listing.MAX_PATH_CHARS
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(LongText)
    last_error_code: Mapped[str | None] = mapped_column(Chars(60))  # what the pages translate
    last_error_params: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=EMPTY_JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class CustomModelRow(Base):
    __tablename__ = "custom_models"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(Chars(300), unique=True)
    repo_id: Mapped[str] = mapped_column(Chars(300), unique=True)
    revision: Mapped[str] = mapped_column(Chars(100), default="main", server_default=text("'main'"))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=EMPTY_JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SettingRow(Base):
    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(Chars(200), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class LanAccountRow(Base):
    """A LAN user name claimed with a personal password (an scrypt hash, never the password)."""

    __tablename__ = "lan_accounts"

    name: Mapped[str] = mapped_column(Chars(40), primary_key=True)  # core.access.policy.name_key
    display_name: Mapped[str] = mapped_column(Chars(40))
    password_hash: Mapped[str] = mapped_column(Chars(300))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_sign_in_at: Mapped[datetime | None] = mapped_column()


class LanSessionRow(Base):
    """A signed-in browser: the sha256 of its cookie's token, who it is, until when."""

    __tablename__ = "lan_sessions"

    token_hash: Mapped[str] = mapped_column(Chars(64), primary_key=True)
    name: Mapped[str] = mapped_column(Chars(40), index=True)
    display_name: Mapped[str] = mapped_column(Chars(40))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    expires_at: Mapped[datetime] = mapped_column()


class PresetRow(Base):
    """A saved preset of one owner: a system prompt and the sampling settings it fixes (the others
    stay the model's own)."""

    __tablename__ = "presets"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(Chars(100), index=True)
    name: Mapped[str] = mapped_column(Chars(100))
    system_prompt: Mapped[str] = mapped_column(LongText, default="", server_default=EMPTY_TEXT)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=EMPTY_JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
