"""
Subscription windows from real child processes: the fake CLIs replay the
recorded rate-limit events and limit-reached errors, and a fake C{codex
app-server} answers SheLLM's rate-limit probe.
"""

from __future__ import annotations

import json
import time

import pytest
from twisted.internet.defer import Deferred

from shellm.errors import QuotaExhausted
from shellm.providers.codex_quota import CodexQuotaProbe

from . import test_cli_providers as cli_tests
from .conftest import wait_for_no_processes
from .test_cli_providers import read_records, real_reactor_test, request, run_to_end

# The CLI-provider tests' fixtures: a provider around its fake, spawned
# both ways a CLI is started.
spawner = cli_tests.spawner
make_provider = cli_tests.make_provider

#: Real child processes (the second stage of .ci/run).
pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "mode, kind, status, used",
    [
        ("quota_allowed", "five_hour", "allowed", 0.42),
        ("quota_warning", "five_hour", "allowed_warning", 0.81),
    ],
)
@real_reactor_test
async def test_claude_answer_reports_its_window(mode, kind, status, used, make_provider, marker):
    """
    A claude answer whose stream carried a C{rate_limit_event} succeeds
    (a warning is not an error) and reports the window it counted against.
    """
    resets_at = int(time.time()) + 3000
    provider = make_provider("claude", env={"FAKE_MODE": mode, "FAKE_RESETS_AT": str(resets_at)})
    result, sink = await run_to_end(provider, request("claude"))
    assert sink.text == "Hi! I am a fake model."
    window, weekly = result.quota
    assert (window.kind, window.status, window.used, window.resets_at, window.source) == (
        kind,
        status,
        used,
        resets_at,
        "stream",
    )
    assert (weekly.kind, weekly.status, weekly.used) == ("seven_day", "allowed", 0.4)
    assert await wait_for_no_processes(marker) == []


@real_reactor_test
async def test_claude_rejection_is_quota_exhausted(make_provider, marker):
    """
    A rejected window (utilization the integer 1), then claude's refusal:
    429 C{quota_exhausted} until C{resetsAt}, not a provider failure.
    """
    resets_at = int(time.time()) + 3000
    provider = make_provider("claude", env={"FAKE_MODE": "quota_rejected", "FAKE_RESETS_AT": str(resets_at)})
    error, sink = await run_to_end(provider, request("claude"))
    assert isinstance(error, QuotaExhausted), error
    assert error.status == 429 and not error.blames_provider
    assert 2990 <= error.retry_after <= 3000
    window, weekly = error.quota
    assert (window.kind, window.status, window.used, window.resets_at) == ("five_hour", "rejected", 1.0, resets_at)
    assert (weekly.kind, weekly.status) == ("seven_day", "allowed")
    assert sink.events == []
    assert await wait_for_no_processes(marker) == []


@real_reactor_test
async def test_codex_usage_limit_is_quota_exhausted(make_provider, marker):
    """
    Codex's "You've hit your usage limit ... try again in 2 hours 5
    minutes" is C{quota_exhausted} for that long.
    """
    provider = make_provider("codex", env={"FAKE_MODE": "usage_limit"})
    error, _ = await run_to_end(provider, request("codex"))
    assert isinstance(error, QuotaExhausted), error
    assert 2 * 3600 + 5 * 60 - 10 <= error.retry_after <= 2 * 3600 + 5 * 60
    assert await wait_for_no_processes(marker) == []


@real_reactor_test
async def test_gemini_daily_quota_is_quota_exhausted(make_provider, marker):
    """
    Gemini's 429 C{RESOURCE_EXHAUSTED} naming a per-day quota (exit 173)
    is C{quota_exhausted} until the daily reset.
    """
    provider = make_provider("gemini", env={"FAKE_MODE": "daily_quota"})
    error, _ = await run_to_end(provider, request("gemini"))
    assert isinstance(error, QuotaExhausted), error
    [window] = error.quota
    assert window.kind == "daily" and 0 < error.retry_after <= 25 * 3600
    assert await wait_for_no_processes(marker) == []


# -- the codex app-server probe


#: Some plans send the weekly window as the primary one, and no other.
WEEKLY_ONLY = {
    "limitId": "codex",
    "primary": {"usedPercent": 97, "windowDurationMins": 10080, "resetsAt": 1999999999},
    "secondary": None,
    "planType": "plus",
}


def make_probe(make_provider, tmp_path, env=None, interval=300.0, timeout=20.0):
    from twisted.internet import reactor

    record = tmp_path / "record.jsonl"
    fake = {"FAKE_APP_SERVER_RECORD": str(record), "FAKE_RATE_LIMITS": json.dumps(WEEKLY_ONLY), **(env or {})}
    provider = make_provider("codex", env=fake)
    reported: list = []
    probe = CodexQuotaProbe(reactor, provider, reported.append, interval, timeout=timeout)
    return probe, reported, record


@real_reactor_test
async def test_probe_reads_codex_windows(make_provider, marker, tmp_path):
    """
    The probe starts C{codex app-server} in a private scratch folder with
    the codex run's environment, says C{initialize}, C{initialized}, then
    C{account/rateLimits/read}, and reports the windows by their duration
    (here the weekly window, sent as C{primary}).
    """
    probe, reported, record = make_probe(make_provider, tmp_path)
    windows = await probe.poke()
    [window] = windows
    assert (window.kind, window.used, window.status, window.resets_at, window.source) == (
        "seven_day",
        0.97,
        "allowed",
        1999999999,
        "app-server",
    )
    assert reported == [windows]
    [run] = read_records(record)
    assert run["argv"][-1] == "app-server" and "analytics.enabled=false" in run["argv"]
    assert [m.get("method") for m in run["stdin"]] == [
        "initialize",
        "initialized",
        "account/rateLimits/read",
    ]
    assert run["cwd"].startswith("/") and "shellm-codex-quota-" in run["cwd"]
    assert run["env"]["SHELLM_TEST_MARKER"] == marker and run["env"]["TMPDIR"].startswith(run["cwd"].rsplit("/", 1)[0])
    assert await wait_for_no_processes(marker) == []


@real_reactor_test
async def test_probe_runs_at_most_once_per_interval(make_provider, marker, tmp_path):
    """
    While codex is in use the probe runs at most once per interval; after
    a failed codex run, sooner (but not more than once a minute).
    """
    probe, reported, record = make_probe(make_provider, tmp_path, interval=300.0)
    await probe.poke()
    assert await probe.poke() == [] and await probe.poke(after_error=True) == []
    assert len(read_records(record)) == 1
    probe._last -= 61  # a minute later
    assert await probe.poke() == []
    assert len(await probe.poke(after_error=True)) == 1
    assert len(read_records(record)) == 2
    assert await wait_for_no_processes(marker) == []


@pytest.mark.parametrize("behaviour", ["error", "hang"])
@real_reactor_test
async def test_probe_that_learns_nothing_reports_nothing(behaviour, make_provider, marker, tmp_path):
    """
    An app-server that answers with an error (no ChatGPT login) or never
    answers (stopped at the probe's timeout) reports no windows, and
    leaves no process behind.
    """
    probe, reported, _ = make_probe(make_provider, tmp_path, env={"FAKE_APP_SERVER": behaviour}, timeout=2.0)
    assert await probe.poke() == []
    assert reported == []
    assert await wait_for_no_processes(marker) == []


@real_reactor_test
async def test_codex_run_pokes_the_probe(make_provider, marker, tmp_path):
    """
    A codex run, once it has ended, starts the probe.
    """
    probe, reported, record = make_probe(make_provider, tmp_path)
    provider = probe._provider
    provider.quota_probe = probe
    probed: Deferred = Deferred()
    original = probe.probe

    def probing():
        d = original()
        d.addBoth(lambda windows: probed.callback(windows) or windows)
        return d

    probe.probe = probing
    result, sink = await run_to_end(provider, request("codex"))
    assert sink.text == "Hi! I am a fake model."
    [window] = await probed
    assert window.kind == "seven_day"
    assert len(reported) == 1
    assert await wait_for_no_processes(marker) == []
