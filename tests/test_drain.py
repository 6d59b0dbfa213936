"""
SIGTERM as a client of the daemon sees it: requests already running may
finish within the drain limit; what still runs at the deadline (an HTTP
provider's stream included) ends with an error event and its usage is
recorded; a request that arrives on an open keep-alive connection after
SIGTERM is refused with a 503 and its connection is closed.
"""

from __future__ import annotations

import json
import re
import socket

import pytest_twisted
import treq
from twisted.internet import reactor

from tests.conftest import wait_for_no_processes
from tests.daemon import Daemon, eventually, open_stream
from tests.fakes.fake_openai_server import start_fake_openai


def read_response(sock: socket.socket) -> bytes:
    """
    One response with a Content-Length, read from a blocking socket (the
    daemon is another process; these reads take microseconds).
    """
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))
    while len(body) < length:
        body += sock.recv(65536)
    return data


def read_to_close(sock: socket.socket) -> bytes:
    """
    Everything until the server closes the connection.
    """
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest_twisted.ensureDeferred
async def test_sigterm_ends_http_streams_cleanly_and_refuses_keep_alive_requests(tmp_path, marker):
    """
    A Cerebras stream still running at the drain deadline ends with an
    error event (not a cut connection) and a usage row; a request sent after
    SIGTERM on a keep-alive connection gets a JSON 503 that says to retry,
    with C{Connection: close}.
    """
    fake, port = start_fake_openai(reactor)
    fake.chunks, fake.delay = 40, 0.25  # a ten-second stream
    env = {
        "CEREBRAS_API_KEY": "fake-key",
        "SHELLM_CEREBRAS_BASE_URL": fake.base_url,
        "SHELLM_DRAIN_TIMEOUT": "1.5",
    }
    daemon = Daemon(env, marker, str(tmp_path))
    keep_alive = None
    try:
        await daemon.started()
        # A keep-alive client: one request answered, the connection kept.
        keep_alive = socket.create_connection(("127.0.0.1", daemon.port), timeout=10)
        keep_alive.sendall(b"GET /health HTTP/1.1\r\nHost: shellm\r\n\r\n")
        assert read_response(keep_alive).startswith(b"HTTP/1.1 200")
        response, reader = await open_stream(daemon.url + "/completions/stream", {"model": "cerebras", "prompt": "x"})
        assert response.code == 200
        first = await reader.next_data()
        assert first["done"] is False
        daemon.transport.signalProcess("TERM")

        async def draining():
            return any("draining" in line for line in daemon.log_lines())

        assert await eventually(draining)
        late = b'{"model": "cerebras", "prompt": "x"}'
        keep_alive.sendall(
            b"POST /completions HTTP/1.1\r\nHost: shellm\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(late), late)
        )
        head, _, body = read_to_close(keep_alive).partition(b"\r\n\r\n")
        lines = head.decode().lower().splitlines()
        assert lines[0].startswith("http/1.1 503")
        assert "connection: close" in lines and "x-should-retry: true" in lines
        assert json.loads(body)["error"] == "provider_unavailable"
        rest = await reader.rest_data()
        assert rest[-1]["done"] is True and rest[-1]["error"] == "provider_unavailable"
        assert "shutting down" in rest[-1]["message"]
        assert reader.clean_end
        await daemon.exited()
    finally:
        await daemon.stop()
        if keep_alive is not None:
            keep_alive.close()
        await fake.stop()
    again = Daemon(env, marker, str(tmp_path))
    try:
        await again.started()
        usage = json.loads(await (await treq.get(again.url + "/usage?period=24h")).content())
        # The stream stopped at the deadline and the late request, both 503s.
        assert (usage["totals"]["requests"], usage["totals"]["errors"]) == (2, 2), usage
    finally:
        await again.stop()
    assert await wait_for_no_processes(marker) == []
