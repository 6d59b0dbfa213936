"""
Upstream failures, as the real CLIs report them, become the right error,
quickly; a hanging upstream becomes a timeout with the CLI's process group
gone.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.daemon import eventually
from tests.e2e.conftest import CLIS, complete

pytestmark = pytest.mark.e2e

#: Upstream status, then the status and error code the client must get.
#: 401 comes last: it rightly marks the CLI as logged out, after which the
#: daemon refuses at once without running it.
ERRORS = ((429, 429, "rate_limited"), (500, 502, "cli_failed"), (401, 503, "provider_unavailable"))
#: "Within a few seconds": the CLIs' fail-fast settings at work, not their
#: minutes of retries.
QUICK = 8.0

#: Each CLI with its default model, but gemini with a model named: without
#: one, gemini first asks the upstream to choose one (its "router" call),
#: which retries five times (about a minute) whatever its settings say; the
#: README says so under the `gemini` alias.
MODELS = [("claude", "claude"), ("gemini", "gemini-flash"), ("codex", "codex")]


@pytest.mark.parametrize("cli,model", MODELS)
@pytest_twisted.ensureDeferred
async def test_upstream_errors_are_classified_quickly(rigs, cli, model):
    """
    Upstream 429 is rate_limited, 500 is cli_failed and 401 is
    provider_unavailable, each within a few seconds and after the upstream
    was really called.
    """
    rig = rigs(cli)
    daemon = await rig.daemon(SHELLM_TIMEOUT=10, SHELLM_CIRCUIT_THRESHOLD=10)
    outcomes = []
    for upstream, _, _ in ERRORS:
        rig.script(fail_status=upstream)
        before = len(rig.fake.api_requests())
        status, body, took = await complete(daemon, {"model": model, "prompt": "hi", "fallback": False})
        calls = len(rig.fake.api_requests()) - before
        outcomes.append((upstream, status, body.get("error"), round(took, 1), calls))
    expected = [(upstream, status, code) for upstream, status, code in ERRORS]
    assert [o[:3] for o in outcomes] == expected, outcomes
    assert all(o[4] >= 1 for o in outcomes), f"the upstream was not called: {outcomes}"
    assert all(o[3] < QUICK for o in outcomes), f"too slow: {outcomes}"


@pytest.mark.parametrize("cli", CLIS)
@pytest_twisted.ensureDeferred
async def test_hanging_upstream_times_out_and_the_cli_is_gone(rigs, cli):
    """
    An upstream that accepts the call and never answers ends in a timeout
    (after SHELLM_TIMEOUT, not the CLI's own minutes), and nothing of the
    CLI's process group is left.
    """
    rig = rigs(cli)
    rig.script(hang=True)
    daemon = await rig.daemon(SHELLM_TIMEOUT=6, SHELLM_KILL_GRACE=1)
    status, body, took = await complete(daemon, {"model": cli, "prompt": "hi", "fallback": False})
    assert (status, body.get("error")) == (504, "timeout"), body
    assert rig.fake.api_requests(), "the CLI never reached the upstream"
    assert took < 6 + 1 + 3

    async def cli_gone():
        return not rig.cli_processes()

    assert await eventually(cli_gone, timeout=3), rig.cli_processes()
