"""
The daemon as a user runs it: a real C{twistd -n shellm} on a loopback port,
real fake CLIs behind it, requests over TCP.
"""

from __future__ import annotations

import json
import socket

import pytest
import pytest_twisted
import treq

from tests.conftest import fake_cli, processes_with_marker, wait_for_no_processes
from tests.daemon import Daemon, eventually, health_of, open_stream

pytestmark = pytest.mark.slow  # real processes and daemons (the second stage of .ci/run)


def claude_env(marker, **fake):
    """
    Settings that make the fake claude the daemon's claude; the marker goes
    into the CLI's own environment so its processes can be found.
    """
    env = {
        "ANTHROPIC_API_KEY": "fake",
        "SHELLM_TEST_MARKER": marker,
        **{f"FAKE_{k.upper()}": str(v) for k, v in fake.items()},
    }
    return {"SHELLM_CLAUDE_BIN": fake_cli("claude"), "SHELLM_CLAUDE_ENV": json.dumps(env)}


def cli_running(record):
    """
    The fake CLI has started on a request (it records it; a health check's
    C{--version} does not).
    """

    async def check():
        return record.exists() and record.stat().st_size > 0

    return check


def assert_clean_signal_exit(reason):
    """
    twistd ends a signal-initiated shutdown by re-raising the signal, so the
    exit status says "terminated by SIGTERM", which systemd counts as clean.
    """
    assert reason.signal == 15, reason


async def post_json(url, body):
    response = await treq.post(url, json=body, timeout=30)
    return response, json.loads(await response.content())


@pytest_twisted.ensureDeferred
async def test_serves_completions_over_tcp_and_logs_json(tmp_path, marker):
    """
    The daemon answers /health and /completions on its port; its stdout is
    one JSON object per line, with an access line per request and never the
    prompt or the answer.
    """
    daemon = Daemon(claude_env(marker, text="The secret answer"), marker, str(tmp_path))
    try:
        await daemon.started()
        response, body = await post_json(
            daemon.url + "/completions",
            {"model": "claude", "prompt": "my private prompt", "system": "Be brief"},
        )
        assert response.code == 200
        assert body["content"] == "The secret answer"
        assert body["usage"] == {"input_tokens": 10, "output_tokens": 5}
        assert response.headers.getRawHeaders("x-request-id") == [body["request_id"]]
    finally:
        await daemon.stop()
    lines = daemon.log_lines()
    records = [json.loads(line) for line in lines]
    access = [r for r in records if r.get("path") == "/completions"]
    assert access and access[0]["status"] == 200 and access[0]["provider"] == "claude"
    text = "\n".join(lines)
    assert "my private prompt" not in text and "secret answer" not in text
    assert await wait_for_no_processes(marker) == []


@pytest_twisted.ensureDeferred
async def test_port_in_use_fails_start_up(tmp_path, marker):
    """
    When the listen port is taken, start-up fails with a non-zero exit and
    says why, instead of running without a listener.
    """
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        daemon = Daemon({"SHELLM_LISTEN": f"tcp:{port}:interface=127.0.0.1"}, marker, str(tmp_path))
        reason = await daemon.exited(timeout=15)
    assert reason.exitCode != 0
    assert "Address already in use" in daemon.protocol.output.decode()


@pytest_twisted.ensureDeferred
async def test_bad_setting_stops_start_up_naming_it(tmp_path, marker):
    """
    A bad value stops start-up with a message that names the setting.
    """
    daemon = Daemon({"SHELLM_MAX_CONCURRENT": "zero"}, marker, str(tmp_path))
    reason = await daemon.exited(timeout=15)
    assert reason.exitCode != 0
    assert "SHELLM_MAX_CONCURRENT" in daemon.protocol.output.decode()


@pytest_twisted.ensureDeferred
async def test_env_file_in_working_directory_is_read(tmp_path, marker):
    """
    Settings come from a .env file in the working directory when neither
    the environment nor an option sets them.
    """
    (tmp_path / ".env").write_text("SHELLM_MAX_CONCURRENT=7\n# comment\n")
    daemon = Daemon({}, marker, str(tmp_path))
    try:
        await daemon.started()
        response = await treq.get(daemon.url + "/health")
        body = json.loads(await response.content())
        assert body["queue"]["max_concurrent"] == 7
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_stream_events_arrive_while_the_cli_runs(tmp_path, marker):
    """
    Each delta reaches the client as soon as the CLI prints it: the first
    event is read while the fake CLI is still blocked before its second line.
    """
    gate = tmp_path / "gate"
    daemon = Daemon(claude_env(marker, text="one two three", chunks=3, gate=gate), marker, str(tmp_path))
    try:
        await daemon.started()
        response, reader = await open_stream(daemon.url + "/completions/stream", {"model": "claude", "prompt": "hi"})
        assert response.code == 200
        assert response.headers.getRawHeaders("content-type")[0].startswith("text/event-stream")
        first = await reader.next_data()
        assert first == {"content": "one ", "done": False}
        assert not gate.exists()  # the CLI has not written its second delta yet
        gate.write_text("go")
        events = [first] + await reader.rest_data()
        assert "".join(e["content"] for e in events) == "one two three"
        assert events[-1]["done"] is True and events[-1]["provider"] == "claude"
        assert events[-1]["usage"] == {"input_tokens": 10, "output_tokens": 5}
    finally:
        await daemon.stop()
    assert await wait_for_no_processes(marker) == []


@pytest_twisted.ensureDeferred
async def test_disconnect_mid_stream_kills_the_process_group(tmp_path, marker):
    """
    When the client goes away mid-stream, the CLI's whole process group is
    terminated (TERM, then KILL for one that ignores TERM) and the slot is
    free again.
    """
    record = tmp_path / "record.jsonl"
    daemon = Daemon(
        {
            **claude_env(marker, mode="ignore_term", record=record),
            "SHELLM_KILL_GRACE": "0.5",
            "SHELLM_MAX_CONCURRENT": "1",
        },
        marker,
        str(tmp_path),
    )
    try:
        await daemon.started()
        response, reader = await open_stream(daemon.url + "/completions/stream", {"model": "claude", "prompt": "hi"})
        await reader.next_frame()  # the opening comment
        assert await eventually(cli_running(record))
        assert len(processes_with_marker(marker)) > 1  # the daemon and the CLI
        reader.abort()
        assert await eventually(lambda: processes_with_marker(marker) == [daemon.pid])

        # The slot is freed once the daemon has reaped the child.
        async def slot_freed():
            return (await health_of(daemon.url))["queue"]["active"] == 0

        assert await eventually(slot_freed)
    finally:
        await daemon.stop()
    assert await wait_for_no_processes(marker) == []


@pytest_twisted.ensureDeferred
async def test_disconnect_while_queued_never_starts_a_process(tmp_path, marker):
    """
    A streaming request whose client leaves while it waits for a slot
    leaves the queue and never starts its CLI.
    """
    record = tmp_path / "record.jsonl"
    daemon = Daemon(
        {**claude_env(marker, mode="hang", record=record), "SHELLM_MAX_CONCURRENT": "1", "SHELLM_KILL_GRACE": "0.5"},
        marker,
        str(tmp_path),
    )
    try:
        await daemon.started()
        _, first = await open_stream(daemon.url + "/completions/stream", {"model": "claude", "prompt": "a"})
        await first.next_frame()
        _, second = await open_stream(daemon.url + "/completions/stream", {"model": "claude", "prompt": "b"})
        await second.next_frame()
        health = json.loads(await (await treq.get(daemon.url + "/health")).content())
        assert health["queue"]["pending"] == 1 and health["queue"]["active"] == 1
        second.abort()

        async def left_the_queue():
            return (await health_of(daemon.url))["queue"]["pending"] == 0

        assert await eventually(left_the_queue)

        async def first_cli_started():
            return record.exists()

        assert await eventually(first_cli_started)
        first.abort()

        # The semaphore hands a freed slot straight to a waiter: had the
        # second request still been queued, "active" would never read 0.
        async def all_idle():
            queue = (await health_of(daemon.url))["queue"]
            return queue["active"] == 0 and queue["pending"] == 0

        assert await eventually(all_idle)
        assert processes_with_marker(marker) == [daemon.pid]
        assert len(record.read_text().splitlines()) == 1
        assert json.loads(record.read_text())["stdin"] == "a"
    finally:
        await daemon.stop()
    assert await wait_for_no_processes(marker) == []


@pytest_twisted.ensureDeferred
async def test_failure_mid_stream_ends_with_an_error_event(tmp_path, marker):
    """
    A CLI that dies after its first delta ends the stream with an explicit
    error event, never a clean done.
    """
    daemon = Daemon(
        {**claude_env(marker, mode="hang"), "SHELLM_TIMEOUT": "1", "SHELLM_KILL_GRACE": "0.2"},
        marker,
        str(tmp_path),
    )
    try:
        await daemon.started()
        _, reader = await open_stream(daemon.url + "/completions/stream", {"model": "claude", "prompt": "x"})
        events = await reader.rest_data()
        assert events[-1]["done"] is True
        assert events[-1]["error"] == "timeout"
        assert "provider" not in events[-1] or events[-1].get("error")
    finally:
        await daemon.stop()
    assert await wait_for_no_processes(marker) == []


@pytest_twisted.ensureDeferred
async def test_sigterm_lets_in_flight_requests_finish(tmp_path, marker):
    """
    SIGTERM stops accepting, lets a running request finish within the drain
    limit, and exits 0 with no child left.
    """
    record = tmp_path / "record.jsonl"
    daemon = Daemon(claude_env(marker, delay="0.3", chunks=4, record=record), marker, str(tmp_path))
    await daemon.started()
    pending = treq.post(daemon.url + "/completions", json={"model": "claude", "prompt": "x"})
    assert await eventually(cli_running(record))
    daemon.transport.signalProcess("TERM")
    response = await pending
    body = json.loads(await response.content())
    assert response.code == 200 and body["content"] == "Hi! I am a fake model."
    reason = await daemon.exited()
    assert_clean_signal_exit(reason)
    assert await wait_for_no_processes(marker) == []


@pytest_twisted.ensureDeferred
async def test_sigterm_kills_what_outlives_the_drain_limit(tmp_path, marker):
    """
    A CLI still running when the drain limit passes is killed, group and
    all, and the daemon still exits cleanly.
    """
    record = tmp_path / "record.jsonl"
    daemon = Daemon(
        {
            **claude_env(marker, mode="ignore_term", record=record),
            "SHELLM_DRAIN_TIMEOUT": "0.5",
            "SHELLM_KILL_GRACE": "0.5",
        },
        marker,
        str(tmp_path),
    )
    await daemon.started()
    pending = treq.post(daemon.url + "/completions", json={"model": "claude", "prompt": "x"})
    assert await eventually(cli_running(record))
    daemon.transport.signalProcess("TERM")
    response = await pending
    body = json.loads(await response.content())
    assert response.code == 503 and body["error"] == "provider_unavailable"  # answered, not dropped
    assert "shutting down" in body["message"]
    reason = await daemon.exited()
    assert_clean_signal_exit(reason)
    assert await wait_for_no_processes(marker) == []


@pytest_twisted.ensureDeferred
async def test_kill_9_of_the_daemon_takes_its_clis_along(tmp_path, marker):
    """
    If the daemon is killed outright, the kernel's parent-death signal ends
    the CLIs it was running.
    """
    record = tmp_path / "record.jsonl"
    daemon = Daemon(
        {**claude_env(marker, mode="hang", record=record), "SHELLM_MAX_CONCURRENT": "4"}, marker, str(tmp_path)
    )
    await daemon.started()
    for prompt in "abcd":
        treq.post(daemon.url + "/completions", json={"model": "claude", "prompt": prompt}).addErrback(lambda f: None)

    async def four_running():
        return record.exists() and len(record.read_text().splitlines()) == 4

    assert await eventually(four_running, timeout=20)
    assert len(processes_with_marker(marker)) >= 5  # the daemon and its four CLIs
    await daemon.stop("KILL")
    assert await wait_for_no_processes(marker, timeout=2.0) == []


@pytest_twisted.ensureDeferred
async def test_malformed_form_body_gets_a_json_error(tmp_path, marker):
    """
    A body claiming to be multipart but malformed is answered by SheLLM as
    JSON (415), not by twisted.web's own form parser.
    """
    daemon = Daemon({}, marker, str(tmp_path))
    try:
        await daemon.started()
        response = await treq.post(
            daemon.url + "/completions",
            data=b"--x\r\ngarbage",
            headers={"content-type": "multipart/form-data; boundary=zzz"},
        )
        body = json.loads(await response.content())
        assert response.code == 415 and body["error"] == "unsupported_media_type"
    finally:
        await daemon.stop()
