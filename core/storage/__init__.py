"""Persistence: SQLAlchemy 2.0 schema, engine/session setup, migrations and repository functions."""
