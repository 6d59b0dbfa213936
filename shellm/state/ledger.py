"""
The usage ledger: one row per finished request in an embedded SQLite
database, written and read through C{twisted.enterprise.adbapi} so the
reactor never waits on the disk.
"""

from __future__ import annotations

import os
import sqlite3

from attrs import frozen
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

PERIODS = {"24h": 24 * 3600, "7d": 7 * 24 * 3600, "30d": 30 * 24 * 3600}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    client TEXT NOT NULL,
    provider TEXT,
    model TEXT,
    status INTEGER NOT NULL,
    input_tokens INTEGER,
    output_tokens INTEGER,
    cost_usd REAL,
    duration_ms INTEGER,
    queued_ms INTEGER,
    request_id TEXT
);
CREATE INDEX IF NOT EXISTS usage_by_time ON usage (time);
CREATE INDEX IF NOT EXISTS usage_by_client_time ON usage (client, time);
"""


@frozen
class UsageRecord:
    time: float
    client: str
    provider: str | None
    model: str | None
    status: int
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: float | None
    duration_ms: int | None
    queued_ms: int | None
    request_id: str | None


def _connect_private(path: str):
    """
    Create the database file (and its folder) readable by the service user
    only, before SQLite opens it.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))


#: Rows are written together, at most this long after the first of them...
FLUSH_INTERVAL = 0.2
#: ...or as soon as this many are waiting.
FLUSH_ROWS = 500
#: Rows held while the disk is slower than the traffic; past this, new rows
#: are dropped (and counted in the log) rather than growing without bound.
MAX_PENDING_ROWS = 50_000

_INSERT = (
    "INSERT INTO usage (time, client, provider, model, status, input_tokens,"
    " output_tokens, cost_usd, duration_ms, queued_ms, request_id)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class Ledger:
    """
    Rows are buffered in memory and written in batches, one transaction at a
    time: a thread hand-off and a commit per request would cost more than
    the rest of the request put together.
    """

    log = Logger()

    def __init__(self, path: str, clock):
        self.path = os.path.expanduser(path)
        self._clock = clock
        self._pool: adbapi.ConnectionPool | None = None
        self._pending: list[tuple] = []
        self._timer = None
        self._writing: Deferred | None = None
        self._dropped = 0

    def open(self) -> Deferred:
        """
        Create the file and the schema (in a pool thread).
        """
        _connect_private(self.path)
        self._pool = adbapi.ConnectionPool(
            "sqlite3",
            self.path,
            check_same_thread=False,
            timeout=5,
            cp_min=1,
            cp_max=1,  # SQLite writes one at a time anyway
            cp_openfun=self._configure,
        )
        return self._pool.runInteraction(self._create)

    def _configure(self, connection) -> None:
        connection.execute("PRAGMA journal_mode=WAL")
        # With WAL this cannot corrupt the file; a power cut may lose the
        # last batch, which is accounting, not a request.
        connection.execute("PRAGMA synchronous=NORMAL")

    def _create(self, cursor) -> None:
        cursor.executescript(_SCHEMA)

    def record(self, row: UsageRecord) -> None:
        """
        Queue a row; it reaches the file within L{FLUSH_INTERVAL}.  Never
        fails: a full disk or a locked database is logged, and the request
        it describes is unaffected.
        """
        if self._pool is None:
            return
        if len(self._pending) >= MAX_PENDING_ROWS:
            self._dropped += 1
            return
        self._pending.append(
            (
                row.time,
                row.client,
                row.provider,
                row.model,
                row.status,
                row.input_tokens,
                row.output_tokens,
                row.cost_usd,
                row.duration_ms,
                row.queued_ms,
                row.request_id,
            )
        )
        if len(self._pending) >= FLUSH_ROWS:
            self._write_soon(0)
        else:
            self._write_soon(FLUSH_INTERVAL)

    def _write_soon(self, delay: float) -> None:
        if self._writing is not None:
            return  # the running write starts the next one when it ends
        if self._timer is not None:
            if delay:
                return
            self._timer.cancel()
        self._timer = self._clock.callLater(delay, self._write)

    def _write(self) -> Deferred:
        self._timer = None
        rows, self._pending = self._pending, []
        if self._dropped:
            self.log.error("usage ledger behind the traffic: {count} rows dropped", count=self._dropped)
            self._dropped = 0
        writing = self._writing = self._pool.runInteraction(_insert, rows)
        writing.addErrback(self._write_failed, len(rows))
        writing.addBoth(self._written)
        return writing

    def _written(self, _) -> None:
        self._writing = None
        if self._pending:
            self._write_soon(0 if len(self._pending) >= FLUSH_ROWS else FLUSH_INTERVAL)

    def _write_failed(self, failure, count: int) -> None:
        if failure.check(sqlite3.Error, OSError):
            self.log.error("could not record usage of {count} requests: {why}", count=count, why=str(failure.value))
        else:
            self.log.failure("could not record usage of {count} requests", failure, count=count)

    def flush(self) -> Deferred:
        """
        Fires once every row recorded so far is written (or has failed).
        """
        return ensureDeferred(self._flush())

    async def _flush(self) -> None:
        while self._pool is not None and (self._pending or self._writing is not None):
            if self._writing is not None:
                await self._writing
            else:
                if self._timer is not None:
                    self._timer.cancel()
                await self._write()

    def close(self) -> Deferred:
        """
        Write what is pending, then close the database.
        """
        return ensureDeferred(self._close())

    async def _close(self) -> None:
        await self._flush()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def totals(self, since: float, client: str | None) -> Deferred:
        """
        Requests, tokens, cost and errors by provider and model since
        C{since}, for one client or (L{None}) all, including every request
        recorded before the call.
        """
        return ensureDeferred(self._totals(since, client))

    async def _totals(self, since: float, client: str | None) -> dict:
        await self._flush()
        where, params = "time >= ?", [since]
        if client is not None:
            where += " AND client = ?"
            params.append(client)
        rows = await self._pool.runQuery(
            "SELECT provider, model, COUNT(*), SUM(input_tokens), SUM(output_tokens),"
            " SUM(cost_usd), SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END)"
            f" FROM usage WHERE {where} GROUP BY provider, model ORDER BY provider, model",
            params,
        )
        return _shape_totals(rows)


def _insert(cursor, rows) -> None:
    # runInteraction commits once, around the whole batch.
    cursor.executemany(_INSERT, rows)


def _shape_totals(rows) -> dict:
    by_model = []
    totals = {"requests": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0, "errors": 0}
    for provider, model, requests, tokens_in, tokens_out, cost, errors in rows:
        entry = {
            "provider": provider,
            "model": model,
            "requests": requests,
            "input_tokens": tokens_in or 0,
            "output_tokens": tokens_out or 0,
            "cost_usd": round(cost or 0.0, 6),
            "errors": errors,
        }
        by_model.append(entry)
        for key in totals:
            totals[key] += entry[key]
    totals["cost_usd"] = round(totals["cost_usd"], 6)
    return {"totals": totals, "by_model": by_model}
