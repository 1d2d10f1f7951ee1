"""Bring any database to SCHEMA_VERSION without losing rows.

Changes so far are additive: missing tables, columns and indexes are created. A future change that
is not additive (a rename, a type change) gets an explicit step keyed by the version it produces.
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, inspect, select

from core.errors import SchemaTooNewError
from core.storage.schema import SCHEMA_VERSION, Base, SchemaInfo


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
                ddl += f" DEFAULT {column.server_default.arg.text}"  # type: ignore[attr-defined]
            conn.exec_driver_sql(ddl)
        for index in table.indexes:
            index.create(conn, checkfirst=True)


def migrate(engine: Engine) -> int:
    """Create or upgrade the schema; return the version found before (0 for a new or unversioned one)."""
    with engine.begin() as conn:
        found = current_version(conn)
        if found != SCHEMA_VERSION and conn.dialect.name == "sqlite":
            # One migrator at a time (the app and the CLI may start together on a new file): take the
            # write lock, then look again, since another process may have just finished.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
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
        conn.execute(SchemaInfo.__table__.delete())
        conn.execute(SchemaInfo.__table__.insert().values(id=1, version=SCHEMA_VERSION))
        return found
