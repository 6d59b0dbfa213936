"""
The usage ledger: one row per finished request in an embedded SQLite
database, written and read through C{twisted.enterprise.adbapi} so the
reactor never waits on the disk.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Optional

from attrs import frozen
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
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
    provider: Optional[str]
    model: Optional[str]
    status: int
    input_tokens: Optional[int]
    output_tokens: Optional[int]
    cost_usd: Optional[float]
    duration_ms: Optional[int]
    queued_ms: Optional[int]
    request_id: Optional[str]


def _connect_private(path: str):
    """
    Create the database file (and its folder) readable by the service user
    only, before SQLite opens it.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))


class Ledger:
    log = Logger()

    def __init__(self, path: str):
        self.path = os.path.expanduser(path)
        self._pool: Optional[adbapi.ConnectionPool] = None

    def open(self) -> Deferred:
        """
        Create the file and the schema (in a pool thread).
        """
        _connect_private(self.path)
        self._pool = adbapi.ConnectionPool(
            "sqlite3", self.path, check_same_thread=False, timeout=5,
            cp_min=1, cp_max=1,  # SQLite writes one at a time anyway
            cp_openfun=self._configure,
        )
        return self._pool.runInteraction(self._create)

    def _configure(self, connection) -> None:
        connection.execute("PRAGMA journal_mode=WAL")

    def _create(self, cursor) -> None:
        cursor.executescript(_SCHEMA)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def record(self, row: UsageRecord) -> Deferred:
        """
        Add a row.  Never fails: a full disk or a locked database is logged,
        and the request it describes is unaffected.
        """
        if self._pool is None:
            d = Deferred()
            d.callback(None)
            return d
        d = self._pool.runOperation(
            "INSERT INTO usage (time, client, provider, model, status, input_tokens,"
            " output_tokens, cost_usd, duration_ms, queued_ms, request_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row.time, row.client, row.provider, row.model, row.status, row.input_tokens,
             row.output_tokens, row.cost_usd, row.duration_ms, row.queued_ms, row.request_id),
        )
        d.addErrback(self._write_failed)
        return d

    def _write_failed(self, failure) -> None:
        failure.trap(sqlite3.Error, OSError)
        self.log.error("could not record usage: {why}", why=str(failure.value))

    def totals(self, since: float, client: Optional[str]) -> Deferred:
        """
        Requests, tokens, cost and errors by provider and model since
        C{since}, for one client or (L{None}) all.
        """
        where, params = "time >= ?", [since]
        if client is not None:
            where += " AND client = ?"
            params.append(client)
        return self._pool.runQuery(
            "SELECT provider, model, COUNT(*), SUM(input_tokens), SUM(output_tokens),"
            " SUM(cost_usd), SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END)"
            f" FROM usage WHERE {where} GROUP BY provider, model ORDER BY provider, model",
            params,
        ).addCallback(_shape_totals)


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
