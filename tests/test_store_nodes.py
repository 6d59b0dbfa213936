"""
Real daemons on one PostgreSQL database: two nodes share limits and usage,
and a node keeps serving while the database is away.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.threads import deferToThreadPool

from tests.conftest import wait_for_no_processes
from tests.daemon import Daemon, eventually, health_of
from tests.postgres import require_postgres, start_cluster
from tests.test_clients import KEY_A, _env, _post

pytestmark = pytest.mark.slow

CLIENTS = {"alpha": {"key": KEY_A, "rpm": 3}}


async def _usage(daemon) -> dict:
    response = await treq.get(daemon.url + "/usage?period=24h", headers={"x-api-key": KEY_A})
    return {"code": response.code, **json.loads(await response.content())}


def _not_access(lines: list[str]) -> list[str]:
    return [line[:300] for line in lines if "shellm.access" not in line]


def _blocking(function):
    # pg_ctl waits for the server: off the reactor thread.
    return deferToThreadPool(reactor, reactor.getThreadPool(), function)


@pytest_twisted.ensureDeferred
async def test_two_nodes_share_limits_and_usage(tmp_path, marker, postgres_url):
    """
    A client with rpm 3 gets its fourth request in the minute refused on the
    other node; /usage on either node shows both nodes' requests; restarting
    either node loses nothing.
    """
    env = _env(marker, tmp_path, CLIENTS, SHELLM_DB=postgres_url)
    one, two = Daemon(env, marker, str(tmp_path)), Daemon(env, marker, str(tmp_path))
    try:
        await one.started()
        await two.started()
        for node in (one, two, one):
            response, body = await _post(node, KEY_A)
            assert response.code == 200, body
        response, body = await _post(two, KEY_A)
        assert response.code == 429 and body["error"] == "rate_limited"
        assert "alpha" in body["message"]
        assert int(response.headers.getRawHeaders("retry-after")[0]) > 0
        for node in (one, two):

            async def three(node=node):
                usage = await _usage(node)
                return usage if usage["totals"]["requests"] == 3 else None

            usage = await eventually(three)
            assert usage and usage["client"] == "alpha", usage
        health = await health_of(one.url, KEY_A)
        assert health["store"] == {"engine": "postgresql", "up": True}
        await two.stop()
        two = Daemon(env, marker, str(tmp_path))
        await two.started()
        assert (await _usage(two))["totals"]["requests"] == 3
        await one.stop()
        one = Daemon(env, marker, str(tmp_path))
        await one.started()
        assert (await _usage(one))["totals"]["requests"] == 3
        response, body = await _post(one, KEY_A)
        assert response.code == 429  # the restart did not reset the shared window
    finally:
        await one.stop()
        await two.stop()
    assert await wait_for_no_processes(marker) == []


@pytest_twisted.ensureDeferred
async def test_requests_are_served_while_postgresql_is_down(tmp_path, marker):
    """
    With PostgreSQL stopped abruptly mid-load (as in a crash), completions
    keep being answered, /health says the store is down and /usage answers
    503; once PostgreSQL is back, every request answered before and during
    the outage is in the ledger.
    """
    require_postgres()  # skips here, not inside a thread
    cluster = await _blocking(start_cluster)
    try:
        url = cluster.new_database()
        env = _env(marker, tmp_path, {"alpha": {"key": KEY_A, "rpm": 100}}, SHELLM_DB=url)
        daemon = Daemon(env, marker, str(tmp_path))
        try:
            await daemon.started()
            for _ in range(2):
                response, body = await _post(daemon, KEY_A)
                assert response.code == 200, body
            assert (await _usage(daemon))["totals"]["requests"] == 2
            await _blocking(cluster.stop)
            for _ in range(5):
                response, body = await _post(daemon, KEY_A)
                assert response.code == 200, body

            async def store_down():
                return (await health_of(daemon.url, KEY_A))["store"] == {"engine": "postgresql", "up": False}

            assert await eventually(store_down)
            usage = await _usage(daemon)
            assert usage["code"] == 503 and usage["error"] == "store_unavailable"
            await _blocking(cluster.start)

            seen = []

            async def all_seven():
                seen.append(await _usage(daemon))
                return seen[-1]["code"] == 200 and seen[-1]["totals"]["requests"] == 7

            ok = await eventually(all_seven, timeout=30)
            assert ok, (seen[-1], _not_access(daemon.log_lines()))
            assert (await health_of(daemon.url, KEY_A))["store"]["up"] is True
            assert (await health_of(daemon.url))["store"] == {"up": True}  # a load balancer sees it too
            lines = "\n".join(daemon.log_lines())
            assert "state store down" in lines and "state store back" in lines
            assert "rate limits counted per node" in lines
        finally:
            await daemon.stop()
    finally:
        await _blocking(cluster.remove)
    assert await wait_for_no_processes(marker) == []
