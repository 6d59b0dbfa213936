"""
Subscription windows as a user of the daemon sees them: a real C{twistd -n
shellm} over the fake CLIs, which replay claude's recorded rate-limit
events; the answers' headers, C{/usage/quota}, C{/health}, C{/metrics},
and the fallback that happens without the spent provider being started.
"""

from __future__ import annotations

import json
import time

import pytest
import pytest_twisted
import treq

from tests.conftest import fake_cli, wait_for_no_processes
from tests.daemon import Daemon, eventually

KEY = "quota-test-key-0123456789"

#: Real child processes (the second stage of .ci/run).
pytestmark = pytest.mark.slow


def settings(marker: str, record: str, resets_at: int) -> dict:
    claude = {
        "ANTHROPIC_API_KEY": "fake",
        "SHELLM_TEST_MARKER": marker,
        "FAKE_MODE": "from_prompt",
        "FAKE_RECORD": record,
        "FAKE_RESETS_AT": str(resets_at),
    }
    gemini = {"GEMINI_API_KEY": "fake", "SHELLM_TEST_MARKER": marker, "FAKE_TEXT": "gemini here"}
    return {
        "SHELLM_CLAUDE_BIN": fake_cli("claude"),
        "SHELLM_CLAUDE_ENV": json.dumps(claude),
        "SHELLM_GEMINI_BIN": fake_cli("gemini"),
        "SHELLM_GEMINI_ENV": json.dumps(gemini),
        "SHELLM_FALLBACK_CHAIN": "claude,gemini",
        "SHELLM_CLIENTS": json.dumps({"app": {"key": KEY}}),
    }


async def call(daemon, method, path, body=None, key=KEY):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = await treq.request(method, daemon.url + path, json=body, headers=headers, timeout=30)
    content = await response.content()
    return response, (json.loads(content) if path != "/metrics" else content.decode())


def runs_in(record) -> int:
    return len(record.read_text().splitlines()) if record.exists() else 0


@pytest_twisted.ensureDeferred
async def test_spent_window_is_skipped_shown_and_gauged(tmp_path, marker):
    """
    A claude answer with the 5-hour warning carries its window in headers;
    a rejection falls back to gemini; from then on claude is not started
    (fallback, or 429 C{quota_exhausted} with Retry-After when the request
    forbids it) while its circuit stays closed; C{/usage/quota},
    C{/health} and C{/metrics} show the spent window until its reset.
    """
    record = tmp_path / "claude.jsonl"
    resets_at = int(time.time()) + 3600
    daemon = Daemon(settings(marker, str(record), resets_at), marker, str(tmp_path))
    try:
        await daemon.started()

        response, body = await call(daemon, "POST", "/completions", {"model": "claude", "prompt": "mode:quota_warning"})
        assert response.code == 200 and body["provider"] == "claude"
        assert response.headers.getRawHeaders("x-shellm-quota-five-hour") == [
            f"0.81;reset={resets_at};status=allowed_warning"
        ]
        assert response.headers.getRawHeaders("x-shellm-quota-state") == ["warning"]

        # A stream's headers go out before its run: they show the windows known then.
        response = await treq.post(
            daemon.url + "/completions/stream",
            json={"model": "claude", "prompt": "mode:quota_allowed"},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=30,
        )
        assert b'"done": true' in await response.content()
        assert response.headers.getRawHeaders("x-shellm-quota-five-hour") == [
            f"0.81;reset={resets_at};status=allowed_warning"
        ]

        response, body = await call(
            daemon, "POST", "/completions", {"model": "claude", "prompt": "mode:quota_rejected"}
        )
        assert response.code == 200
        assert (body["provider"], body["content"]) == ("gemini", "gemini here")
        assert body["original_provider"] == "claude" and body["original_error"]["error"] == "quota_exhausted"
        assert runs_in(record) == 3

        response, body = await call(daemon, "POST", "/completions", {"model": "claude", "prompt": "mode:ok"})
        assert response.code == 200 and body["provider"] == "gemini"
        response, body = await call(
            daemon, "POST", "/completions", {"model": "claude", "prompt": "mode:ok", "fallback": False}
        )
        assert response.code == 429 and body["error"] == "quota_exhausted"
        [retry_after] = response.headers.getRawHeaders("retry-after")
        assert 3500 < int(retry_after) <= 3600
        assert runs_in(record) == 3  # never started while spent

        response, quota = await call(daemon, "GET", "/usage/quota")
        assert response.code == 200
        claude = quota["providers"]["claude"]
        assert (claude["state"], claude["resets_at"]) == ("exhausted", resets_at)
        window, weekly = claude["windows"]
        assert (weekly["kind"], weekly["status"], weekly["used"]) == ("seven_day", "allowed", 0.4)
        assert (window["kind"], window["status"], window["used"], window["resets_at"], window["source"]) == (
            "five_hour",
            "rejected",
            1.0,
            resets_at,
            "stream",
        )
        assert quota["providers"]["gemini"] == {"state": "ok", "resets_at": None, "windows": []}
        assert quota["threshold"] == 0.95
        response, _ = await call(daemon, "GET", "/usage/quota", key=None)
        assert response.code == 401

        _, health = await call(daemon, "GET", "/health")
        assert health["providers"]["claude"]["quota"] == {"state": "exhausted", "resets_at": resets_at}
        assert health["providers"]["claude"]["circuit"]["state"] == "closed"
        assert health["providers"]["claude"]["circuit"]["consecutive_failures"] == 0

        _, metrics = await call(daemon, "GET", "/metrics")
        assert 'shellm_quota_used_ratio{model="",provider="claude",window="five_hour"} 1.0' in metrics
        gauge = 'shellm_quota_resets_at_seconds{model="",provider="claude",window="five_hour"} '
        [reset_line] = [line for line in metrics.splitlines() if line.startswith(gauge)]
        assert float(reset_line[len(gauge) :]) == resets_at
        assert 'shellm_quota_exhausted{provider="claude"} 1.0' in metrics
    finally:
        await daemon.stop()
    logged = [json.loads(line) for line in daemon.log_lines()]
    changes = [r for r in logged if r.get("namespace", "").endswith("QuotaTracker")]
    # The streamed answer's "allowed" five-hour window ended the warning for a while.
    assert [(r["provider"], r["state"]) for r in changes] == [
        ("claude", "warning"),
        ("claude", "ok"),
        ("claude", "exhausted"),
    ]
    assert "claude quota exhausted (five_hour) until" in changes[2]["message"]
    assert await wait_for_no_processes(marker) == []


@pytest_twisted.ensureDeferred
async def test_codex_probe_after_a_run(tmp_path, marker):
    """
    With the probe on, a codex run is followed by one app-server read; a
    weekly window at 97% (sent as the primary one) then holds codex back:
    the next request is refused with 429 without codex being started.
    """
    record = tmp_path / "codex.jsonl"
    limits = {"primary": {"usedPercent": 97, "windowDurationMins": 10080, "resetsAt": int(time.time()) + 86400}}
    codex = {
        "OPENAI_API_KEY": "fake",
        "SHELLM_TEST_MARKER": marker,
        "FAKE_RECORD": str(record),
        "FAKE_RATE_LIMITS": json.dumps(limits),
    }
    daemon = Daemon(
        {
            "SHELLM_CODEX_BIN": fake_cli("codex"),
            "SHELLM_CODEX_ENV": json.dumps(codex),
            "SHELLM_CODEX_QUOTA_INTERVAL": "300",
        },
        marker,
        str(tmp_path),
    )
    try:
        await daemon.started()
        response, body = await call(daemon, "POST", "/completions", {"model": "codex", "prompt": "hi"}, key=None)
        assert response.code == 200, body

        async def probed():
            _, quota = await call(daemon, "GET", "/usage/quota", key=None)
            return quota["providers"]["codex"]["state"] == "exhausted" and quota["providers"]["codex"]

        codex_state = await eventually(probed, timeout=10)
        assert codex_state, "the probe did not report"
        [weekly] = codex_state["windows"]
        assert (weekly["kind"], weekly["used"], weekly["source"]) == ("seven_day", 0.97, "app-server")
        response, body = await call(
            daemon, "POST", "/completions", {"model": "codex", "prompt": "hi", "fallback": False}, key=None
        )
        assert (response.code, body["error"]) == (429, "quota_exhausted")
        assert runs_in(record) == 1  # one codex run: the refused request started nothing
    finally:
        await daemon.stop()
    assert await wait_for_no_processes(marker) == []
