"""
Fault injection: a real daemon under a mixed load in which CLIs hang, crash,
ignore TERM, leave grandchildren, print garbage or huge lines, upstreams
stall, cut the body or fail, and clients walk away.  Afterwards nothing may
be left running or held, and every answer must have been well-formed.
"""

from __future__ import annotations

import json
import os
import random

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.task import LoopingCall

from tests.conftest import alive, fake_cli, processes_with_marker, wait_for_no_processes
from tests.daemon import Daemon, eventually, health_of, open_fds, open_stream, parse_response, raw_connect
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
            "SHELLM_TIMEOUT": "2",  # room for a 3 MB line on a busy machine
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
    event within the drain limit (the watchdog kills nothing early: runs
    that finish in time do, the others get TERM then KILL), and the daemon
    exits cleanly with no child left, its watchdog included.
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
    [watchdog] = _watchdog_of(daemon.pid)
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
    # Reaped by the daemon itself before it exited.
    assert not alive(watchdog)
    assert any(f"watchdog {watchdog} stopped" in line for line in daemon.log_lines())


def _watchdog_of(daemon_pid: int) -> list[int]:
    """
    The daemon's watchdog process(es): its children running watchdog_main.
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == daemon_pid and b"watchdog_main" in cmdline:
            found.append(int(entry))
    return found


@pytest.mark.timeout(90)
@pytest_twisted.ensureDeferred
async def test_kill_9_leaves_no_process_and_no_scratch(tmp_path, marker):
    """
    After C{kill -9} of the daemon (no systemd to clean up), every process
    started for a CLI run (the CLI, a grandchild in its session, one that
    left the session) and the watchdog itself are gone within 2 s.  The
    run's scratch directory, left behind, is swept when the next daemon
    starts; nothing else in the temporary directory is touched.
    """
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    look_alike = tmp / "shellm-claude-abc123"
    look_alike.mkdir()
    record, grandchildren = tmp_path / "record.jsonl", tmp_path / "grandchildren"
    cli_env = {
        "ANTHROPIC_API_KEY": "fake",
        "SHELLM_TEST_MARKER": marker,
        "FAKE_MODE": "grandchild",
        "FAKE_GRANDCHILDREN": "2",
        "FAKE_GRANDCHILD_PID": str(grandchildren),
        # Never created: the CLI waits after its first delta.
        "FAKE_GATE": str(tmp_path / "never"),
        "FAKE_RECORD": str(record),
    }
    env = {
        "SHELLM_CLAUDE_BIN": fake_cli("claude"),
        "SHELLM_CLAUDE_ENV": json.dumps(cli_env),
        "TMPDIR": str(tmp),
        "SHELLM_TIMEOUT": "60",
    }
    (tmp_path / "first").mkdir()
    daemon = Daemon(env, marker, str(tmp_path / "first"))
    await daemon.started()
    _, reader = await open_stream(
        daemon.url + "/completions/stream", {"model": "claude", "prompt": "hi", "fallback": False}
    )
    assert (await reader.next_data()).get("done") is not True

    async def grandchildren_started():
        return grandchildren.exists() and len(grandchildren.read_text().split()) == 2

    assert await eventually(grandchildren_started, timeout=10)
    run = json.loads(record.read_text().splitlines()[0])
    scratch = os.path.dirname(run["cwd"])
    watchdogs = _watchdog_of(daemon.pid)
    victims = [run["pid"], *map(int, grandchildren.read_text().split()), *watchdogs]
    assert len(watchdogs) == 1 and all(alive(pid) for pid in victims)
    assert os.getsid(victims[2]) != run["sid"]  # the one that left the session

    daemon.transport.signalProcess("KILL")
    killed = reactor.seconds()

    async def all_gone():
        return not any(alive(pid) for pid in victims)

    assert await eventually(all_gone, timeout=2.0, interval=0.02), [p for p in victims if alive(p)]
    assert reactor.seconds() - killed <= 2.2
    await daemon.exited()
    assert os.path.isdir(scratch)  # a daemon killed with SIGKILL cannot remove it

    (tmp_path / "second").mkdir()
    second = Daemon(env, marker, str(tmp_path / "second"))
    try:
        await second.started()

        async def swept():
            return not os.path.exists(scratch)

        assert await eventually(swept, timeout=5)
        assert look_alike.is_dir()
    finally:
        await second.stop()
    assert await wait_for_no_processes(marker) == []


@pytest_twisted.ensureDeferred
async def test_trickling_clients_are_cut_at_the_deadline(tmp_path, marker):
    """
    200 clients each sending a header byte every 0.5 s (so the idle timer
    never fires) are all answered 408 and closed at the request deadline,
    none much before it; meanwhile /health answers, and afterwards the
    daemon holds no more descriptors than before.
    """
    deadline = 2.0
    daemon = Daemon({"SHELLM_REQUEST_DEADLINE": str(deadline)}, marker, str(tmp_path))
    try:
        await daemon.started()
        before = open_fds(daemon.pid)
        connecting = reactor.seconds()
        clients = await gatherResults([Deferred.fromCoroutine(raw_connect(daemon.port)) for _ in range(200)])
        opened = reactor.seconds()
        for client in clients:
            client.send(b"POST /completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")

        drips = []

        def drip():
            drips.append(None)
            for client in clients:
                client.send(b"x")

        dripping = LoopingCall(drip)
        dripping.clock = reactor
        dripping.start(0.5, now=False)
        try:
            assert await eventually(lambda: len(drips) >= 2)  # a second of trickling
            assert (await treq.get(daemon.url + "/health", timeout=5)).code == 200
            answers = await gatherResults([client.closed for client in clients])
        finally:
            dripping.stop()
        # Each deadline starts when the daemon accepts: after `connecting`.
        assert min(client.closed_at - connecting for client in clients) > deadline - 0.1
        assert max(client.closed_at - opened for client in clients) < deadline + 3
        for raw in answers:
            status, headers, body = parse_response(raw)
            assert status == 408
            assert json.loads(body)["error"] == "request_timeout"
        assert (await health_of(daemon.url))["version"]
        assert await eventually(_fds_back_to(daemon.pid, before), timeout=5)
    finally:
        await daemon.stop()


def _fds_back_to(pid: int, before: int):
    async def check():
        return open_fds(pid) <= before + 2  # a pooled /health connection or two

    return check


BAD_HEADER_REQUESTS = {
    # request: (status, error code or None)
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Request-Id: \xff\r\nConnection: close\r\n\r\n": (200, None),
    b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\r\nConnection: close\r\n\r\n": (
        401,
        "auth_required",
    ),
    b"GET /providers HTTP/1.1\r\nHost: x\r\nx-api-key: a\r\nx-api-key: b\r\nConnection: close\r\n\r\n": (
        400,
        "invalid_request",
    ),
    b"POST /completions HTTP/1.1\r\nHost: x\r\nContent-Type: \xff\r\nContent-Length: 2\r\n"
    b"Connection: close\r\n\r\n{}": (415, "unsupported_media_type"),
    b"GET /health HTTP/1.1\r\nHost: \xff\r\nConnection: close\r\n\r\n": (400, "invalid_request"),
    b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n": (431, "headers_too_large"),
    b"NOT HTTP\r\n\r\n": (400, "invalid_request"),
}


@pytest_twisted.ensureDeferred
async def test_bad_header_bytes_are_answered_and_closed(tmp_path, marker):
    """
    350 requests with header bytes that are not UTF-8, a key header sent
    twice, oversized or malformed headers: every one is answered with JSON
    and its connection closed by the daemon, nothing is logged as critical,
    and the daemon's descriptors do not grow.
    """
    daemon = Daemon({}, marker, str(tmp_path))
    problems: list[str] = []
    try:
        await daemon.started()
        before = open_fds(daemon.pid)

        async def one(raw: bytes) -> None:
            status, code = BAD_HEADER_REQUESTS[raw]
            client = await raw_connect(daemon.port)
            client.send(raw)
            timeout = reactor.callLater(10, client.close)
            answer = await client.closed
            if not timeout.active():
                problems.append(f"{raw[:40]!r}: not closed by the daemon")
                return
            timeout.cancel()
            got, headers, body = parse_response(answer)
            error = json.loads(body).get("error") if headers.get("content-type") == "application/json" else "not JSON"
            if isinstance(error, dict):  # the OpenAI dialect's envelope, on /v1/
                error = error["code"]
            if got != status or (code and error != code):
                problems.append(f"{raw[:40]!r}: {got} {error}")

        requests = sorted(BAD_HEADER_REQUESTS) * 50
        for start in range(0, len(requests), 50):
            await gatherResults([Deferred.fromCoroutine(one(raw)) for raw in requests[start : start + 50]])
        assert (await health_of(daemon.url))["version"]
        assert await eventually(_fds_back_to(daemon.pid, before), timeout=5)
    finally:
        await daemon.stop()
    assert problems == []
    assert not [line for line in daemon.log_lines() if '"level": "critical"' in line]


@pytest_twisted.ensureDeferred
async def test_connections_past_the_cap_are_closed_at_once(tmp_path, marker):
    """
    With SHELLM_MAX_CONNECTIONS=20, at most 20 idle connections are held
    (the start-up check may keep one of them) and the rest are closed as
    soon as they connect, unanswered, with one warning; once the held ones
    go, the daemon answers again.
    """
    daemon = Daemon({"SHELLM_MAX_CONNECTIONS": "20"}, marker, str(tmp_path))
    try:
        await daemon.started()
        clients = [await raw_connect(daemon.port) for _ in range(25)]
        await gatherResults([client.closed for client in clients[20:]])
        probe = await raw_connect(daemon.port)  # refused at once: a round trip after the others
        await probe.closed
        held = [client for client in clients if not client.closed.called]
        assert 18 <= len(held) <= 20
        assert all(client.received == b"" for client in clients if client.closed.called)
        for client in held:
            client.close()
        await gatherResults([client.closed for client in held])
        assert await eventually(lambda: _health_code(daemon.url), timeout=5) == 200
    finally:
        await daemon.stop()
    warnings = [line for line in daemon.log_lines() if "connection limit reached" in line]
    assert len(warnings) == 1


async def _health_code(url: str) -> int:
    try:
        return (await treq.get(url + "/health", timeout=2)).code
    except Exception:
        return 0
