"""Alembic migrations of the store's schema, shipped inside the package and run programmatically.

`lbp-redflags migrate` (or `serve` with migrate_on_start) calls ``upgrade`` on a connection already
in a write transaction, so concurrent starters (several workers, several replicas) queue instead of
racing: PostgreSQL takes an advisory lock, SQLite a BEGIN IMMEDIATE.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

HERE = Path(__file__).parent
LOCK_ID = 0x6C6270  # pg_advisory_xact_lock key for migrations ("lbp")


def config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection: Connection) -> list[str]:
    """Upgrade to head inside the caller's transaction; returns the revisions applied, oldest first."""
    from ..store import SchemaError

    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_ID})
    before = current_revision(connection)
    if before is None:
        legacy = set(inspect(connection).get_table_names()) & {"issued_cards", "feedback", "hook_calls"}
        if legacy:
            raise SchemaError(f"the database has tables ({', '.join(sorted(legacy))}) but no migration history: "
                              "it was made by a build from before migrations; move it aside (or point "
                              "database_url at a new database) and run `lbp-redflags migrate`")
    command.upgrade(config(connection), "head")
    script = ScriptDirectory.from_config(config())
    after = current_revision(connection)
    applied = [rev.revision for rev in script.iterate_revisions(after, before)] if after != before else []
    return list(reversed(applied))
