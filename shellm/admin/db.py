"""
C{shellm db}: the state store from the command line -- C{status} (engine,
schema version, rows, size), C{migrate} (apply the schema now) and
C{backup PATH} (SQLite's online backup; PostgreSQL has C{pg_dump}).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from shellm.admin.common import ERROR, OK, CommandError, Paths, run_on_reactor, say, table
from shellm.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from shellm.state.store import Store

_T = TypeVar("_T")


def _with_store(config: Config, work: Callable[[Store], Awaitable[_T]], create: bool = False) -> _T:
    """
    Run C{work(store)} (a coroutine function) with the store of SHELLM_DB,
    on a reactor started for it; return its result.  Never migrates unless
    C{work} does.
    """
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred
    from twisted.python.failure import Failure

    from shellm.errors import StoreUnavailable
    from shellm.state.store import SQLITE, SchemaTooNew, Store

    store = Store.from_setting(config.db, reactor)
    if store.engine == SQLITE and not create and not os.path.exists(store.target.location):
        raise CommandError(
            f"there is no database at {store.target.location} yet (the daemon creates it when it starts)"
        )

    async def go() -> _T:
        try:
            await store.open(migrate=False, retry=False)
            return await work(store)
        finally:
            await store.close()

    result = run_on_reactor(lambda: ensureDeferred(go()))
    if isinstance(result, Failure):
        if result.check(SchemaTooNew):
            raise CommandError(result.getErrorMessage())
        if result.check(StoreUnavailable) or store.is_transient(result) or store.is_sql_error(result):
            raise CommandError(f"{store.target.display} cannot be used: {result.getErrorMessage()}")
        if isinstance(result.value, CommandError):
            raise result.value
        raise CommandError(f"failed: {result.getErrorMessage()}")
    return result


def cmd_db(args: argparse.Namespace, environ: Mapping[str, str], paths: Paths) -> int:
    try:
        config = load_config({}, environ, args.env_file_path)
    except ConfigError as e:
        raise CommandError(f"the configuration is not valid: {e}")
    return {"status": db_status, "migrate": db_migrate, "backup": db_backup}[args.action](args, config)


def db_status(args: argparse.Namespace, config: Config) -> int:
    async def describe(store: Store) -> dict[str, Any]:
        return await store.describe()

    status = _with_store(config, describe)
    if args.json:
        say(json.dumps(status, indent=2))
        return OK
    found, known = status["schema_version"], status["latest_version"]
    if found < known:
        state = " (run `shellm db migrate`, or start the daemon)"
    elif found > known:
        state = " (from a newer SheLLM: this one refuses it)"
    else:
        state = " (current)"
    say(f"engine:   {status['engine']} {status['server_version']}")
    say(f"database: {status['location']}")
    say(f"schema:   version {found} of {known}{state}")
    say(f"size:     {status['size_bytes']} bytes")
    say()
    say(table([("table", "rows")] + [(name, str(rows)) for name, rows in status["tables"].items()]))
    return OK


def db_migrate(args: argparse.Namespace, config: Config) -> int:
    async def migrate(store: Store) -> list[int]:
        return await store.migrate()

    applied = _with_store(config, migrate, create=True)
    if applied:
        say(f"applied migrations {', '.join(map(str, applied))}; the schema is at version {applied[-1]}")
    else:
        say("the schema is current; nothing to apply")
    return OK


def db_backup(args: argparse.Namespace, config: Config) -> int:
    from shellm.state.store import POSTGRESQL, StoreTarget

    where = StoreTarget.parse(config.db)
    if where.engine == POSTGRESQL:
        raise CommandError(
            "a PostgreSQL store is backed up with PostgreSQL's own tools: "
            f"pg_dump --format=custom --file={args.path} 'postgresql://...' (the URL in SHELLM_DB)"
        )
    target = os.path.abspath(os.path.expanduser(args.path))
    if os.path.exists(target):
        raise CommandError(f"{target} already exists; remove it or give another path")

    async def backup(store: Store) -> int:
        return await store.backup(target)

    size = _with_store(config, backup)
    say(f"backed up to {target} ({size} bytes)")
    return OK if size else ERROR
