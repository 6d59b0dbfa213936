"""
``python -m bench.dashboard``: what one view of the dashboard costs the
daemon, with an empty request log and with many rows in it (100,000 by
default, spread over the overview's 30 days), on SQLite and PostgreSQL.

A real daemon per engine; the bench logs in through the form like a
browser, then loads each page in a loop, one view at a time, and reports
the wall time per view (client side) and the daemon's CPU per view (user
plus system, every thread, from /proc).  PostgreSQL is a throwaway cluster
(as the tests start it), or the empty database given with --postgres.
"""

from __future__ import annotations

import argparse
import http.client
import random
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.parse

from bench.processes import Daemon, cpu_seconds
from bench.report import publish, table

ADMIN_KEY = "bench-admin-key-0123456789abcdef"
PAGES = ("/dashboard/", "/dashboard/requests", "/dashboard/keys")


def _get(port: int, path: str, cookie: str | None = None, form: dict | None = None) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        headers = {"cookie": f"shellm_dashboard={cookie}"} if cookie else {}
        if form is None:
            connection.request("GET", path, headers=headers)
        else:
            headers["content-type"] = "application/x-www-form-urlencoded"
            connection.request("POST", path, urllib.parse.urlencode(form), headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def login(port: int) -> str:
    _, _, body = _get(port, "/dashboard/login")
    token = re.search(rb'name="csrf" value="([^"]+)"', body).group(1).decode()
    status, headers, _ = _get(port, "/dashboard/login", form={"key": ADMIN_KEY, "csrf": token})
    assert status == 303, status
    return headers["set-cookie"].split(";")[0].split("=", 1)[1]


def fill(engine: str, location: str, rows: int) -> float:
    """
    Insert C{rows} request-log rows over the last 30 days; the seconds it took.
    """
    started = time.monotonic()
    now = time.time()
    chance = random.Random(1)
    keys = [f"key_{i:016x}" for i in range(20)]
    values = [
        (
            now - chance.random() * 30 * 86400,
            "app",
            chance.choice(keys),
            "/v1/chat/completions",
            chance.choice(("claude", "gemini", "codex", "cerebras")),
            "model",
            chance.choice((200,) * 18 + (429, 502)),
            chance.randint(10, 2000),
            chance.randint(10, 2000),
            chance.choice((None, 0.001)),
            chance.randint(100, 20000),
            chance.randint(0, 50),
        )
        for _ in range(rows)
    ]
    # The ledger appends rows as requests finish: in time order.
    values.sort(key=lambda row: row[0])
    sql = (
        "INSERT INTO usage (time, client, key_id, endpoint, provider, model, status, input_tokens, output_tokens,"
        " cost_usd, duration_ms, queued_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    if engine == "sqlite":
        with sqlite3.connect(location) as connection:
            connection.executemany(sql, values)
    else:
        import psycopg

        with psycopg.connect(location) as connection, connection.cursor() as cursor:
            cursor.executemany(sql.replace("?", "%s"), values)
            cursor.execute("ANALYZE usage")
    return time.monotonic() - started


def measure(daemon: Daemon, cookie: str, views: int) -> dict:
    results = {}
    for page in PAGES:
        first = 0.0
        for _ in range(3):  # warm up: caches, the health check, the query plans
            started = time.perf_counter()
            status, _, body = _get(daemon.port, page, cookie)
            first = first or time.perf_counter() - started
            assert status == 200, (status, body[:300])
        walls = []
        cpu_before = cpu_seconds(daemon.pid)
        for _ in range(views):
            started = time.perf_counter()
            status, _, body = _get(daemon.port, page, cookie)
            walls.append(time.perf_counter() - started)
            assert status == 200, body[:500]
        cpu = cpu_seconds(daemon.pid) - cpu_before
        results[page] = {
            "wall_ms_median": 1000 * statistics.median(walls),
            "wall_ms_max": 1000 * max(walls),
            # The first view of a daemon's day sums the closed days once.
            "wall_ms_first": 1000 * first,
            "cpu_ms_per_view": 1000 * cpu / views,
            "bytes": len(body),
        }
    return results


def run_engine(engine: str, location: str, workdir: str, rows: int, views: int, say) -> dict:
    say(f"{engine}: empty log")
    empty = _measured(engine, location, workdir, views)
    say(f"{engine}: inserting {rows:,} rows")
    filled_in = fill(engine, location, rows)
    # A fresh daemon: the one before kept the empty log's closed days.
    say(f"{engine}: {rows:,} rows (inserted in {filled_in:.1f} s)")
    return {"empty": empty, "full": _measured(engine, location, workdir, views)}


def _measured(engine: str, location: str, workdir: str, views: int) -> dict:
    """
    Every page measured on a daemon of its own, started for it.
    """
    daemon = Daemon(
        f"{workdir}/{engine}",
        {
            "SHELLM_DB": location,
            "SHELLM_ADMIN_KEY": ADMIN_KEY,
            "SHELLM_KEY_SECRET": "bench-secret-0123456789abcdef",
            "SHELLM_CLAUDE_BIN": "/nonexistent/claude",
            "SHELLM_GEMINI_BIN": "/nonexistent/gemini",
            "SHELLM_CODEX_BIN": "/nonexistent/codex",
            "SHELLM_LOG_LEVEL": "warn",
        },
    )
    daemon.start()
    try:
        import asyncio

        asyncio.run(daemon.ready())
        cookie = login(daemon.port)
        # The store opens (and migrates) behind /health: wait for it.
        deadline = time.monotonic() + 30
        while _get(daemon.port, "/dashboard/", cookie)[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        return measure(daemon, cookie, views)
    finally:
        daemon.stop()


def render(results: dict, rows: int, views: int) -> str:
    lines = []
    for engine, result in results.items():
        body = []
        for page in PAGES:
            empty, full = result["empty"][page], result["full"][page]
            body.append(
                [
                    page,
                    f"{empty['cpu_ms_per_view']:.1f}",
                    f"{empty['wall_ms_median']:.1f}",
                    f"{full['cpu_ms_per_view']:.1f}",
                    f"{full['wall_ms_median']:.1f}",
                    f"{full['wall_ms_max']:.1f}",
                    f"{full['wall_ms_first']:.1f}",
                ]
            )
        lines.append(f"{engine} ({views} views per page)")
        lines.append(
            table(
                [
                    "page",
                    "CPU ms, empty",
                    "wall ms, empty",
                    f"CPU ms, {rows:,} rows",
                    "wall ms (median)",
                    "wall ms (max)",
                    "wall ms (a fresh daemon's first)",
                ],
                body,
            )
        )
    return "\n\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard", description=__doc__.split("\n\n")[0].strip("`"))
    parser.add_argument("--rows", type=int, default=100_000, metavar="N", help="request-log rows (default 100000)")
    parser.add_argument("--views", type=int, default=20, metavar="N", help="views per page and point")
    parser.add_argument("--postgres", metavar="URL", help="an empty PostgreSQL database (default: a throwaway cluster)")
    parser.add_argument("--skip-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--json", metavar="FILE", help="also write the raw results here")
    args = parser.parse_args(argv)
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"# {time.monotonic() - started:6.1f} s  {text}", file=sys.stderr, flush=True)

    workdir = tempfile.mkdtemp(prefix="shellm-bench-dashboard-")
    cluster = None
    results = {}
    try:
        results["sqlite"] = run_engine("sqlite", f"{workdir}/shellm.db", workdir, args.rows, args.views, say)
        if not args.skip_postgres:
            url = args.postgres
            if url is None:
                from tests.postgres import PostgresCluster, unavailable_reason

                reason = unavailable_reason()
                if reason:
                    print(f"no PostgreSQL to measure: {reason}; or give --postgres URL", file=sys.stderr)
                    return 1
                say("starting a throwaway PostgreSQL cluster")
                cluster = PostgresCluster()
                cluster.start()
                url = cluster.new_database()
            results["postgresql"] = run_engine("postgresql", url, workdir, args.rows, args.views, say)
    finally:
        if cluster is not None:
            cluster.remove()
        shutil.rmtree(workdir, ignore_errors=True)
    publish(render(results, args.rows, args.views), results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
