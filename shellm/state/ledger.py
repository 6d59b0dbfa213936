"""
The usage ledger: one row per finished request, in the state store
(L{shellm.state.store}: SQLite on one box, PostgreSQL shared by several
nodes), written in batches from pool threads so the reactor never waits.
"""

from __future__ import annotations

from attrs import frozen
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from shellm.errors import StoreUnavailable
from shellm.state.store import Store

PERIODS = {"24h": 24 * 3600, "7d": 7 * 24 * 3600, "30d": 30 * 24 * 3600}


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
    key_id: str | None = None
    endpoint: str | None = None
    error_code: str | None = None
    fallback: str | None = None
    prompt_text: str | None = None
    answer_text: str | None = None
    template: str | None = None


#: Rows are written together, at most this long after the first of them...
FLUSH_INTERVAL = 0.2
#: ...or as soon as this many are waiting.
FLUSH_ROWS = 500
#: Rows held while the database is slower than the traffic, or unreachable;
#: past this, new rows are dropped (and counted in the log) rather than
#: growing without bound.
MAX_PENDING_ROWS = 50_000

_INSERT = (
    "INSERT INTO usage (time, client, provider, model, status, input_tokens,"
    " output_tokens, cost_usd, duration_ms, queued_ms, request_id, key_id, endpoint, error_code, fallback,"
    " prompt_text, answer_text, template) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class Ledger:
    """
    Rows are buffered in memory and written in batches, one transaction at a
    time: a thread hand-off and a commit per request would cost more than
    the rest of the request put together.  While the store is down, rows
    wait (within L{MAX_PENDING_ROWS}) and are written when it is back.
    """

    log = Logger()

    def __init__(self, store: Store, clock):
        self.store = store
        self._clock = clock
        self._open = False
        self._pending: list[tuple] = []
        self._timer = None
        self._writing: Deferred | None = None
        self._dropped = 0
        store.when_up(self._store_up)

    def open(self) -> Deferred:
        """
        Open the store (connect and migrate); fires when it is usable.
        Rows recorded before then wait for it.
        """
        self._open = True
        return self.store.open()

    def _store_up(self) -> None:
        if self._pending:
            self._write_soon(0)

    def record(self, row: UsageRecord) -> None:
        """
        Queue a row; it reaches the database within L{FLUSH_INTERVAL} (or
        once the database is back).  Never fails: a full disk or a lost
        database is logged, and the request it describes is unaffected.
        """
        if not self._open:
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
                row.key_id,
                row.endpoint,
                row.error_code,
                row.fallback,
                row.prompt_text,
                row.answer_text,
                row.template,
            )
        )
        if len(self._pending) >= FLUSH_ROWS:
            self._write_soon(0)
        else:
            self._write_soon(FLUSH_INTERVAL)

    def _write_soon(self, delay: float) -> None:
        if self._writing is not None or not self.store.up:
            return  # the running write, or the store coming back, starts the next
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
        # Durable: a batch is one commit every FLUSH_INTERVAL at most, so
        # waiting for the disk costs little, and a database crash then loses
        # no row it acknowledged.
        writing = self._writing = self.store.interact(_insert, rows)
        writing.addErrback(self._write_failed, rows)
        writing.addBoth(self._written)
        return writing

    def _written(self, _) -> None:
        self._writing = None
        if self._pending:
            self._write_soon(0 if len(self._pending) >= FLUSH_ROWS else FLUSH_INTERVAL)

    def _write_failed(self, failure, rows: list[tuple]) -> None:
        if failure.check(StoreUnavailable):
            # Kept, oldest first, for when the store is back.
            kept = (rows + self._pending)[:MAX_PENDING_ROWS]
            self._dropped += len(rows) + len(self._pending) - len(kept)
            self._pending = kept
        elif self.store.is_sql_error(failure):
            self.log.error("could not record usage of {count} requests: {why}", count=len(rows), why=str(failure.value))
        else:
            self.log.failure("could not record usage of {count} requests", failure, count=len(rows))

    @property
    def backlog(self) -> int:
        """
        Rows recorded but not yet written.
        """
        return len(self._pending)

    def flush(self) -> Deferred:
        """
        Fires once every row recorded so far is written, has failed, or
        waits for the store to come back.
        """
        return ensureDeferred(self._flush())

    async def _flush(self) -> None:
        while self._open and (self._writing is not None or (self._pending and self.store.up)):
            if self._writing is not None:
                await self._writing
            else:
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                await self._write()

    def close(self) -> Deferred:
        """
        Write what is pending; the store itself is closed by its owner.
        """
        return ensureDeferred(self._close())

    async def _close(self) -> None:
        await self._flush()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending:
            self.log.error("usage of {count} requests not recorded: the state store is down", count=len(self._pending))
        self._open = False

    def spent(self, key_id: str, since: float) -> Deferred:
        """
        Tokens (in and out) key C{key_id} used since C{since}, every request
        recorded before the call included; from the shared store, so exact
        across the nodes that share it.
        """
        return ensureDeferred(self._spent(key_id, since))

    async def _spent(self, key_id: str, since: float) -> int:
        await self._flush()
        rows = await self.store.query(
            "SELECT SUM(COALESCE(input_tokens, 0) + COALESCE(output_tokens, 0)) FROM usage"
            " WHERE key_id = ? AND time >= ?",
            (key_id, since),
        )
        return int(rows[0][0] or 0)

    def totals(self, since: float, client: str | None, key_id: str | None = None) -> Deferred:
        """
        Requests, tokens, cost and errors by provider and model since
        C{since}, for one client or (L{None}) all, including every request
        recorded before the call.

        @raise StoreUnavailable: (as a failure) the store is down.
        """
        return ensureDeferred(self._totals(since, client, key_id))

    async def _totals(self, since: float, client: str | None, key_id: str | None) -> dict:
        await self._flush()
        where = "time >= ?"
        params: list[object] = [since]
        if key_id is not None:
            where += " AND key_id = ?"
            params.append(key_id)
        elif client is not None:
            where += " AND client = ?"
            params.append(client)
        rows = await self.store.query(
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
            # int(): PostgreSQL sums integers as NUMERIC (Decimal).
            "requests": int(requests),
            "input_tokens": int(tokens_in or 0),
            "output_tokens": int(tokens_out or 0),
            "cost_usd": round(float(cost or 0.0), 6),
            "errors": int(errors or 0),
        }
        by_model.append(entry)
        for key in totals:
            totals[key] += entry[key]
    totals["cost_usd"] = round(totals["cost_usd"], 6)
    return {"totals": totals, "by_model": by_model}
