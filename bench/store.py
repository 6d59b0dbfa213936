"""
``python -m bench.store``: what the state store costs per request, SQLite
against PostgreSQL, in the same run.

Two figures.  Through real daemons (one per engine, same fake upstream,
one client key so both the client's and the global limit are checked):
requests per second, latency and daemon CPU per request.  In process, on
the real classes: the latency of one limit check (in memory on SQLite,
the shared counter on PostgreSQL) and the time per ledger row written in
batches.  PostgreSQL is a throwaway cluster (as the tests start it: root
and the Debian packages), or the database given with --postgres.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from bench import fakecli
from bench.loadgen import build_request, run_load
from bench.processes import Daemon, Upstream
from bench.report import num, publish, table
from bench.run import Plan, answered_by, daemon_settings, seed_body

KEY = "bench-key-0123456789abcdef"


def _with_key(raw: bytes) -> bytes:
    return raw.replace(b"Host:", f"Authorization: Bearer {KEY}\r\nHost:".encode(), 1)


async def through_daemons(url: str, workdir: str, measure_s: float, say) -> dict:
    plan = Plan(measure_s=measure_s)
    upstream = Upstream()
    upstream.start()
    daemons = {}
    results: dict = {}
    try:
        fake, _ = fakecli.build(workdir)
        for engine, db in (("sqlite", os.path.join(workdir, "sqlite", "shellm.db")), ("postgresql", url)):
            folder = os.path.join(workdir, engine)
            settings = daemon_settings(folder, fake, upstream, plan)
            settings.update(
                SHELLM_DB=db,
                SHELLM_CLIENTS=json.dumps({"bench": {"key": KEY, "rpm": 10**9}}),
            )
            daemons[engine] = Daemon(folder, settings)
            daemons[engine].start()
            await daemons[engine].ready()
        for concurrency in (1, 8):
            for engine, daemon in daemons.items():  # interleaved, so drift hits both
                say(f"{engine}, c={concurrency}")
                raw = _with_key(build_request(daemon.port, "POST", "/completions", seed_body("cerebras", "bench:fast")))
                result = await run_load(
                    daemon.port,
                    raw,
                    concurrency,
                    answered_by("cerebras"),
                    cpu_probes={"daemon": daemon.cpu_seconds},
                    warmup_s=plan.warmup_s,
                    measure_s=measure_s,
                )
                results[f"{engine}_c{concurrency}"] = {
                    "rate": result.rate,
                    "p50_ms": result.p(0.50),
                    "p99_ms": result.p(0.99),
                    "daemon_cpu_ms": result.cpu_ms_per_request("daemon"),
                    "errors": result.errors,
                }
    finally:
        for daemon in daemons.values():
            daemon.stop()
        upstream.stop()
    return results


def in_process(url: str, workdir: str, checks: int, rows: int) -> dict:
    """
    The limit check and the ledger write on the real classes, on a reactor
    run just for this.
    """
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred

    from shellm.routing.auth import Client
    from shellm.routing.shared_limits import rate_limiter
    from shellm.state.ledger import Ledger, UsageRecord
    from shellm.state.store import Store

    client = Client("bench", KEY, 10**9)
    results: dict = {}

    async def measure(engine: str, setting: str) -> None:
        store = Store.from_setting(setting, reactor)
        ledger = Ledger(store, reactor)
        await ledger.open()
        limiter = rate_limiter(reactor, store, 10**9)
        took = []
        for _ in range(checks):
            started = time.perf_counter()
            await limiter.admit(client)
            took.append((time.perf_counter() - started) * 1e6)
        took.sort()
        row = UsageRecord(time.time(), "bench", "cerebras", "gpt-oss-120b", 200, 10, 20, 0.0001, 12, 0, "r")
        started = time.perf_counter()
        for _ in range(rows):
            ledger.record(row)
        await ledger.flush()
        per_row = (time.perf_counter() - started) * 1e6 / rows
        await ledger.close()
        await store.close()
        results[engine] = {
            "limiter": type(limiter).__name__,
            "check_mean_us": statistics.fmean(took),
            "check_p50_us": took[len(took) // 2],
            "check_p99_us": took[int(len(took) * 0.99)],
            "ledger_us_per_row": per_row,
        }

    async def both() -> None:
        await measure("sqlite", os.path.join(workdir, "micro.db"))
        await measure("postgresql", url)

    outcome: list = []

    def go():
        d = ensureDeferred(both())
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    if outcome and not isinstance(outcome[0], type(None)):
        outcome[0].raiseException()
    return results


def render(daemons: dict, micro: dict) -> str:
    lines = ["Through a daemon (non-streaming /completions, fake upstream, one client key):", ""]
    rows = []
    for concurrency in (1, 8):
        for engine in ("sqlite", "postgresql"):
            r = daemons[f"{engine}_c{concurrency}"]
            rows.append(
                [
                    f"{engine} c={concurrency}",
                    num(r["rate"], 0),
                    num(r["p50_ms"]),
                    num(r["p99_ms"]),
                    num(r["daemon_cpu_ms"]),
                    str(r["errors"]),
                ]
            )
    lines.append(table(["", "req/s", "p50 ms", "p99 ms", "daemon CPU ms/req", "errors"], rows))
    for concurrency in (1, 8):
        lite, pg = daemons[f"sqlite_c{concurrency}"], daemons[f"postgresql_c{concurrency}"]
        lines.append(
            f"c={concurrency}: PostgreSQL adds {num(pg['p50_ms'] - lite['p50_ms'])} ms at p50 and "
            f"{num(pg['daemon_cpu_ms'] - lite['daemon_cpu_ms'])} ms of daemon CPU per request"
        )
    lines += ["", "In process (the real limiter and ledger):", ""]
    rows = [
        [
            engine,
            r["limiter"],
            num(r["check_mean_us"], 0),
            num(r["check_p50_us"], 0),
            num(r["check_p99_us"], 0),
            num(r["ledger_us_per_row"], 1),
        ]
        for engine, r in micro.items()
    ]
    lines.append(table(["", "limiter", "check mean us", "p50 us", "p99 us", "ledger us/row (batched)"], rows))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.store", description=__doc__.split("\n\n")[0].strip("`"))
    parser.add_argument("--postgres", metavar="URL", help="an empty PostgreSQL database (default: a throwaway cluster)")
    parser.add_argument("--measure", type=float, default=3.0, metavar="SECONDS", help="window per load point")
    parser.add_argument("--checks", type=int, default=2000, metavar="N", help="limit checks timed in process")
    parser.add_argument("--rows", type=int, default=20000, metavar="N", help="ledger rows timed in process")
    parser.add_argument("--json", metavar="FILE", help="also write the raw results here")
    args = parser.parse_args(argv)
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"# {time.monotonic() - started:6.1f} s  {text}", file=sys.stderr, flush=True)

    workdir = tempfile.mkdtemp(prefix="shellm-bench-store-")
    cluster = None
    try:
        if args.postgres:
            daemon_url = micro_url = args.postgres
        else:
            from tests.postgres import PostgresCluster, unavailable_reason

            reason = unavailable_reason()
            if reason:
                print(f"no PostgreSQL to measure: {reason}; or give --postgres URL", file=sys.stderr)
                return 1
            say("starting a throwaway PostgreSQL cluster")
            cluster = PostgresCluster()
            cluster.start()
            daemon_url, micro_url = cluster.new_database(), cluster.new_database()
        daemons = asyncio.run(through_daemons(daemon_url, workdir, args.measure, say))
        say("in process: limit checks and ledger rows")
        micro = in_process(micro_url, workdir, args.checks, args.rows)
    finally:
        if cluster is not None:
            cluster.remove()
        shutil.rmtree(workdir, ignore_errors=True)
    publish(render(daemons, micro), {"daemons": daemons, "in_process": micro}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
