"""
Shared test helpers: where the fake CLIs are, how to prove that no
process a test started is still running, and the log events of a test.
"""

from __future__ import annotations

import gc
import os
import sys
import uuid

import pytest
import pytest_twisted
from twisted.logger import globalLogPublisher

FAKES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fakes")


def fake_cli(name: str) -> str:
    """
    The absolute path of C{tests/fakes/fake_<name>.py}.
    """
    return os.path.join(FAKES, f"fake_{name}.py")


def processes_with_marker(marker: str) -> list[int]:
    """
    Pids of live processes whose environment holds C{marker}.  Every process
    a test starts, and everything those start, inherit it.
    """
    found = []
    needle = marker.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read():
                    with open(f"/proc/{entry}/stat", "rb") as s:
                        state = s.read().rsplit(b")", 1)[1].split()[0]
                    if state != b"Z":
                        found.append(int(entry))
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    """
    Whether process C{pid} exists and is not a zombie.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z"


async def wait_for_no_processes(marker: str, timeout: float = 5.0) -> list[int]:
    """
    Poll (on the real reactor) until no process carries C{marker}; return
    what is still there after C{timeout}.
    """
    from tests.daemon import eventually

    await eventually(lambda: not processes_with_marker(marker), timeout)
    return processes_with_marker(marker)


@pytest.fixture
def marker():
    """
    A unique environment value for the processes of one test; after the
    test, none of them may still be running.
    """
    value = f"shellm-test-{uuid.uuid4().hex}"
    yield value
    left = processes_with_marker(value)
    for pid in left:
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    assert not left, f"processes left running after the test: {left}"


@pytest.fixture
def python_path_env():
    """
    An environment for spawned fakes: this interpreter first on PATH, so
    C{#!/usr/bin/env python3} finds the same Python the tests run on.
    """
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    return {"PATH": path, "HOME": os.environ.get("HOME", "/root")}


@pytest.fixture
def log_events():
    """
    Every log event emitted during the test.
    """
    gc.collect()  # earlier tests' unreferenced Deferreds report now, not during this test
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


@pytest.fixture(scope="session")
def postgres_cluster():
    """
    One throwaway PostgreSQL cluster for the session (see tests/postgres.py).
    """
    from tests.postgres import start_cluster

    cluster = start_cluster()
    yield cluster
    cluster.remove()


@pytest.fixture
def postgres_url(request):
    """
    A fresh, empty PostgreSQL database on the session's cluster.
    """
    from tests.postgres import require_postgres

    require_postgres()
    cluster = request.getfixturevalue("postgres_cluster")
    url = cluster.new_database()
    yield url
    cluster.drop_database(url)


@pytest_twisted.async_yield_fixture
async def store(db_setting):
    """
    An open store on an empty database, once per engine.
    """
    from twisted.internet import reactor

    from shellm.state.store import Store

    store = Store.from_setting(db_setting, reactor)
    await store.open()
    yield store
    await store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_setting(request, tmp_path):
    """
    A SHELLM_DB value for an empty store, once per engine.
    """
    if request.param == "sqlite":
        return str(tmp_path / "shellm.db")
    return request.getfixturevalue("postgres_url")
