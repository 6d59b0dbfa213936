"""
The request log: the ledger's rows read back for administrators (newest
first, in bounded pages), summed into buckets for a dashboard, and pruned
after the retention period.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred, ensureDeferred

from shellm.state.store import Cursor, Store

MAX_PAGE = 200
_FIELDS = (
    "id, time, request_id, client, key_id, endpoint, provider, model, status, error_code,"
    " queued_ms, duration_ms, input_tokens, output_tokens, cost_usd, fallback, template, prompt_text, answer_text"
)
_NAMES = [name.strip() for name in _FIELDS.split(",")]


@frozen
class LogFilter:
    since: float | None = None
    until: float | None = None
    key: str | None = None
    provider: str | None = None
    status: int | None = None
    error: str | None = None

    def where(self) -> tuple[str, list[Any]]:
        clauses, params = ["1 = 1"], []
        for value, clause in (
            (self.since, "time >= ?"),
            (self.until, "time < ?"),
            (self.key, "key_id = ?"),
            (self.provider, "provider = ?"),
            (self.status, "status = ?"),
            (self.error, "error_code = ?"),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        return " AND ".join(clauses), params


def page(store: Store, where: LogFilter, limit: int, before: int | None) -> Deferred[dict[str, Any]]:
    """
    Up to C{limit} rows, newest first, older than the row C{before}; with
    the cursor of the next page (L{None} at the end).
    """
    return ensureDeferred(_page(store, where, limit, before))


async def _page(store: Store, where: LogFilter, limit: int, before: int | None) -> dict[str, Any]:
    clause, params = where.where()
    if before is not None:
        clause += " AND id < ?"
        params.append(before)
    rows = await store.query(
        f"SELECT {_FIELDS} FROM usage WHERE {clause} ORDER BY id DESC LIMIT ?", [*params, limit + 1]
    )
    shown = [dict(zip(_NAMES, row)) for row in rows[:limit]]
    for row in shown:
        row["id"] = int(row["id"])
    return {"requests": shown, "next_cursor": str(shown[-1]["id"]) if len(rows) > limit else None}


def stats(store: Store, where: LogFilter, bucket: int, by: str | None) -> Deferred[dict[str, Any]]:
    """
    Requests, errors by code, p50/p95 latency, tokens and cost per time
    bucket (C{bucket} seconds), and per C{by} (provider, key or model).
    """
    return ensureDeferred(_stats(store, where, bucket, by))


_GROUPS = {"provider": "provider", "key": "key_id", "model": "model"}


async def _stats(store: Store, where: LogFilter, bucket: int, by: str | None) -> dict[str, Any]:
    clause, params = where.where()
    group = _GROUPS[by] if by else "NULL"
    rows = await store.query(
        f"SELECT time, {group}, status, error_code, duration_ms, input_tokens, output_tokens, cost_usd"
        f" FROM usage WHERE {clause} ORDER BY time",
        params,
    )
    buckets: dict[tuple[float, Any], dict[str, Any]] = {}
    latencies: dict[tuple[float, Any], list[int]] = {}
    for when, group_value, status, error_code, duration, tokens_in, tokens_out, cost in rows:
        start = float(when) - float(when) % bucket
        slot = (start, group_value)
        entry = buckets.setdefault(
            slot,
            {
                "start": start,
                **({by: group_value} if by else {}),
                "requests": 0,
                "errors": {},
                "input_tokens": 0,
                "output_tokens": 0,
                "cost_usd": 0.0,
            },
        )
        entry["requests"] += 1
        if int(status) >= 400:
            code = error_code or str(status)
            entry["errors"][code] = entry["errors"].get(code, 0) + 1
        entry["input_tokens"] += int(tokens_in or 0)
        entry["output_tokens"] += int(tokens_out or 0)
        entry["cost_usd"] = round(entry["cost_usd"] + float(cost or 0.0), 6)
        if duration is not None:
            latencies.setdefault(slot, []).append(int(duration))
    for slot, entry in buckets.items():
        values = sorted(latencies.get(slot, []))
        entry["p50_ms"] = _percentile(values, 0.50)
        entry["p95_ms"] = _percentile(values, 0.95)
    return {"bucket_seconds": bucket, "by": by, "buckets": list(buckets.values())}


def _percentile(values: list[int], share: float) -> int | None:
    if not values:
        return None
    return values[min(len(values) - 1, max(0, round(share * len(values) + 0.5) - 1))]


def prune(store: Store, before: float) -> Deferred[int]:
    """
    Delete the rows older than C{before}; fires with how many went.
    """

    def delete(cursor: Cursor) -> int:
        gone = cursor.execute("SELECT COUNT(*) FROM usage WHERE time < ?", (before,)).fetchone()[0]
        cursor.execute("DELETE FROM usage WHERE time < ?", (before,))
        return int(gone)

    return store.interact(delete)
