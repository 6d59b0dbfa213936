"""
A CLI without a login: an empty HOME and no key.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq

from tests.e2e.conftest import CLIS, complete

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("cli", CLIS)
@pytest_twisted.ensureDeferred
async def test_logged_out_cli_is_reported_and_refused_without_a_request(rigs, cli):
    """
    /health says the CLI is installed but not authenticated, and
    /completions answers 503 at once; the upstream never hears of either.
    """
    rig = rigs(cli, logged_in=False)
    daemon = await rig.daemon()
    health = json.loads(await (await treq.get(daemon.url + "/health")).content())
    provider = health["providers"][cli]
    assert provider["installed"] is True, provider
    assert provider["authenticated"] is False, provider
    status, body, took = await complete(daemon, {"model": cli, "prompt": "hi", "fallback": False})
    assert (status, body["error"]) == (503, "provider_unavailable"), body
    assert took < 2.0
    assert rig.fake.requests == []
