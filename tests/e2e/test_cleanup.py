"""
Nothing outlives a run: no process of the CLI, no file outside the run's
own directory and the CLI's config folder in HOME.  (Every e2e test checks
both when it ends; this one also cuts a stream off half-way.)
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from tests.daemon import eventually, open_stream
from tests.e2e.conftest import CLIS, complete
from tests.e2e.fakes.base import DEFAULT_TEXT

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("cli", CLIS)
@pytest_twisted.ensureDeferred
async def test_client_leaving_mid_stream_ends_the_cli(rigs, cli):
    """
    When the client goes away while the upstream is still answering, the
    CLI's whole process group ends, the daemon serves the next request, and
    the run leaves no files but the CLI's own config behind.
    """
    rig = rigs(cli)
    gate = Deferred()
    rig.script(gate=gate)
    daemon = await rig.daemon(SHELLM_KILL_GRACE=1)
    _, reader = await open_stream(daemon.url + "/completions/stream", {"model": cli, "prompt": "hi"})

    async def upstream_called():
        return rig.fake.api_requests() and rig.cli_processes()

    assert await eventually(upstream_called, timeout=30)
    reader.abort()

    async def cli_gone():
        return not rig.cli_processes()

    assert await eventually(cli_gone, timeout=5), rig.cli_processes()
    rig.script()
    status, body, _ = await complete(daemon, {"model": cli, "prompt": "hi"})
    assert (status, body.get("content")) == (200, DEFAULT_TEXT), body

    async def nothing_left():
        # A run's scratch directory goes just after its answer, off the reactor.
        return rig.stray_files() == []

    assert await eventually(nothing_left, timeout=5), rig.stray_files()
