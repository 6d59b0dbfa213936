"""
The state store: the one database every durable feature goes through.

C{SHELLM_DB} names it: a file path (SQLite, one box) or a C{postgresql://}
URL (PostgreSQL 13 or newer, shared by several nodes).  Queries run in
C{twisted.enterprise.adbapi} pool threads, so the reactor never waits on
the database.  Features write SQL with C{?} placeholders, the same on both
engines; this module owns what differs between them (connecting, the
placeholders, sizes, backups), with L{shellm.state.schema} for the
versioned migrations.  Engine-specific SQL elsewhere: none (the shared
limiter's upsert, L{shellm.routing.shared_limits}, is valid on both).

While PostgreSQL is unreachable the store is I{down}: calls fail at once
with L{StoreUnavailable}, a probe retries with backoff, and listeners
(L{Store.when_up}) hear when it is back.  A SQLite file does not go away.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from attrs import frozen
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from shellm.errors import StoreUnavailable
from shellm.state.schema import (
    POSTGRESQL,
    SQLITE,
    SchemaTooNew,
    latest_version,
    migrate,
    schema_version,
    too_new_message,
)

#: Delays between attempts to reach a database that is down: first, then
#: doubled up to the last.
RETRY_FIRST = 0.5
RETRY_MAX = 10.0
#: Seconds PostgreSQL gets to accept a connection.
CONNECT_TIMEOUT = 3

_T = TypeVar("_T")

#: A row as the DB-API returns it: values of whatever types the engine gives.
Row = tuple[Any, ...]


@frozen
class StoreTarget:
    """
    Where the store lives: C{engine} and a path or URL.
    """

    engine: str
    location: str

    @classmethod
    def parse(cls, value: str) -> StoreTarget:
        """
        @raise ValueError: with a message for the user.
        """
        value = value.strip()
        if not value:
            raise ValueError("empty; give a file path or a postgresql:// URL")
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme in ("postgresql", "postgres"):
            if not urlsplit(value).path.strip("/"):
                raise ValueError("the PostgreSQL URL names no database (postgresql://USER@HOST:PORT/DATABASE)")
            return cls(POSTGRESQL, value)
        if scheme:
            raise ValueError(f"{scheme}:// is not supported; give a file path (SQLite) or a postgresql:// URL")
        return cls(SQLITE, os.path.abspath(os.path.expanduser(value)))

    @property
    def display(self) -> str:
        """
        The location without its password, fit for logs and messages.
        """
        if self.engine != POSTGRESQL:
            return self.location
        parts = urlsplit(self.location)
        if parts.password is None:
            return self.location
        netloc = parts.netloc.rsplit("@", 1)
        userinfo = (parts.username or "") + ":***"
        return urlunsplit(parts._replace(netloc=f"{userinfo}@{netloc[-1]}"))


class Cursor:
    """
    A DB-API cursor that takes C{?} placeholders on both engines.
    """

    def __init__(self, cursor: Any, engine: str):
        # sqlite3's or psycopg's cursor: the DB-API itself is untyped.
        self._cursor = cursor
        self.engine = engine

    def _sql(self, sql: str) -> str:
        if self.engine == POSTGRESQL:
            return sql.replace("%", "%%").replace("?", "%s")
        return sql

    def execute(self, sql: str, params: Iterable[object] = ()) -> Cursor:
        self._cursor.execute(self._sql(sql), tuple(params))
        return self

    def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        self._cursor.executemany(self._sql(sql), rows)

    def fetchone(self) -> Any:
        # A row, or None when there is none; Any because every caller knows
        # its query returns one and indexes it at once.
        return self._cursor.fetchone()

    def fetchall(self) -> list[Row]:
        return self._cursor.fetchall()

    @property
    def rowcount(self) -> int:
        """
        Rows the last C{UPDATE} or C{DELETE} changed.
        """
        return int(self._cursor.rowcount)


def _reachable(cursor: Cursor) -> list[int]:
    """
    Open without migrating: the database answers (and nothing was applied).
    """
    schema_version(cursor)
    return []


def connect_now(target: StoreTarget) -> Any:
    """
    A plain blocking connection, for the command line and start-up checks
    (never on a running reactor).
    """
    if target.engine == POSTGRESQL:
        import psycopg

        return psycopg.connect(target.location, connect_timeout=CONNECT_TIMEOUT)
    return sqlite3.connect(f"file:{target.location}?mode=ro", uri=True, timeout=5)


def check_not_newer(value: str) -> None:
    """
    Refuse, before start-up, a database a newer SheLLM has migrated.  A
    database that cannot be reached (yet) passes: the daemon retries.

    @raise SchemaTooNew: with the message for the user.
    """
    target = StoreTarget.parse(value)
    if target.engine == SQLITE and not os.path.exists(target.location):
        return
    try:
        connection = connect_now(target)
    except Exception:
        return
    try:
        found = schema_version(Cursor(connection.cursor(), target.engine))
    except Exception:
        return
    finally:
        connection.close()
    known = latest_version(target.engine)
    if found > known:
        raise SchemaTooNew(too_new_message(target.display, found, known))


def _create_private(path: str) -> None:
    """
    Create the database file (and its folder) readable by the service user
    only, before SQLite opens it.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))


def _configure_sqlite(connection: sqlite3.Connection) -> None:
    connection.execute("PRAGMA journal_mode=WAL")
    # With WAL this cannot corrupt the file; a power cut may lose the last
    # batch, which is accounting, not a request.
    connection.execute("PRAGMA synchronous=NORMAL")


class Store:
    """
    The pool, the schema and whether the database answers.
    """

    log = Logger()

    def __init__(self, target: StoreTarget, clock: IReactorTime):
        self.target = target
        self._clock = clock
        self._pool: adbapi.ConnectionPool | None = None
        self._opening: Deferred[list[int]] | None = None
        self._opened: list[Deferred[None]] = []
        self._ready = False
        self._down_since: float | None = None
        self._probe: IDelayedCall | None = None
        self._delay = RETRY_FIRST
        self._listeners: list[Callable[[], None]] = []
        self._closed = False
        self._migrating = True
        self._retrying = True
        self.refused: str | None = None  # why the schema was refused, if it was

    @classmethod
    def from_setting(cls, value: str, clock: IReactorTime) -> Store:
        return cls(StoreTarget.parse(value), clock)

    @property
    def engine(self) -> str:
        return self.target.engine

    @property
    def shared(self) -> bool:
        """
        Whether several nodes may share this store.
        """
        return self.engine == POSTGRESQL

    @property
    def up(self) -> bool:
        return self._ready and self._down_since is None

    def to_json(self) -> dict[str, object]:
        return {"engine": self.engine, "up": self.up}

    def when_up(self, listener: Callable[[], None]) -> None:
        """
        Call C{listener} each time the store becomes usable: once opened,
        and after every outage.
        """
        self._listeners.append(listener)

    # -- opening

    def _make_pool(self) -> adbapi.ConnectionPool:
        if self.engine == POSTGRESQL:
            return adbapi.ConnectionPool(
                "psycopg",
                self.target.location,
                connect_timeout=CONNECT_TIMEOUT,
                application_name="shellm",
                cp_min=1,
                cp_max=4,
                cp_reconnect=True,
                cp_noisy=False,
            )
        _create_private(self.target.location)
        return adbapi.ConnectionPool(
            "sqlite3",
            self.target.location,
            check_same_thread=False,
            timeout=5,
            cp_min=1,
            cp_max=1,  # SQLite writes one at a time anyway
            cp_openfun=_configure_sqlite,
        )

    def open(self, migrate: bool = True, retry: bool = True) -> Deferred[None]:
        """
        Connect and (unless told not to) migrate; fires once done.  If the
        database cannot be reached, keeps trying with backoff (and the store
        stays down) or, without C{retry}, fails.

        @raise SchemaTooNew: (as a failure) the database is ahead of this SheLLM.
        """
        waiting: Deferred[None] = Deferred()
        if self._ready:
            waiting.callback(None)
            return waiting
        self._opened.append(waiting)
        if self._pool is None:
            self._migrating, self._retrying = migrate, retry
            self._pool = self._make_pool()
            self._try_open()
        return waiting

    def _try_open(self) -> None:
        self._probe = None
        if self._closed:
            return
        if self._migrating:
            self._opening = self._run(migrate, self.target.display, self._clock.seconds())
        else:
            self._opening = self._run(_reachable)
        self._opening.addCallbacks(self._migrated, self._open_failed)

    def _migrated(self, applied: list[int]) -> None:
        self._opening = None
        if applied:
            self.log.info(
                "store schema migrated to version {version} ({engine})", version=applied[-1], engine=self.engine
            )
        self._ready = True
        self._mark_up()
        opened, self._opened = self._opened, []
        for waiting in opened:
            waiting.callback(None)

    def _open_failed(self, failure: Failure) -> None:
        self._opening = None
        if failure.check(SchemaTooNew) or not self._retrying:
            if failure.check(SchemaTooNew):
                self.refused = failure.getErrorMessage()
                self.log.critical("state store refused: {why}", why=self.refused)
            opened, self._opened = self._opened, []
            for waiting in opened:
                waiting.errback(failure)
            return
        if not self.is_transient(failure):
            self.log.failure("the state store could not be opened ({where})", failure, where=self.target.display)
        self._mark_down(failure)
        self._probe = self._clock.callLater(self._next_delay(), self._try_open)

    # -- running

    def is_transient(self, failure: Failure) -> bool:
        """
        Whether C{failure} says the database cannot be reached (so a retry
        may succeed), rather than that the SQL was wrong.
        """
        if failure.check(adbapi.ConnectionLost, StoreUnavailable):
            return True
        if self.engine == POSTGRESQL:
            import psycopg

            return failure.check(psycopg.OperationalError, psycopg.InterfaceError) is not None
        return False

    def is_sql_error(self, failure: Failure) -> bool:
        """
        Whether C{failure} is the database refusing a statement (or a file
        it cannot write), as opposed to a bug.
        """
        if failure.check(sqlite3.Error, OSError):
            return True
        if self.engine == POSTGRESQL:
            import psycopg

            return failure.check(psycopg.Error) is not None
        return False

    def _run(self, interaction: Callable[..., _T], *args: object, durable: bool = True) -> Deferred[_T]:
        engine = self.engine

        def run(cursor: Any) -> _T:
            cursor = Cursor(cursor, engine)
            if not durable and engine == POSTGRESQL:
                # Commit without waiting for the WAL flush: a server crash may
                # forget the last fraction of a second, never corrupts.
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
            return interaction(cursor, *args)

        return self._live_pool().runInteraction(run)

    def _live_pool(self) -> adbapi.ConnectionPool:
        if self._pool is None:
            raise StoreUnavailable(f"the state store ({self.engine}) is closed")
        return self._pool

    def interact(self, interaction: Callable[..., _T], *args: object, durable: bool = True) -> Deferred[_T]:
        """
        Run C{interaction(cursor, *args)} in one transaction in a pool
        thread; it commits if the function returns.  C{durable=False} is for
        what may be forgotten in a database crash (the rate counters): on
        PostgreSQL the commit does not wait for the WAL to reach the disk.

        @raise StoreUnavailable: (as a failure) the store is down or was
            lost during the call.
        """
        if self._closed or not self.up:
            return _unavailable(self.target)
        running = self._run(interaction, *args, durable=durable)
        running.addErrback(self._failed)
        return running

    def query(self, sql: str, params: Iterable[object] = ()) -> Deferred[list[Row]]:
        """
        All the rows of one query.
        """
        return self.interact(lambda cursor: cursor.execute(sql, params).fetchall())

    def _failed(self, failure: Failure) -> Failure:
        if self.is_transient(failure):
            self._mark_down(failure)
            raise StoreUnavailable(f"the state store ({self.engine}) cannot be reached; retrying")
        return failure

    def _mark_down(self, failure: Failure) -> None:
        if self._down_since is not None:
            return
        self._down_since = self._clock.seconds()
        self.log.warn(
            "state store down ({engine}): {why}; retrying", engine=self.engine, why=failure.getErrorMessage()[:200]
        )
        if self._ready and self._probe is None:
            self._probe = self._clock.callLater(self._next_delay(), self._check)

    def _mark_up(self) -> None:
        self._delay = RETRY_FIRST
        if self._down_since is not None:
            self.log.info(
                "state store back ({engine}) after {seconds:.1f} s",
                engine=self.engine,
                seconds=self._clock.seconds() - self._down_since,
            )
            self._down_since = None
        for listener in list(self._listeners):
            listener()

    def _next_delay(self) -> float:
        delay, self._delay = self._delay, min(self._delay * 2, RETRY_MAX)
        return delay

    def _check(self) -> None:
        self._probe = None
        if self._closed:
            return
        probing = self._run(lambda cursor: cursor.execute("SELECT 1").fetchall())

        def failed(failure: Failure) -> None:
            if self._closed:
                return
            self._probe = self._clock.callLater(self._next_delay(), self._check)

        probing.addCallbacks(lambda _: self._mark_up(), failed)

    def close(self) -> Deferred[None]:
        """
        Stop retrying and close the pool.  Interactions still running finish.
        """
        self._closed = True
        if self._probe is not None and self._probe.active():
            self._probe.cancel()
        self._probe = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.close()
        self._ready = False
        return succeed(None)

    # -- administration

    def migrate(self) -> Deferred[list[int]]:
        """
        Apply the missing migrations now; fires with the versions applied.
        """
        return self.interact(migrate, self.target.display, self._clock.seconds())

    def describe(self) -> Deferred[dict[str, Any]]:
        """
        Engine, schema version, rows per table and size in bytes.
        """
        return self.interact(_describe, self.target)

    def backup(self, path: str) -> Deferred[int]:
        """
        Copy a SQLite store to C{path} with SQLite's online backup (writers
        may go on meanwhile).  PostgreSQL is backed up with C{pg_dump}.
        """
        if self.engine != SQLITE:
            raise ValueError("a PostgreSQL store is backed up with pg_dump, e.g. pg_dump -Fc -f shellm.dump URL")
        if not self.up:
            return _unavailable(self.target)
        return self._live_pool().runWithConnection(_backup_sqlite, os.path.abspath(os.path.expanduser(path)))


def _unavailable(target: StoreTarget) -> Deferred[Any]:
    failed: Deferred[Any] = Deferred()
    failed.errback(StoreUnavailable(f"the state store ({target.engine}) cannot be reached; retrying"))
    return failed


def _describe(cursor: Cursor, target: StoreTarget) -> dict[str, Any]:
    if cursor.engine == POSTGRESQL:
        names = cursor.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name"
        ).fetchall()
        size = cursor.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        server = cursor.execute("SHOW server_version").fetchone()[0]
    else:
        names = cursor.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()
        size = sum(
            os.path.getsize(target.location + suffix)
            for suffix in ("", "-wal")
            if os.path.exists(target.location + suffix)
        )
        server = sqlite3.sqlite_version
    rows: dict[str, int] = {}
    for (name,) in names:
        # Names come from the catalog, not from a user.
        rows[name] = cursor.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0]
    return {
        "engine": cursor.engine,
        "server_version": server,
        "location": target.display,
        "schema_version": schema_version(cursor),
        "latest_version": latest_version(cursor.engine),
        "tables": rows,
        "size_bytes": size,
    }


def _backup_sqlite(connection: Any, path: str) -> int:
    # adbapi's connection wrapper, which passes on to sqlite3.Connection.
    _create_private(path)
    destination = sqlite3.connect(path)
    try:
        connection.backup(destination)
    finally:
        destination.close()
    return os.path.getsize(path)
