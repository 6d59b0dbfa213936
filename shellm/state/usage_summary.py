"""
The request log summed for the dashboard's overview, in SQL: requests and
errors per day and per hour, p50/p95 latency, errors by code, tokens and
cost by provider and by key.  Every query is bounded by time (the
C{usage_by_time} index) and answers at most a few thousand grouped rows
however long the log is; the days before today are summed once a day and
kept, so a view reads only the last 48 hours' rows.  One trip to the
store's thread per view.
"""

from __future__ import annotations

from typing import Any

from attrs import Factory, define, frozen
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


@define
class _Folded:
    """
    Rows grouped by day, provider, key and error code, summed.
    """

    daily: dict[int, list[int]] = Factory(dict)
    providers: dict[str, list[Any]] = Factory(dict)
    keys: dict[str, list[Any]] = Factory(dict)
    codes: dict[str, int] = Factory(dict)


def _fold(cursor: Cursor, since: float, until: float | None) -> _Folded:
    """
    One pass over C{[since, until)}, grouped by day, provider, key and error.
    """
    slot = "FLOOR(time / 86400)" if cursor.engine == POSTGRESQL else "CAST(time / 86400 AS INTEGER)"
    clause, params = "time >= ?", [since]
    if until is not None:
        clause += " AND time < ?"
        params.append(until)
    rows = cursor.execute(
        f"SELECT {slot} AS day, provider, COALESCE(key_id, 'client:' || client) AS who,"
        " CASE WHEN status >= 400 THEN COALESCE(error_code, CAST(status AS TEXT)) END AS code,"
        " COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cost_usd)"
        f" FROM usage WHERE {clause} GROUP BY day, provider, who, code",
        params,
    ).fetchall()
    folded = _Folded()
    for day, provider, who, code, n, tokens_in, tokens_out, cost in rows:
        n = int(n)
        counts = folded.daily.setdefault(int(day), [0, 0])
        counts[0] += n
        if code is not None:
            counts[1] += n
            folded.codes[str(code)] = folded.codes.get(str(code), 0) + n
        for table, name in ((folded.providers, provider), (folded.keys, who)):
            entry = table.setdefault(str(name) if name is not None else "(none)", [0, 0, 0, None])
            entry[0] += n
            entry[1] += int(tokens_in or 0)
            entry[2] += int(tokens_out or 0)
            if cost is not None:
                entry[3] = (entry[3] or 0.0) + float(cost)
    return folded


def _totals(cursor: Cursor, now: float, kept: _Folded | None) -> tuple[_Folded, _Folded]:
    """
    The closed days of the last 30 (C{kept}, or summed now) and today's rows.
    """
    today = int(now // DAY)
    past = kept if kept is not None else _fold(cursor, float((today - DAYS + 1) * DAY), float(today * DAY))
    return past, _fold(cursor, float(today * DAY), None)


def _merged(past: _Folded, today: _Folded) -> _Folded:
    both = _Folded(dict(past.daily), {}, {}, dict(past.codes))
    for day, counts in today.daily.items():
        both.daily[day] = [a + b for a, b in zip(both.daily.get(day, [0, 0]), counts)]
    for code, n in today.codes.items():
        both.codes[code] = both.codes.get(code, 0) + n
    for target, a, b in ((both.providers, past.providers, today.providers), (both.keys, past.keys, today.keys)):
        for name in set(a) | set(b):
            x, y = a.get(name, [0, 0, 0, None]), b.get(name, [0, 0, 0, None])
            cost = None if x[3] is None and y[3] is None else (x[3] or 0.0) + (y[3] or 0.0)
            target[name] = [x[0] + y[0], x[1] + y[1], x[2] + y[2], cost]
    return both


def _shares(table: dict[str, list[Any]], limit: int | None = None) -> tuple[Share, ...]:
    ranked = sorted(table.items(), key=lambda item: (-item[1][0], item[0]))[:limit]
    return tuple(Share(name, n, tokens_in, tokens_out, cost) for name, (n, tokens_in, tokens_out, cost) in ranked)


_Read = tuple[_Folded, _Folded, tuple[Bucket, ...], tuple[Any, ...]]


class UsageSummaries:
    """
    The overview's numbers, cheap however long the log is: the days before
    today are summed once a day and kept (they no longer change, but for
    what a retention sweep removes); each view sums only today's rows and
    the last 48 hours'.
    """

    #: How long after midnight (UTC) yesterday is taken as closed: the
    #: ledger writes in batches, a few seconds late.
    SETTLE = 300.0

    def __init__(self, store: Store):
        self.store = store
        self._past: tuple[int, _Folded] | None = None

    def summarize(self, now: float) -> Deferred[Summary]:
        """
        The overview's numbers as of C{now}.
        """
        today = int(now // DAY)
        first = today - DAYS + 1
        kept = self._kept(now)

        def read(cursor: Cursor) -> _Read:
            past, live = _totals(cursor, now, kept)
            day = now - DAY
            counts = cursor.execute(
                "SELECT COUNT(*), SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) FROM usage WHERE time >= ?", (day,)
            ).fetchone()
            return past, live, _buckets(cursor, now, HOUR, HOURS), (*counts, *_percentiles(cursor, day))

        def done(result: _Read) -> Summary:
            past, live, hourly, (day_requests, day_errors, p50, p95) = result
            both = self._settled(now, past, live)
            return Summary(
                now=now,
                daily=tuple(Bucket(float((first + i) * DAY), *both.daily.get(first + i, [0, 0])) for i in range(DAYS)),
                hourly=hourly,
                day_requests=int(day_requests or 0),
                day_errors=int(day_errors or 0),
                p50_ms=p50,
                p95_ms=p95,
                errors_by_code=tuple(sorted(both.codes.items(), key=lambda item: (-item[1], item[0]))[:20]),
                by_provider=_shares(both.providers, 20),
                # A stored key by its id, a SHELLM_CLIENTS client as client:NAME.
                by_key=_shares(both.keys, 20),
            )

        return self.store.interact(read).addCallback(done)

    def key_usage(self, now: float) -> Deferred[dict[str, Share]]:
        """
        Each stored key's requests, tokens and cost over the last 30 days, by
        id (every key, not only the overview's top ones; none of the
        overview's other figures).
        """
        kept = self._kept(now)

        def done(result: tuple[_Folded, _Folded]) -> dict[str, Share]:
            both = self._settled(now, *result)
            return {share.name: share for share in _shares(both.keys) if not share.name.startswith("client:")}

        return self.store.interact(_totals, now, kept).addCallback(done)

    def _kept(self, now: float) -> _Folded | None:
        """
        The closed days' sums kept for C{now}'s day, if any.
        """
        if self._past is not None and self._past[0] == int(now // DAY):
            return self._past[1]
        return None

    def _settled(self, now: float, past: _Folded, live: _Folded) -> _Folded:
        """
        The 30 days' sums; the closed days' are kept once yesterday is
        taken as settled.
        """
        today = int(now // DAY)
        if now - today * DAY >= self.SETTLE:
            self._past = (today, past)
        return _merged(past, live)
