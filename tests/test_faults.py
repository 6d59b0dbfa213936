"""
Fault injection: a real daemon under a mixed load in which CLIs hang, crash,
ignore TERM, leave grandchildren, print garbage or huge lines, upstreams
stall, cut the body or fail, and clients walk away.  Afterwards nothing may
be left running or held, and every answer must have been well-formed.
"""

from __future__ import annotations

import json
import random

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import DeferredList

from tests.conftest import fake_cli, processes_with_marker
from tests.daemon import Daemon, eventually, health_of, open_stream
from tests.fakes.fake_openai_server import start_fake_openai

pytestmark = pytest.mark.slow  # real processes and daemons (the second stage of .ci/run)

# (prompt, what the client may see): statuses for a plain request; for a
# stream, whether it may end in "done" and/or "error".
CLI_FAULTS = {
    "mode:ok": {200},
    "mode:hang": {504},
    "mode:ignore_term": {504},
    "mode:exit_nonzero": {502},
    "mode:grandchild": {200},
    "mode:garbage": {200},
    "mode:huge_line": {200},
    "mode:byte_by_byte": {200},
    "mode:invalid_utf8": {200},
    "mode:upstream_429": {429},
}
HTTP_FAULTS = {
    "hello": {200},
    "mode:slow": {200},
    "mode:stall": {504},
    "mode:cut": {502},
    "mode:status500": {502},
    "mode:status429": {429},
}


async def _plain(url, model, prompt, expected, problems):
    response = await treq.post(
        url + "/completions", json={"model": model, "prompt": prompt, "fallback": False}, timeout=30
    )
    raw = await response.content()
    try:
        body = json.loads(raw)
    except ValueError:
        problems.append(f"{model} {prompt}: not JSON: {raw[:200]!r}")
        return
    if response.code not in expected:
        problems.append(f"{model} {prompt}: status {response.code} {body}")
    elif response.code == 200 and not isinstance(body.get("content"), str):
        problems.append(f"{model} {prompt}: no content {body}")
    elif response.code != 200 and not (body.get("error") and body.get("message")):
        problems.append(f"{model} {prompt}: malformed error {body}")


async def _stream(url, model, prompt, expected, problems, leave_after):
    response, reader = await open_stream(
        url + "/completions/stream", {"model": model, "prompt": prompt, "fallback": False}
    )
    if response.code != 200:
        problems.append(f"stream {model} {prompt}: status {response.code}")
        return
    events = []
    while True:
        if leave_after is not None and len(events) >= leave_after:
            reader.abort()  # the client walks away (maybe while still queued)
            return
        event = await reader.next_data()
        if event is None:
            break
        events.append(event)
    if not events or events[-1].get("done") is not True:
        problems.append(f"stream {model} {prompt}: no final event: {events[-3:]}")
        return
    final = events[-1]
    if 200 in expected and "error" not in final:
        return
    if "error" in final and final.get("message") and expected != {200}:
        return
    problems.append(f"stream {model} {prompt}: unexpected end {final}")


@pytest_twisted.ensureDeferred
async def test_mixed_faults_leave_nothing_behind(tmp_path, marker):
    """
    200 mixed requests with random faults: every answer is well-formed JSON
    or a well-formed stream ending in done or an error event; afterwards no
    child process is left, both queues are empty and /health answers.
    """
    fake, port = start_fake_openai(reactor)
    cli_env = {
        "ANTHROPIC_API_KEY": "fake",
        "SHELLM_TEST_MARKER": marker,
        "FAKE_MODE": "from_prompt",
        "FAKE_HUGE_BYTES": "3000000",
    }
    daemon = Daemon(
        {
            "SHELLM_CLAUDE_BIN": fake_cli("claude"),
            "SHELLM_CLAUDE_ENV": json.dumps(cli_env),
            "CEREBRAS_API_KEY": "fake-key",
            "SHELLM_CEREBRAS_BASE_URL": fake.base_url,
            "SHELLM_TIMEOUT": "1",
            "SHELLM_KILL_GRACE": "0.3",
            "SHELLM_MAX_CONCURRENT": "6",
            "SHELLM_MAX_QUEUE_DEPTH": "200",
            "SHELLM_CIRCUIT_THRESHOLD": "1000",
        },
        marker,
        str(tmp_path),
    )
    rng = random.Random(20261126)
    problems: list[str] = []
    try:
        await daemon.started()
        for _batch in range(10):
            calls = []
            for _ in range(20):
                if rng.random() < 0.6:
                    model, (prompt, expected) = "claude", rng.choice(sorted(CLI_FAULTS.items()))
                else:
                    model, (prompt, expected) = "cerebras", rng.choice(sorted(HTTP_FAULTS.items()))
                roll = rng.random()
                if roll < 0.45:
                    calls.append(_plain(daemon.url, model, prompt, expected, problems))
                else:
                    leave = rng.choice([0, 1]) if roll > 0.85 else None
                    calls.append(_stream(daemon.url, model, prompt, expected, problems, leave))
            results = await DeferredList(
                [_as_deferred(c) for c in calls],
                consumeErrors=True,
            )
            for ok, value in results:
                if not ok:
                    problems.append(f"client error: {value.getErrorMessage()}")

        async def settled():
            health = await health_of(daemon.url)
            queues = [health["queue"], health["queue"]["http"]]
            idle = all(q["active"] == 0 and q["pending"] == 0 for q in queues)
            return idle and processes_with_marker(marker) == [daemon.pid]

        assert await eventually(settled, timeout=15)
        assert (await health_of(daemon.url))["version"]
    finally:
        await daemon.stop()
        await fake.stop()
    assert problems == []


def _as_deferred(coroutine):
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(coroutine)


@pytest_twisted.ensureDeferred
async def test_sigterm_with_streams_in_flight(tmp_path, marker):
    """
    SIGTERM while streams run: each either finishes or ends with an error
    event within the drain limit, and the daemon exits cleanly with no
    child left.
    """
    cli_env = {
        "ANTHROPIC_API_KEY": "fake",
        "SHELLM_TEST_MARKER": marker,
        "FAKE_MODE": "from_prompt",
        "FAKE_DELAY": "0.2",
        "FAKE_CHUNKS": "5",
    }
    daemon = Daemon(
        {
            "SHELLM_CLAUDE_BIN": fake_cli("claude"),
            "SHELLM_CLAUDE_ENV": json.dumps(cli_env),
            "SHELLM_MAX_CONCURRENT": "4",
            "SHELLM_DRAIN_TIMEOUT": "1.5",
            "SHELLM_KILL_GRACE": "0.3",
        },
        marker,
        str(tmp_path),
    )
    await daemon.started()
    readers = []
    for prompt in ("mode:ok a", "mode:ok b", "mode:hang c", "mode:ignore_term d"):
        _, reader = await open_stream(
            daemon.url + "/completions/stream", {"model": "claude", "prompt": prompt, "fallback": False}
        )
        readers.append(reader)
    for reader in readers:
        await reader.next_frame()
    daemon.transport.signalProcess("TERM")
    finals = []
    for reader in readers:
        events = await reader.rest_data()
        finals.append(events[-1] if events else None)
    reason = await daemon.exited()
    assert reason.signal == 15
    assert [f and f.get("done") for f in finals] == [True] * 4
    assert "error" not in finals[0] and "error" not in finals[1]
    assert finals[2]["error"] and finals[3]["error"]
    assert processes_with_marker(marker) == []
