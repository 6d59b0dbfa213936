"""
The request log summed for the dashboard's overview, in SQL: requests and
errors per day and per hour, p50/p95 latency, errors by code, tokens and
cost by provider and by key.  Every query is bounded by time (the
C{usage_by_time} index) and answers a few dozen rows however long the log
is; all of them run in one trip to the store's thread.
"""

from __future__ import annotations

from attrs import frozen
from twisted.internet.defer import Deferred

from shellm.state.schema import POSTGRESQL
from shellm.state.store import Cursor, Store

DAY = 86400
HOUR = 3600
#: The overview's spans.
DAYS = 30
HOURS = 48


@frozen
class Bucket:
    start: float
    requests: int
    errors: int


@frozen
class Share:
    """
    One row of a breakdown (a provider, a key, an error code).
    """

    name: str
    requests: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None


@frozen
class Summary:
    now: float
    daily: tuple[Bucket, ...]
    hourly: tuple[Bucket, ...]
    #: The last 24 hours.
    day_requests: int
    day_errors: int
    p50_ms: int | None
    p95_ms: int | None
    #: The last 30 days.
    errors_by_code: tuple[tuple[str, int], ...]
    by_provider: tuple[Share, ...]
    by_key: tuple[Share, ...]


def _buckets(cursor: Cursor, now: float, width: int, count: int) -> tuple[Bucket, ...]:
    """
    C{count} buckets of C{width} seconds, the last one holding C{now}.
    """
    first = int(now // width) - count + 1
    # FLOOR on PostgreSQL (its CAST rounds); SQLite's CAST truncates, and
    # times are positive.
    slot = "FLOOR(time / ?)" if cursor.engine == POSTGRESQL else "CAST(time / ? AS INTEGER)"
    rows = cursor.execute(
        f"SELECT {slot} AS slot, COUNT(*), SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END)"
        " FROM usage WHERE time >= ? GROUP BY slot",
        (width, float(first * width)),
    ).fetchall()
    found = {int(slot): (int(n), int(errors or 0)) for slot, n, errors in rows}
    # Quiet buckets are drawn too, as zero.
    return tuple(Bucket(float((first + i) * width), *found.get(first + i, (0, 0))) for i in range(count))


def _percentiles(cursor: Cursor, since: float) -> tuple[int | None, int | None]:
    if cursor.engine == POSTGRESQL:
        row = cursor.execute(
            "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY duration_ms),"
            " percentile_disc(0.95) WITHIN GROUP (ORDER BY duration_ms)"
            " FROM usage WHERE time >= ? AND duration_ms IS NOT NULL",
            (since,),
        ).fetchone()
        return (int(row[0]) if row[0] is not None else None, int(row[1]) if row[1] is not None else None)
    # SQLite has no percentile function: the k-th value in order.
    count = int(
        cursor.execute("SELECT COUNT(*) FROM usage WHERE time >= ? AND duration_ms IS NOT NULL", (since,)).fetchone()[0]
    )
    if count == 0:
        return None, None
    found = []
    for share in (0.5, 0.95):
        offset = min(count - 1, max(0, round(share * count + 0.5) - 1))
        row = cursor.execute(
            "SELECT duration_ms FROM usage WHERE time >= ? AND duration_ms IS NOT NULL"
            " ORDER BY duration_ms LIMIT 1 OFFSET ?",
            (since, offset),
        ).fetchone()
        found.append(int(row[0]))
    return found[0], found[1]


def _shares(cursor: Cursor, since: float, group: str) -> tuple[Share, ...]:
    rows = cursor.execute(
        f"SELECT {group} AS name, COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cost_usd)"
        " FROM usage WHERE time >= ? GROUP BY name ORDER BY COUNT(*) DESC LIMIT 20",
        (since,),
    ).fetchall()
    return tuple(
        Share(
            str(name) if name is not None else "(none)",
            int(n),
            int(tokens_in or 0),
            int(tokens_out or 0),
            float(cost) if cost is not None else None,
        )
        for name, n, tokens_in, tokens_out, cost in rows
    )


def _summary(cursor: Cursor, now: float) -> Summary:
    month = now - DAYS * DAY
    day = now - DAY
    daily = _buckets(cursor, now, DAY, DAYS)
    hourly = _buckets(cursor, now, HOUR, HOURS)
    day_requests, day_errors = cursor.execute(
        "SELECT COUNT(*), SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) FROM usage WHERE time >= ?", (day,)
    ).fetchone()
    p50, p95 = _percentiles(cursor, day)
    codes = cursor.execute(
        "SELECT COALESCE(error_code, CAST(status AS TEXT)) AS code, COUNT(*) FROM usage"
        " WHERE time >= ? AND status >= 400 GROUP BY code ORDER BY COUNT(*) DESC LIMIT 20",
        (month,),
    ).fetchall()
    return Summary(
        now=now,
        daily=daily,
        hourly=hourly,
        day_requests=int(day_requests or 0),
        day_errors=int(day_errors or 0),
        p50_ms=p50,
        p95_ms=p95,
        errors_by_code=tuple((str(code), int(n)) for code, n in codes),
        by_provider=_shares(cursor, month, "provider"),
        # A stored key by its id, a SHELLM_CLIENTS client by its name.
        by_key=_shares(cursor, month, "COALESCE(key_id, 'client:' || client)"),
    )


def summarize(store: Store, now: float) -> Deferred[Summary]:
    """
    The overview's numbers as of C{now}.
    """
    return store.interact(lambda cursor: _summary(cursor, now))


def key_usage(store: Store, now: float) -> Deferred[dict[str, Share]]:
    """
    Each key's requests, tokens and cost over the last 30 days, by key id.
    """

    def read(cursor: Cursor) -> dict[str, Share]:
        rows = cursor.execute(
            "SELECT key_id, COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cost_usd) FROM usage"
            " WHERE time >= ? AND key_id IS NOT NULL GROUP BY key_id",
            (now - DAYS * DAY,),
        ).fetchall()
        return {
            str(key): Share(str(key), int(n), int(a or 0), int(b or 0), float(c) if c is not None else None)
            for key, n, a, b, c in rows
        }

    return store.interact(read)
