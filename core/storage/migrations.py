"""Bring any database to SCHEMA_VERSION without losing rows.

Missing tables, columns and indexes are created; a change that needs data moved gets a step in STEPS,
keyed by the version it produces, run once on a database older than that.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from sqlalchemy import Connection, Engine, inspect, select, text, update

from core.access.policy import name_key, user_name
from core.errors import SchemaTooNewError
from core.storage.lan_accounts import LAN_OWNER_PREFIX
from core.storage.schema import (
    MYSQL,
    SCHEMA_VERSION,
    Base,
    ConversationRow,
    LanAccountRow,
    LanSessionRow,
    PresetRow,
    SchemaInfo,
)


def current_version(conn: Connection) -> int:
    """The database's schema version; 0 for a database written before versions were recorded."""
    if not inspect(conn).has_table(SchemaInfo.__tablename__):
        return 0
    return conn.execute(select(SchemaInfo.version)).scalar_one_or_none() or 0


def _add_missing_columns(conn: Connection) -> None:
    inspector = inspect(conn)
    preparer = conn.dialect.identifier_preparer
    for table in Base.metadata.sorted_tables:
        existing = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in existing:
                continue
            ddl = (
                f"ALTER TABLE {preparer.format_table(table)} ADD COLUMN "
                f"{preparer.format_column(column)} {column.type.compile(dialect=conn.dialect)}"
            )
            if column.server_default is not None:
                default = column.server_default.arg  # type: ignore[attr-defined]
                ddl += f" DEFAULT {default.compile(dialect=conn.dialect)}"
            conn.exec_driver_sql(ddl)
        for index in table.indexes:
            index.create(conn, checkfirst=True)


def _link_messages(conn: Connection) -> None:
    """Version 5 (branches): each message follows the one before it; every conversation gets its uid."""
    conn.execute(text(
        "UPDATE messages SET parent_id = (SELECT MAX(earlier.id) FROM messages AS earlier "
        "WHERE earlier.conversation_id = messages.conversation_id AND earlier.id < messages.id) "
        "WHERE parent_id IS NULL"
    ))  # fmt: skip
    missing = conn.execute(select(ConversationRow.id).where(ConversationRow.uid.is_(None))).scalars()
    for conversation_id in list(missing):
        conn.execute(
            update(ConversationRow).where(ConversationRow.id == conversation_id).values(uid=uuid.uuid4().hex)
        )


def _tidy_lan_names(conn: Connection) -> None:
    """Version 7: a LAN name's key is its NFKC form ("ａｌｉｃｅ" is "alice"): accounts, sessions,
    conversations and presets keyed by an older form move to the new key, unless it is someone's; the
    names shown are tidied alike ("Ａｌｉｃｅ" shows as "Alice")."""
    owners = (ConversationRow.owner, PresetRow.owner)
    accounts = set(conn.execute(select(LanAccountRow.name)).scalars())
    named = {
        owner.removeprefix(LAN_OWNER_PREFIX)
        for column in owners
        for owner in conn.execute(select(column).where(column.startswith(LAN_OWNER_PREFIX))).scalars()
    }
    for old in sorted(accounts | named):
        new = name_key(old)
        if new == old or new in accounts or new in named:
            continue
        conn.execute(update(LanAccountRow).where(LanAccountRow.name == old).values(name=new))
        conn.execute(update(LanSessionRow).where(LanSessionRow.name == old).values(name=new))
        for column in owners:
            conn.execute(
                update(column.class_)
                .where(column == LAN_OWNER_PREFIX + old)
                .values(owner=LAN_OWNER_PREFIX + new)
            )
        accounts.add(new)
        named.add(new)
    # A name left under its old key (the tidy one is someone else's) keeps showing as it was typed, so
    # that the admin's list tells the two apart.
    for key, shown in conn.execute(select(LanAccountRow.name, LanAccountRow.display_name)).all():
        if name_key(key) == key and (tidy := user_name(shown)) != shown:
            conn.execute(update(LanAccountRow).where(LanAccountRow.name == key).values(display_name=tidy))
    sessions = select(LanSessionRow.token_hash, LanSessionRow.name, LanSessionRow.display_name)
    for token, key, shown in conn.execute(sessions).all():
        if name_key(key) == key and (tidy := user_name(shown)) != shown:
            conn.execute(
                update(LanSessionRow).where(LanSessionRow.token_hash == token).values(display_name=tidy)
            )


STEPS: dict[int, Callable[[Connection], None]] = {5: _link_messages, 7: _tidy_lan_names}
# The statement that holds other migrators off until this transaction ends: SQLite's write lock, a
# PostgreSQL advisory lock (any number of this app's own).
MIGRATION_LOCKS = {"sqlite": "BEGIN IMMEDIATE", "postgresql": "SELECT pg_advisory_xact_lock(7411020)"}
# MySQL's and MariaDB's: a named lock, held by the connection until released, taken before the first
# read (a transaction's first read fixes what its later reads see there).
NAMED_LOCK = ("SELECT GET_LOCK('localllm.migration', 60)", "SELECT RELEASE_LOCK('localllm.migration')")


def migrate(engine: Engine) -> int:
    """Create or upgrade the schema; return the version found before (0 for a new or unversioned one)."""
    with engine.begin() as conn:
        if conn.dialect.name not in MYSQL:
            return _migrate(conn)
        take, release = NAMED_LOCK
        conn.exec_driver_sql(take)
        try:
            return _migrate(conn)
        finally:
            conn.exec_driver_sql(release)


def _migrate(conn: Connection) -> int:
    found = current_version(conn)
    if found != SCHEMA_VERSION and conn.dialect.name in MIGRATION_LOCKS:
        # One migrator at a time (the app and the CLI may start together on a new database): take
        # the lock, then look again, since another process may have just finished.
        conn.exec_driver_sql(MIGRATION_LOCKS[conn.dialect.name])
        found = current_version(conn)
    if found > SCHEMA_VERSION:
        raise SchemaTooNewError(
            f"This database has schema version {found}, newer than this app's {SCHEMA_VERSION}. "
            "Update the app, or point LOCALLLM_DB_URL at another database.",
            found=found,
            supported=SCHEMA_VERSION,
        )
    if found == SCHEMA_VERSION:
        return found
    Base.metadata.create_all(conn)
    _add_missing_columns(conn)
    for version, step in sorted(STEPS.items()):
        if found < version:
            step(conn)
    conn.execute(SchemaInfo.__table__.delete())
    conn.execute(SchemaInfo.__table__.insert().values(id=1, version=SCHEMA_VERSION))
    return found
