"""
A real C{twistd -n shellm} in a child process, and a streaming HTTP client
that reads server-sent events one at a time, for the integration tests.
"""

from __future__ import annotations

import json
import os
import socket
import sys

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.web.client import ResponseDone


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def eventually(check, timeout: float = 10.0, interval: float = 0.05):
    """
    Await C{check()} (a coroutine function) until it returns something true;
    return its last result.
    """
    waited = 0.0
    while True:
        result = await check()
        if result or waited >= timeout:
            return result
        await sleep(interval)
        waited += interval


async def health_of(url: str) -> dict:
    response = await treq.get(url + "/health")
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
        waited = 0.0
        while waited < timeout:
            if self.protocol.ended.called:
                raise AssertionError("daemon exited:\n" + self.protocol.output.decode())
            try:
                response = await treq.get(self.url + "/health", timeout=2)
                await response.content()
                if response.code == 200:
                    return
            except Exception:
                pass
            await sleep(0.1)
            waited += 0.1
        raise AssertionError("daemon did not start:\n" + self.protocol.output.decode())

    async def stop(self, signal: str = "TERM", timeout: float = 20.0):
        if not self.protocol.ended.called:
            self.transport.signalProcess(signal)
        return await self.exited(timeout)

    async def exited(self, timeout: float = 20.0):
        waited = 0.0
        while not self.protocol.ended.called and waited < timeout:
            await sleep(0.05)
            waited += 0.05
        if not self.protocol.ended.called:
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
