"""
A real C{twistd -n shellm} in a child process, a streaming HTTP client
that reads server-sent events one at a time, and the tests' one way to wait
for something (L{eventually}, L{wait_until}: a bounded poll, never a fixed
sleep), for the integration tests.
"""

from __future__ import annotations

import inspect
import json
import os
import socket
import sys
import time

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.web.client import ResponseDone


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


POLL_INTERVAL = 0.05


async def eventually(check, timeout: float = 10.0, interval: float = POLL_INTERVAL):
    """
    Call C{check()} (a plain or a coroutine function) on the real reactor
    until it returns something true, for at most C{timeout} seconds; return
    its last result, so C{assert await eventually(...)} fails on time-out.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result or time.monotonic() >= deadline:
            return result
        await deferLater(reactor, interval, lambda: None)


def wait_until(predicate, timeout: float = 20.0, what: str = "condition", interval: float = POLL_INTERVAL):
    """
    The blocking L{eventually}, for tests that drive subprocesses without a
    reactor: return C{predicate()}'s first true result.

    @raise AssertionError: naming C{what}, after C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


async def health_of(url: str, key: str | None = None) -> dict:
    """
    C{/health} in full when auth is off or C{key} is a client's key; the
    short form for a load balancer otherwise.
    """
    response = await treq.get(url + "/health", headers={"x-api-key": key} if key else None)
    return json.loads(await response.content())


class DaemonProtocol(ProcessProtocol):
    def __init__(self):
        self.output = bytearray()
        self.ended = Deferred()

    def outReceived(self, data):
        self.output += data

    def errReceived(self, data):
        self.output += data

    def processEnded(self, reason):
        self.ended.callback(reason.value)


class Daemon:
    """
    One daemon on a free loopback port, with C{env} added to a minimal
    environment (plus C{SHELLM_TEST_MARKER} so leftovers can be found).
    """

    def __init__(self, env: dict, marker: str, cwd: str, args=()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.protocol = DaemonProtocol()
        path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
        full_env = {
            "PATH": path,
            "HOME": os.environ.get("HOME", "/root"),
            "SHELLM_TEST_MARKER": marker,
            "SHELLM_LISTEN": f"tcp:{self.port}:interface=127.0.0.1",
            "PYTHONPATH": os.pathsep.join(sys.path),
            # Keep tests away from the operator's real CLIs.
            "SHELLM_CLAUDE_BIN": "/nonexistent/claude",
            "SHELLM_GEMINI_BIN": "/nonexistent/gemini",
            "SHELLM_CODEX_BIN": "/nonexistent/codex",
            "SHELLM_DRAIN_TIMEOUT": "3",
            "SHELLM_DB": os.path.join(cwd, "shellm.db"),
            "SHELLM_GLOBAL_RPM": "1000",
            # No codex rate-limit probe (an extra child after codex runs)
            # unless a test asks for it.
            "SHELLM_CODEX_QUOTA_INTERVAL": "0",
            **env,
        }
        argv = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "shellm",
            *args,
        ]
        self.transport = reactor.spawnProcess(self.protocol, sys.executable, argv, env=full_env, path=cwd)

    @property
    def pid(self) -> int:
        return self.transport.pid

    def log_lines(self) -> list[str]:
        return self.protocol.output.decode("utf-8", "replace").splitlines()

    async def started(self, timeout: float = 15.0) -> None:

        async def answers() -> bool:
            if self.protocol.ended.called:
                raise AssertionError("daemon exited:\n" + self.protocol.output.decode())
            try:
                response = await treq.get(self.url + "/health", timeout=2)
                await response.content()
            except Exception:
                return False
            return response.code == 200

        if not await eventually(answers, timeout, interval=0.1):
            raise AssertionError("daemon did not start:\n" + self.protocol.output.decode())

    async def stop(self, signal: str = "TERM", timeout: float = 20.0):
        if not self.protocol.ended.called:
            self.transport.signalProcess(signal)
        return await self.exited(timeout)

    async def exited(self, timeout: float = 20.0):
        if not await eventually(lambda: self.protocol.ended.called, timeout):
            self.transport.signalProcess("KILL")
            raise AssertionError("daemon did not exit in time:\n" + self.protocol.output.decode())
        return await self.protocol.ended


class EventReader(Protocol):
    """
    Reads an SSE response body and hands out frames one by one, as they
    arrive; C{abort} drops the connection like a client that went away.
    """

    def __init__(self):
        self._buffer = b""
        self._frames: list[bytes] = []
        self._waiting: list[Deferred] = []
        self.ended = Deferred()
        self.clean_end = None

    def dataReceived(self, data):
        self._buffer += data
        while b"\n\n" in self._buffer:
            frame, self._buffer = self._buffer.split(b"\n\n", 1)
            self._frames.append(frame)
        self._wake()

    def connectionLost(self, reason):
        self.clean_end = bool(reason.check(ResponseDone))
        self.ended.callback(None)
        self._wake()

    def _wake(self):
        while self._waiting and (self._frames or self.ended.called):
            d = self._waiting.pop(0)
            d.callback(self._frames.pop(0) if self._frames else None)

    def next_frame(self) -> Deferred:
        d = Deferred()
        self._waiting.append(d)
        self._wake()
        return d

    async def next_data(self):
        """
        The next C{data:} frame as JSON (comments skipped), or L{None} at the end.
        """
        while True:
            frame = await self.next_frame()
            if frame is None:
                return None
            for line in frame.decode().splitlines():
                if line.startswith("data: "):
                    return json.loads(line[6:])

    async def rest_data(self) -> list:
        """
        Every C{data:} frame still to come, as JSON, once the stream ends.
        """
        events = []
        while (event := await self.next_data()) is not None:
            events.append(event)
        return events

    def abort(self):
        self.transport.stopProducing()


async def open_stream(url: str, body: dict) -> tuple[object, EventReader]:
    response = await treq.post(url, json=body, unbuffered=True)
    reader = EventReader()
    response.deliverBody(reader)
    return response, reader


class RawConnection(Protocol):
    """
    A client connection that writes exactly the bytes it is given and keeps
    everything the server sends; C{closed} fires with it when the
    connection ends, and C{closed_at} says when.
    """

    def __init__(self):
        self.received = b""
        self.closed = Deferred()
        self.closed_at: float | None = None

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.closed_at = reactor.seconds()
        self.closed.callback(self.received)

    def send(self, data: bytes) -> None:
        if self.closed_at is None:
            self.transport.write(data)

    def close(self) -> None:
        self.transport.loseConnection()


async def raw_connect(port: int) -> RawConnection:
    return await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), RawConnection())


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def parse_response(raw: bytes) -> tuple[int, dict, bytes]:
    """
    Status, headers (lower-case names) and body (de-chunked) of the one
    response in C{raw}.
    """
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        chunks, rest = [], body
        while True:
            size, _, rest = rest.partition(b"\r\n")
            if int(size, 16) == 0:
                break
            chunks.append(rest[: int(size, 16)])
            rest = rest[int(size, 16) + 2 :]
        body = b"".join(chunks)
    return int(status_line.split()[1]), headers, body
