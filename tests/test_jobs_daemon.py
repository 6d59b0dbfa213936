"""
Jobs survive the daemon: a real twistd with the fake claude, stopped (TERM)
or killed (KILL) with one job running and one queued, then started again
on the same store; a real loopback receiver gets the signed callbacks.
"""

from __future__ import annotations

import base64
import json

import pytest
import pytest_twisted
import treq
from standardwebhooks.webhooks import Webhook
from twisted.internet import reactor
from twisted.web import server

from tests.daemon import Daemon, eventually, health_of
from tests.test_daemon import claude_env, cli_running
from tests.test_jobs import Receiver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

SECRET = "whsec_" + base64.b64encode(b"d" * 32).decode()


async def store_up(daemon: Daemon) -> None:
    """
    Wait until the daemon's store answers (it opens after the listener).
    """

    async def up():
        return (await health_of(daemon.url)).get("store", {}).get("up")

    assert await eventually(up, timeout=20)


async def job_of(daemon: Daemon, job_id: str) -> dict:
    response = await treq.get(f"{daemon.url}/jobs/{job_id}", timeout=10)
    return json.loads(await response.content())


async def submit(daemon: Daemon, body: dict) -> str:
    response = await treq.post(f"{daemon.url}/jobs", json=body, timeout=10)
    assert response.code == 202, await response.content()
    return json.loads(await response.content())["id"]


@pytest.mark.parametrize("signal", ["TERM", "KILL"])
@pytest_twisted.ensureDeferred
async def test_jobs_survive_a_restart_and_a_kill(tmp_path, marker, db_setting, signal):
    """
    With one job running (its CLI held mid-answer) and one queued, the
    daemon is stopped or killed; started again on the same store, the
    running job runs a second time and both succeed, each delivered once
    to its callback with a valid signature.
    """
    hook = Receiver([200])
    port = reactor.listenTCP(0, server.Site(hook), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}/hook"
    gate, record = tmp_path / "gate", tmp_path / "record"
    env = {
        **claude_env(marker, gate=gate, record=record),
        "SHELLM_DB": db_setting,
        "SHELLM_WEBHOOK_SECRET": SECRET,
        "SHELLM_WEBHOOK_ALLOW": "127.0.0.1",
        "SHELLM_JOBS_LEASE": "2",
    }
    first = Daemon(env, marker, str(tmp_path))
    second = None
    try:
        await first.started()
        await store_up(first)
        running = await submit(first, {"model": "claude", "prompt": "one", "callback_url": url})
        assert await eventually(cli_running(record), timeout=20)
        queued = await submit(first, {"model": "claude", "prompt": "two", "callback_url": url})
        assert (await job_of(first, running))["status"] == "running"
        assert (await job_of(first, queued))["status"] == "queued"
        await first.stop(signal)
        gate.write_text("open")
        second = Daemon(env, marker, str(tmp_path))
        await second.started()
        await store_up(second)

        async def both_done():
            jobs = [await job_of(second, job_id) for job_id in (running, queued)]
            return all(j["status"] == "succeeded" for j in jobs) and len(hook.got) == 2

        assert await eventually(both_done, timeout=40)
        assert (await job_of(second, running))["attempts"] == 2
        assert (await job_of(second, queued))["attempts"] == 1
        delivered = sorted(Webhook(SECRET).verify(body, headers)["data"]["id"] for headers, body in hook.got)
        assert delivered == sorted([running, queued])
    finally:
        for daemon in (first, second):
            if daemon is not None:
                await daemon.stop("KILL" if daemon is first else "TERM")
        gate.write_text("open")
        port.stopListening()
