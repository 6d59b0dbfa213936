"""
The state store on both engines (SQLite and PostgreSQL, through the
C{db_setting} fixture): migrations, the usage ledger on it, and the
request-rate limits shared across nodes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from contextlib import closing

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import Clock
from twisted.logger import formatEvent

from shellm.config import ConfigError, load_config
from shellm.errors import RateLimited, StoreUnavailable
from shellm.routing.auth import ANONYMOUS, Client
from shellm.routing.limits import RateLimiter
from shellm.routing.shared_limits import SharedRateLimiter, rate_limiter
from shellm.state import ledger as ledger_module
from shellm.state import schema
from shellm.state import store as store_module
from shellm.state.ledger import Ledger, UsageRecord
from shellm.state.store import SchemaTooNew, Store, StoreTarget, check_not_newer, latest_version
from tests.daemon import eventually


def _row(client="a", status=200, tokens=(10, 5), cost=0.5, when=1000.0, model="m"):
    return UsageRecord(when, client, "claude", model, status, tokens[0], tokens[1], cost, 100, 0, "r")


@pytest_twisted.async_yield_fixture
async def reader(db_setting):
    """
    A second store on the same database, to look at what the first wrote
    (it does not migrate: the store under test does).
    """
    store = Store.from_setting(db_setting, reactor)
    await store.open(migrate=False, retry=False)
    yield store
    await store.close()


async def _count(reader, table="usage") -> int:
    rows = await reader.query(f"SELECT COUNT(*) FROM {table}")
    return rows[0][0]


async def _eventually_count(reader, expected: int) -> int:
    async def reached():
        return await _count(reader) == expected

    await eventually(reached, timeout=4)
    return await _count(reader)


# -- settings


def test_db_setting_takes_a_path_or_a_postgresql_url():
    """
    SHELLM_DB is a file path (SQLite) or a postgresql:// URL; another scheme
    is refused with a message that does not repeat the password.
    """
    assert StoreTarget.parse("~/x.db") == StoreTarget("sqlite", os.path.expanduser("~/x.db"))
    assert StoreTarget.parse("postgresql://u@h/db").engine == "postgresql"
    assert StoreTarget.parse("postgres://u@h/db").engine == "postgresql"
    assert StoreTarget.parse("postgresql://u:secret@h:5/db").display == "postgresql://u:***@h:5/db"
    with pytest.raises(ConfigError) as raised:
        load_config({}, {"SHELLM_DB": "mysql://u:secret@h/db"}, None)
    assert "SHELLM_DB" in str(raised.value) and "mysql:// is not supported" in str(raised.value)
    assert "secret" not in str(raised.value)
    with pytest.raises(ConfigError, match="names no database"):
        load_config({}, {"SHELLM_DB": "postgresql://u@h"}, None)


# -- migrations


@pytest_twisted.ensureDeferred
async def test_migrations_create_the_schema_once(db_setting, reader):
    """
    Opening an empty database applies every migration; opening it again
    (a restart) applies none and keeps the rows.
    """
    store = Store.from_setting(db_setting, reactor)
    await store.open()
    assert store.up and store.to_json() == {"engine": store.engine, "up": True}
    await store.interact(lambda cursor: cursor.execute("INSERT INTO rate_counts VALUES ('x', 1, 1)"))
    await store.close()
    again = Store.from_setting(db_setting, reactor)
    await again.open()
    status = await again.describe()
    await again.close()
    assert status["schema_version"] == latest_version() == status["latest_version"]
    assert status["tables"]["rate_counts"] == 1
    assert status["tables"]["shellm_schema"] == latest_version()
    assert status["tables"]["usage"] == 0
    assert status["size_bytes"] > 0


@pytest_twisted.ensureDeferred
async def test_nodes_starting_together_migrate_once(db_setting, reader):
    """
    Several stores opening one empty database at the same moment all come
    up, and each migration is recorded exactly once (the migration lock).
    """
    stores = [Store.from_setting(db_setting, reactor) for _ in range(3)]
    try:
        await gatherResults([s.open() for s in stores])
        assert all(s.up for s in stores)
    finally:
        for s in stores:
            await s.close()
    versions = await reader.query("SELECT version FROM shellm_schema ORDER BY version")
    assert [v for (v,) in versions] == list(range(1, latest_version() + 1))


@pytest_twisted.ensureDeferred
async def test_a_database_from_a_newer_shellm_is_refused(db_setting, reader, log_events):
    """
    A schema version this SheLLM does not know stops the store with a
    message saying what to do, both at start-up (check_not_newer) and when
    opening.
    """
    store = Store.from_setting(db_setting, reactor)
    await store.open()
    await store.interact(
        lambda cursor: cursor.execute("INSERT INTO shellm_schema VALUES (?, 'future', 0)", (latest_version() + 5,))
    )
    await store.close()
    with pytest.raises(SchemaTooNew) as raised:
        check_not_newer(db_setting)
    message = str(raised.value)
    assert f"schema version {latest_version() + 5}" in message and "Upgrade SheLLM" in message
    again = Store.from_setting(db_setting, reactor)
    with pytest.raises(SchemaTooNew):
        await again.open()
    assert not again.up
    await again.close()
    assert any("state store refused" in formatEvent(e) for e in log_events)


@pytest_twisted.ensureDeferred
async def test_a_ledger_file_from_before_the_store_is_adopted(tmp_path):
    """
    A SQLite file with the old ledger table (no schema version) keeps its
    rows and is brought to the current schema.
    """
    path = str(tmp_path / "old.db")
    with closing(sqlite3.connect(path)) as old:
        statement = schema.statements(schema.migrations("sqlite")[0].sql)[0]
        old.execute(statement)
        old.execute("INSERT INTO usage (time, client, status) VALUES (1000, 'a', 200)")
        old.commit()
    store = Store.from_setting(path, reactor)
    await store.open()
    status = await store.describe()
    await store.close()
    assert status["tables"]["usage"] == 1 and status["schema_version"] == latest_version()


# -- the ledger on the store


@pytest_twisted.ensureDeferred
async def test_ledger_aggregates_by_provider_and_model(db_setting, reader):
    """
    Totals add up requests, tokens, cost and errors per provider and model,
    for one client or all, within the period, including rows recorded just
    before; a SQLite file is private (0600).
    """
    ledger = Ledger(Store.from_setting(db_setting, reactor), reactor)
    await ledger.open()
    try:
        ledger.record(_row())
        ledger.record(_row(status=502, tokens=(None, None), cost=None))
        ledger.record(_row(client="b", tokens=(1, 1), cost=None))
        ledger.record(_row(when=10.0))  # too old
        mine = await ledger.totals(500.0, "a")
        everyone = await ledger.totals(500.0, None)
    finally:
        await ledger.close()
        await ledger.store.close()
    assert mine["totals"] == {"requests": 2, "input_tokens": 10, "output_tokens": 5, "cost_usd": 0.5, "errors": 1}
    assert everyone["totals"]["requests"] == 3 and everyone["totals"]["input_tokens"] == 11
    assert mine["by_model"] == [
        {
            "provider": "claude",
            "model": "m",
            "requests": 2,
            "input_tokens": 10,
            "output_tokens": 5,
            "cost_usd": 0.5,
            "errors": 1,
        }
    ]
    if ledger.store.engine == "sqlite":
        assert stat.S_IMODE(os.stat(db_setting).st_mode) == 0o600


@pytest_twisted.ensureDeferred
async def test_ledger_writes_in_batches_on_a_timer(db_setting, reader):
    """
    Rows wait in memory until the flush interval passes, then reach the
    database together; closing writes what is still waiting and leaves no
    timer.
    """
    clock = Clock()
    ledger = Ledger(Store.from_setting(db_setting, clock), clock)
    await ledger.open()
    for _ in range(3):
        ledger.record(_row())
    assert await _count(reader) == 0
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(ledger_module.FLUSH_INTERVAL)
    assert await _eventually_count(reader, 3) == 3
    ledger.record(_row())
    await ledger.close()
    await ledger.store.close()
    assert await _count(reader) == 4
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_ledger_writes_at_once_when_a_batch_is_full(db_setting, reader, monkeypatch):
    """
    A full batch does not wait for the interval.
    """
    monkeypatch.setattr(ledger_module, "FLUSH_ROWS", 4)
    clock = Clock()
    ledger = Ledger(Store.from_setting(db_setting, clock), clock)
    await ledger.open()
    try:
        for _ in range(4):
            ledger.record(_row())
        clock.advance(0)
        assert await _eventually_count(reader, 4) == 4
    finally:
        await ledger.close()
        await ledger.store.close()


@pytest_twisted.ensureDeferred
async def test_ledger_bounds_its_backlog_and_says_so(db_setting, reader, monkeypatch, log_events):
    """
    Past the backlog limit new rows are dropped rather than held without
    bound, and the log says how many; what was held is still written.
    """
    monkeypatch.setattr(ledger_module, "MAX_PENDING_ROWS", 5)
    clock = Clock()
    ledger = Ledger(Store.from_setting(db_setting, clock), clock)
    await ledger.open()
    for _ in range(8):
        ledger.record(_row())
    await ledger.close()
    await ledger.store.close()
    assert await _count(reader) == 5
    assert "3 rows dropped" in " ".join(formatEvent(e) for e in log_events)


@pytest_twisted.ensureDeferred
async def test_ledger_write_failure_is_logged_not_raised(db_setting, reader, log_events):
    """
    A statement the database refuses degrades to a logged error; recording
    and flushing still succeed, and later rows are written once it can be.
    """
    clock = Clock()
    store = Store.from_setting(db_setting, clock)
    ledger = Ledger(store, clock)
    await ledger.open()
    await store.interact(lambda cursor: cursor.execute("ALTER TABLE usage RENAME TO moved"))
    ledger.record(_row())
    assert await ledger.flush() is None
    await store.interact(lambda cursor: cursor.execute("ALTER TABLE moved RENAME TO usage"))
    ledger.record(_row())
    await ledger.close()
    await store.close()
    assert "could not record usage of 1 requests" in " ".join(formatEvent(e) for e in log_events)
    assert await _count(reader) == 1


@pytest_twisted.ensureDeferred
async def test_ledger_survives_an_unexpected_write_error(db_setting, reader, monkeypatch, log_events):
    """
    Any other failure of a batch is logged with its traceback, and the
    ledger goes on writing the next batches.
    """
    from twisted.internet.defer import fail

    clock = Clock()
    store = Store.from_setting(db_setting, clock)
    ledger = Ledger(store, clock)
    await ledger.open()
    real = store._pool.runInteraction
    monkeypatch.setattr(store._pool, "runInteraction", lambda *args: fail(RuntimeError("driver bug")))
    ledger.record(_row())
    await ledger.flush()
    monkeypatch.setattr(store._pool, "runInteraction", real)
    ledger.record(_row())
    await ledger.close()
    await store.close()
    [failure] = [e["log_failure"] for e in log_events if "log_failure" in e]
    assert failure.check(RuntimeError)
    assert await _count(reader) == 1


@pytest_twisted.ensureDeferred
async def test_ledger_keeps_rows_while_the_store_is_down(db_setting, reader, monkeypatch):
    """
    A batch that fails because the database cannot be reached is kept, in
    order, and written once the store is back; nothing is dropped.
    """
    from twisted.internet.defer import fail

    clock = Clock()
    store = Store.from_setting(db_setting, clock)
    ledger = Ledger(store, clock)
    await ledger.open()
    real = store._pool.runInteraction
    monkeypatch.setattr(store, "is_transient", lambda failure: failure.check(ConnectionRefusedError) is not None)
    monkeypatch.setattr(store._pool, "runInteraction", lambda *args: fail(ConnectionRefusedError()))
    ledger.record(_row(client="first"))
    await ledger.flush()
    assert not store.up and ledger.backlog == 1
    with pytest.raises(StoreUnavailable):
        await ledger.totals(0, None)
    ledger.record(_row(client="second"))
    clock.advance(ledger_module.FLUSH_INTERVAL)
    assert ledger.backlog == 2  # no write tried while down
    monkeypatch.setattr(store._pool, "runInteraction", real)
    clock.advance(store_module.RETRY_FIRST)  # the probe finds it back
    assert await eventually(lambda: store.up, timeout=4)
    clock.advance(0)
    assert await _eventually_count(reader, 2) == 2
    rows = await reader.query("SELECT client FROM usage ORDER BY id")
    assert [c for (c,) in rows] == ["first", "second"]
    await ledger.close()
    await store.close()


# -- limits across nodes (the daemon shares them only on PostgreSQL; the
# counter's SQL is checked on both engines all the same)


def _alpha(rpm=3):
    return Client("alpha", "key-a-0123456789abcdef", rpm)


@pytest_twisted.ensureDeferred
async def test_sqlite_keeps_limits_in_memory_postgresql_shares_them(db_setting):
    """
    One box (SQLite) counts in memory; PostgreSQL gets the shared limiter.
    """
    store = Store.from_setting(db_setting, reactor)
    limiter = rate_limiter(reactor, store, 10)
    expected = SharedRateLimiter if store.engine == "postgresql" else RateLimiter
    assert type(limiter) is expected


@pytest_twisted.ensureDeferred
async def test_shared_limits_hold_across_nodes(db_setting):
    """
    Two nodes on one database share a client's budget: with rpm 3, the
    fourth request in the minute is refused on the other node, with a
    Retry-After that is honest; refused requests cost the global budget
    nothing; the budget comes back as the window slides.
    """
    clock = Clock()
    clock.advance(600)  # the start of a minute
    stores = [Store.from_setting(db_setting, clock) for _ in range(2)]
    await gatherResults([s.open() for s in stores])
    one, two = (SharedRateLimiter(clock, s, global_rpm=5) for s in stores)
    try:
        await one.admit(_alpha())
        await two.admit(_alpha())
        await one.admit(_alpha())
        with pytest.raises(RateLimited) as raised:
            await two.admit(_alpha())
        assert "alpha" in raised.value.message and raised.value.retry_after == 80
        with pytest.raises(RateLimited):
            await one.admit(_alpha())
        await two.admit(ANONYMOUS)  # the refusals spent nothing globally: 4 of 5
        await one.admit(ANONYMOUS)
        with pytest.raises(RateLimited) as raised:
            await two.admit(ANONYMOUS)
        assert "gateway" in raised.value.message
        clock.advance(raised.value.retry_after)
        await one.admit(ANONYMOUS)
        clock.advance(60 + 80 - raised.value.retry_after)
        await two.admit(_alpha())
    finally:
        for s in stores:
            await s.close()


@pytest_twisted.ensureDeferred
async def test_shared_limits_race_for_the_last_place(db_setting):
    """
    Requests arriving at the same moment on several nodes never exceed the
    limit: the count and the check are one transaction.
    """
    clock = Clock()
    stores = [Store.from_setting(db_setting, clock) for _ in range(3)]
    await gatherResults([s.open() for s in stores])
    limiters = [SharedRateLimiter(clock, s, global_rpm=1000) for s in stores]
    outcomes = []
    try:
        attempts = [limiters[i % 3].admit(_alpha(rpm=7)) for i in range(30)]
        for attempt in attempts:
            try:
                await attempt
                outcomes.append(True)
            except RateLimited:
                outcomes.append(False)
    finally:
        for s in stores:
            await s.close()
    assert outcomes.count(True) == 7


@pytest_twisted.ensureDeferred
async def test_shared_limits_fall_back_to_the_node_when_the_store_is_down(db_setting, log_events):
    """
    With the store down, each node counts on its own (and says so once);
    when it is back, counting is shared again.
    """
    clock = Clock()
    store = Store.from_setting(db_setting, clock)
    await store.open()
    limiter = SharedRateLimiter(clock, store, global_rpm=100)
    try:
        store._down_since = clock.seconds()  # as after a lost connection
        for _ in range(3):
            await limiter.admit(_alpha())
        with pytest.raises(RateLimited):
            await limiter.admit(_alpha())
        warnings = [formatEvent(e) for e in log_events if "per node" in formatEvent(e)]
        assert len(warnings) == 1 and "state store is down" in warnings[0]
        store._down_since = None
        await limiter.admit(_alpha())  # the shared count has none yet
        assert any("shared across nodes again" in formatEvent(e) for e in log_events)
    finally:
        await store.close()


# -- shellm db


def test_shellm_db_status_migrate_and_backup(db_setting, tmp_path, marker):
    """
    C{shellm db migrate} applies the schema once; C{status} shows the engine,
    version, rows and size; C{backup} copies a SQLite store into a file that
    is itself a store, and points PostgreSQL users to pg_dump; a database
    from a newer SheLLM makes C{migrate} fail with the reason.
    """
    from tests.test_command import Shellm

    shellm = Shellm(tmp_path, marker, SHELLM_DB=db_setting)
    engine = StoreTarget.parse(db_setting).engine
    before = shellm("db", "status")
    if engine == "sqlite":
        assert before.returncode == 1 and "no database" in before.stderr
    else:
        assert before.returncode == 0 and "version 0 of" in before.stdout and "shellm db migrate" in before.stdout
    first = shellm("db", "migrate")
    assert first.returncode == 0 and f"version {latest_version()}" in first.stdout, first.stderr
    again = shellm("db", "migrate")
    assert again.returncode == 0 and "nothing to apply" in again.stdout
    status = shellm("db", "status", "--json")
    assert status.returncode == 0, status.stderr
    described = json.loads(status.stdout)
    assert described["engine"] == engine and described["schema_version"] == latest_version()
    assert described["tables"]["usage"] == 0 and described["size_bytes"] > 0
    copy = tmp_path / "copy.db"
    backup = shellm("db", "backup", str(copy))
    if engine == "sqlite":
        assert backup.returncode == 0, backup.stderr
        assert stat.S_IMODE(os.stat(copy).st_mode) == 0o600
        with closing(sqlite3.connect(copy)) as copied:
            assert copied.execute("SELECT MAX(version) FROM shellm_schema").fetchone()[0] == latest_version()
        assert shellm("db", "backup", str(copy)).returncode == 1  # never overwrites
    else:
        assert backup.returncode == 1 and "pg_dump" in backup.stderr and not copy.exists()
    if engine == "sqlite":
        with closing(sqlite3.connect(db_setting)) as connection:
            connection.execute("INSERT INTO shellm_schema VALUES (99, 'future', 0)")
            connection.commit()
    else:
        import psycopg

        with psycopg.connect(db_setting, autocommit=True) as connection:
            connection.execute("INSERT INTO shellm_schema VALUES (99, 'future', 0)")
    newer = shellm("db", "migrate")
    assert newer.returncode == 1 and "schema version 99" in newer.stderr and "Upgrade SheLLM" in newer.stderr
    assert "newer SheLLM" in shellm("db", "status").stdout


@pytest_twisted.ensureDeferred
async def test_the_daemon_refuses_a_database_from_a_newer_shellm(db_setting, tmp_path, marker):
    """
    C{twistd shellm} on a database a newer SheLLM has migrated does not
    start, and says why and what to do.
    """
    from twisted.internet.error import ProcessTerminated

    from tests.daemon import Daemon

    store = Store.from_setting(db_setting, reactor)
    await store.open()
    await store.interact(lambda cursor: cursor.execute("INSERT INTO shellm_schema VALUES (99, 'future', 0)"))
    await store.close()
    daemon = Daemon({"SHELLM_DB": db_setting}, marker, str(tmp_path))
    ended = await daemon.exited(timeout=30)
    output = daemon.protocol.output.decode()
    assert "schema version 99" in output and "Upgrade SheLLM" in output, output
    assert isinstance(ended, ProcessTerminated) and ended.exitCode == 1


# -- what a client sees while the store is down


@pytest_twisted.ensureDeferred
async def test_api_answers_while_the_store_is_down():
    """
    With the PostgreSQL store unreachable, a completion is still answered
    (the limits fall back to the node's own) and its usage row kept,
    /health says the store is down, and /usage is a JSON 503 saying the
    store cannot be reached.
    """
    from shellm.completion import ProviderResult, Usage
    from shellm.http.api import ShellmAPI
    from shellm.http.web import ShellmSite
    from tests.fake_providers import fake_providers, make_router
    from tests.test_api import JSON, URL, stub_treq

    clock = Clock()
    clock.advance(1000)
    providers = fake_providers()
    store = Store(StoreTarget("postgresql", "postgresql://shellm:secret@127.0.0.1:1/shellm"), clock)
    limiter = rate_limiter(clock, store, 2)
    ledger = Ledger(store, clock)
    api = ShellmAPI(clock, make_router(clock, providers), 1000, 15.0, limiter=limiter, ledger=ledger)
    stub = stub_treq(ShellmSite(api.resource(), clock, 4096))
    ledger.open()  # nothing listens on port 1: it keeps retrying, on the clock

    health = await (await stub.get(URL + "/health")).json()
    assert health["store"] == {"engine": "postgresql", "up": False}
    providers["claude"].on_start = lambda run: run.emit("ok").succeed(ProviderResult(usage=Usage(1, 1)))
    answers = []
    for _ in range(3):
        d = stub.post(URL + "/completions", data=json.dumps({"model": "claude", "prompt": "hi"}), headers=JSON)
        stub.flush()
        answers.append((await d).code)
    assert answers == [200, 200, 429]  # the node's own global limit of 2
    assert ledger.backlog == 2  # kept for when the store is back
    response = await stub.get(URL + "/usage")
    body = await response.json()
    assert response.code == 503 and body["error"] == "store_unavailable"
    assert "secret" not in json.dumps(body)
    await store.close()


def test_shellm_db_says_when_postgresql_cannot_be_reached(tmp_path, marker):
    """
    C{shellm db status} on a PostgreSQL URL nobody answers exits 1 with the
    database named, its password hidden.
    """
    from tests.daemon import free_port
    from tests.test_command import Shellm

    url = f"postgresql://shellm:hunter2@127.0.0.1:{free_port()}/shellm"
    result = Shellm(tmp_path, marker, SHELLM_DB=url)("db", "status")
    assert result.returncode == 1
    assert "shellm db: postgresql://shellm:***@127.0.0.1" in result.stderr and "cannot be used" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
