"""
The versioned schema of the state store: numbered SQL files in
L{shellm.state.migrations}, applied in order, in one transaction, under a
lock (a PostgreSQL advisory lock, or SQLite's exclusive transaction) so
that nodes starting together migrate once; and the refusal of a database
that a newer SheLLM has migrated.

yoyo-migrations and alembic were weighed: both open their own synchronous
connections (alembic through SQLAlchemy) rather than run inside an adbapi
pool thread, and bring more than these thirty lines do.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import TYPE_CHECKING

from attrs import frozen

from shellm import __version__

if TYPE_CHECKING:
    from shellm.state.store import Cursor

SQLITE = "sqlite"
POSTGRESQL = "postgresql"

#: Held while migrating, so nodes starting together migrate one at a time.
_MIGRATION_LOCK = 0x5E11_0001

_SCHEMA_TABLE = """
CREATE TABLE IF NOT EXISTS shellm_schema (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at DOUBLE PRECISION NOT NULL
)
"""


class SchemaTooNew(Exception):
    """
    The database was migrated by a newer SheLLM than this one.
    """


@frozen
class Migration:
    version: int
    name: str
    sql: str


def migrations(engine: str) -> list[Migration]:
    """
    The schema steps for C{engine}, in order: C{NNNN_name.ENGINE.sql} where
    the engines differ, else C{NNNN_name.sql}.
    """
    found: dict[int, Migration] = {}
    for entry in resources.files("shellm.state.migrations").iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+?)(?:\.(sqlite|postgresql))?\.sql", entry.name)
        if match is None:
            continue
        number, name, only = int(match[1]), match[2], match[3]
        if only is not None and only != engine:
            continue
        if number in found and only is None:
            continue  # an engine's own file wins over the shared one
        found[number] = Migration(number, name, entry.read_text(encoding="utf-8"))
    ordered = [found[n] for n in sorted(found)]
    if [m.version for m in ordered] != list(range(1, len(ordered) + 1)):
        raise RuntimeError(f"migrations are not numbered 1..n: {[m.version for m in ordered]}")
    return ordered


def latest_version(engine: str = SQLITE) -> int:
    return len(migrations(engine))


def statements(sql: str) -> list[str]:
    """
    The statements of a migration file (no semicolons inside statements).
    """
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]


def table_exists(cursor: Cursor, name: str) -> bool:
    if cursor.engine == POSTGRESQL:
        return cursor.execute("SELECT to_regclass(?) IS NOT NULL", (name,)).fetchone()[0]
    return (
        cursor.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None
    )


def schema_version(cursor: Cursor) -> int:
    if not table_exists(cursor, "shellm_schema"):
        return 0
    return cursor.execute("SELECT COALESCE(MAX(version), 0) FROM shellm_schema").fetchone()[0]


def too_new_message(where: str, found: int, known: int) -> str:
    return (
        f"the database {where} has schema version {found}, newer than this SheLLM "
        f"{__version__} knows (up to {known}): it was used by a newer SheLLM. Upgrade SheLLM, "
        "or set SHELLM_DB to another database"
    )


def migrate(cursor: Cursor, where: str, now: float) -> list[int]:
    """
    Apply the missing migrations in one transaction, holding the migration
    lock; return the versions applied.  Run in a pool thread.

    @raise SchemaTooNew: the database is ahead of this SheLLM.
    """
    if cursor.engine == POSTGRESQL:
        # Released at commit; DDL is transactional, so a failed step leaves nothing.
        cursor.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
    else:
        cursor.execute("BEGIN EXCLUSIVE")
    cursor.execute(_SCHEMA_TABLE)
    current = schema_version(cursor)
    steps = migrations(cursor.engine)
    if current > len(steps):
        raise SchemaTooNew(too_new_message(where, current, len(steps)))
    applied = []
    for step in steps[current:]:
        for statement in statements(step.sql):
            cursor.execute(statement)
        cursor.execute(
            "INSERT INTO shellm_schema (version, name, applied_at) VALUES (?, ?, ?)", (step.version, step.name, now)
        )
        applied.append(step.version)
    return applied
