"""
Stored keys through real daemons: two nodes sharing PostgreSQL see a key
made on either within 2 s and refuse it on both once revoked; the
C{shellm keys} command makes keys a running daemon accepts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import pytest_twisted
import treq

from tests.daemon import Daemon, eventually
from tests.test_clients import _env, _post

pytestmark = pytest.mark.slow

ADMIN = "admin-key-0123456789abcdef"
SECRET = "shared-secret-0123456789abcdef"


async def _admin(daemon, method: str, path: str, body=None):
    response = await treq.request(
        method,
        daemon.url + path,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"authorization": f"Bearer {ADMIN}", "content-type": "application/json"},
    )
    return response.code, json.loads(await response.content())


async def _served_within(daemon, key: str, code: int, seconds: float) -> float:
    """
    Seconds until C{daemon} answers C{key}'s request with C{code} (at most
    C{seconds}; the test fails past that).
    """
    started = time.monotonic()

    async def answered():
        response, _ = await _post(daemon, key)
        return response.code == code

    assert await eventually(answered, timeout=seconds), f"not {code} within {seconds} s"
    return time.monotonic() - started


@pytest_twisted.ensureDeferred
async def test_two_nodes_share_keys_within_two_seconds(tmp_path, marker, postgres_url):
    """
    A key made on one node works on the other within 2 s, with no reload;
    revoked on the second, it is refused on both within 2 s; env clients
    are listed read-only.
    """
    env = _env(
        marker,
        tmp_path,
        {"envapp": {"key": "env-key-0123456789abcdef"}},
        SHELLM_DB=postgres_url,
        SHELLM_ADMIN_KEY=ADMIN,
        SHELLM_KEY_SECRET=SECRET,
    )
    one, two = Daemon(env, marker, str(tmp_path)), Daemon(env, marker, str(tmp_path))
    try:
        await one.started()
        await two.started()
        code, made = await _admin(one, "POST", "/admin/keys", {"name": "ci", "models": ["claude"]})
        assert code == 201, made
        assert await _served_within(two, made["key"], 200, 2.5) <= 2.5
        code, listing = await _admin(two, "GET", "/admin/keys")
        assert {k["name"]: k["source"] for k in listing["keys"]} == {"ci": "db", "envapp": "env"}
        assert made["key"] not in json.dumps(listing)
        assert (await _admin(two, "DELETE", f"/admin/keys/{made['id']}"))[0] == 200
        for node in (one, two):
            await _served_within(node, made["key"], 401, 2.5)
    finally:
        await one.stop()
        await two.stop()


@pytest_twisted.ensureDeferred
async def test_shellm_keys_command_reaches_a_running_daemon(tmp_path, marker):
    """
    `shellm keys create` prints the key once; a running daemon on the same
    store serves it within 2 s; `shellm keys revoke` makes it refuse it.
    """
    env = _env(marker, tmp_path, {}, SHELLM_KEY_SECRET=SECRET)
    daemon = Daemon(env, marker, str(tmp_path))
    command_env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PYTHONPATH": os.pathsep.join(sys.path),
        **env,
    }

    def shellm(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "shellm.admin", "keys", *args],
            env=command_env,
            cwd=str(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    try:
        await daemon.started()
        made = shellm("create", "ci", "--models", "claude", "--json")
        assert made.returncode == 0, made.stderr
        key = json.loads(made.stdout)
        await _served_within(daemon, key["key"], 200, 2.5)
        listed = shellm("list", "--json")
        assert key["key"] not in listed.stdout and json.loads(listed.stdout)[0]["id"] == key["id"]
        bad = shellm("create", "other", "--rpm", "-1")
        assert bad.returncode == 1 and "rpm" in bad.stderr
        assert shellm("revoke", key["id"]).returncode == 0
        assert shellm("revoke", key["id"]).returncode == 1
        await _served_within(daemon, key["key"], 401, 2.5)
    finally:
        await daemon.stop()
