"""
Running one CLI: stdout line by line, bounded output, a timeout, and
TERM-then-KILL for its whole process group.  How the process is started
(its own session, the parent-death signal) is L{shellm.providers.spawner}'s.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping

from attrs import define, frozen
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

#: The longest stdout line kept, in bytes.  Real CLIs print single JSON lines of
#: a few hundred kilobytes (a whole answer); anything past this is skipped.
MAX_LINE_BYTES = 4 * 1024 * 1024
#: All stdout of one run, in bytes; past this the run is killed.
MAX_STDOUT_BYTES = 64 * 1024 * 1024
#: Only the end of stderr is kept: enough to classify a failure.
STDERR_TAIL_BYTES = 16 * 1024


@frozen
class CliCommand:
    """
    Exactly what to run: an absolute executable, its argv, its whole
    environment, its working directory, and the bytes for its stdin.
    """

    executable: str
    args: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str
    stdin: bytes = b""
    #: Leave stdin open after writing C{stdin}, for a server that would
    #: exit at end of input before answering (C{codex app-server}); such a
    #: run ends by its own exit, a cancel or the timeout.
    keep_stdin_open: bool = False


@frozen
class CliExit:
    """
    How a run ended.  C{exit_code} is L{None} when a signal ended it.
    """

    exit_code: int | None
    signal: int | None
    stderr_tail: str
    timed_out: bool
    output_overflow: bool
    skipped_lines: int


@define
class CliRun:
    """
    A running CLI.

    @ivar result: fires with the L{CliExit} once the child is reaped and its
        output read; cancelling it terminates the process group.
    @ivar finished: fires (never fails) once the child is reaped and every
        pipe is closed, also after a cancellation: the moment the run's
        resources, such as its queue slot, may be reused.
    """

    pid: int
    result: Deferred
    finished: Deferred


class CliProcessProtocol(ProcessProtocol):
    """
    Feeds stdout to C{on_line} one decoded line at a time as it arrives, keeps
    the tail of stderr, and enforces the timeout and output caps.
    """

    log = Logger()

    def __init__(self, reactor, spawner, on_line, stdin, timeout, kill_grace, keep_stdin_open=False):
        self._reactor = reactor
        self._spawner = spawner
        self._on_line = on_line
        self._stdin = stdin
        self._keep_stdin_open = keep_stdin_open
        self._kill_grace = kill_grace
        self._buffer = bytearray()
        self._discarding = False
        self._stdout_bytes = 0
        self._skipped = 0
        self._stderr = bytearray()
        self._timed_out = False
        self._overflow = False
        self._line_error: BaseException | None = None
        self._terminating = False
        self._kill_timer = None
        self._pipe_timer = None
        self._exited = None
        self.pid: int | None = None
        self.result = Deferred(lambda d: self.terminate())
        self.finished = Deferred()
        self._timeout_timer = reactor.callLater(timeout, self._time_out)

    # -- ProcessProtocol

    def connectionMade(self):
        self.pid = self.transport.pid
        if self._stdin:
            self.transport.write(self._stdin)
        if not self._keep_stdin_open:
            self.transport.closeStdin()

    def outReceived(self, data: bytes):
        self._stdout_bytes += len(data)
        if self._stdout_bytes > MAX_STDOUT_BYTES:
            if not self._overflow:
                self._overflow = True
                self.terminate()
            return
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                self._append(data[start:])
                return
            self._append(data[start:end])
            self._end_line()
            start = end + 1

    def errReceived(self, data: bytes):
        self._stderr += data
        if len(self._stderr) > STDERR_TAIL_BYTES:
            del self._stderr[: len(self._stderr) - STDERR_TAIL_BYTES]

    def processExited(self, reason):
        self._exited = reason.value
        self._cancel_timers()
        # The CLI is gone; anything left in its session is an orphan.
        self._spawner.signal_group(self.pid, signal.SIGKILL)
        # A process that left the session may still hold our pipes open;
        # do not wait for it forever.
        self._pipe_timer = self._reactor.callLater(max(self._kill_grace, 1.0), self.transport.loseConnection)

    def processEnded(self, reason):
        if self._exited is None:
            self._exited = reason.value
        self._cancel_timers()
        if self._buffer and not self._discarding:
            self._deliver(bytes(self._buffer))
        self._buffer.clear()
        value = self._exited
        code = getattr(value, "exitCode", None)
        signum = getattr(value, "signal", None)
        outcome = CliExit(
            exit_code=code if signum is None else None,
            signal=signum,
            stderr_tail=bytes(self._stderr).decode("utf-8", "replace"),
            timed_out=self._timed_out,
            output_overflow=self._overflow,
            skipped_lines=self._skipped,
        )
        # Resources first, so whoever reads the result sees the slot free.
        self.finished.callback(outcome)
        if not self.result.called:
            if self._line_error is not None:
                self.result.errback(self._line_error)
            else:
                self.result.callback(outcome)

    # -- termination

    def terminate(self) -> None:
        """
        TERM the process group now and KILL it after the grace period.
        """
        if self._terminating or self._exited is not None or self.pid is None:
            return
        self._terminating = True
        self._spawner.signal_group(self.pid, signal.SIGTERM)
        self._kill_timer = self._reactor.callLater(
            self._kill_grace, self._spawner.signal_group, self.pid, signal.SIGKILL
        )

    def _time_out(self):
        self._timeout_timer = None
        self._timed_out = True
        self.terminate()

    def _cancel_timers(self):
        for name in ("_timeout_timer", "_kill_timer", "_pipe_timer"):
            timer = getattr(self, name)
            if timer is not None and timer.active():
                timer.cancel()
            setattr(self, name, None)

    # -- lines

    def _append(self, chunk: bytes):
        if self._discarding or not chunk:
            return
        if len(self._buffer) + len(chunk) > MAX_LINE_BYTES:
            self._buffer.clear()
            self._discarding = True
            self._skipped += 1
            return
        self._buffer += chunk

    def _end_line(self):
        if self._discarding:
            self._discarding = False
        else:
            self._deliver(bytes(self._buffer))
        self._buffer.clear()

    def _deliver(self, raw: bytes):
        if self._line_error is not None:
            return
        try:
            self._on_line(raw.decode("utf-8", "replace"))
        except Exception as e:
            # The parser gave up on this output: stop the run, report why.
            self._line_error = e
            self.terminate()


class CliRunner:
    """
    Starts CLIs and keeps track of the ones still running, so that shutdown
    can wait for them and then kill what is left.
    """

    log = Logger()

    def __init__(self, reactor, spawner, timeout: float, kill_grace: float):
        self._reactor = reactor
        self._spawner = spawner
        self.timeout = timeout
        self.kill_grace = kill_grace
        self.live: set[CliProcessProtocol] = set()

    def run(
        self,
        command: CliCommand,
        on_line: Callable[[str], None],
        timeout: float | None = None,
    ) -> CliRun:
        """
        Start C{command}; C{on_line} gets each stdout line (without its
        newline) as soon as it is complete.  An exception from C{on_line}
        ends the run and becomes its result's failure.

        @raise OSError: if the process could not be started.
        """
        protocol = CliProcessProtocol(
            self._reactor,
            self._spawner,
            on_line,
            command.stdin,
            self.timeout if timeout is None else timeout,
            self.kill_grace,
            keep_stdin_open=command.keep_stdin_open,
        )
        try:
            self._spawner.spawn(protocol, command.executable, command.args, command.env, command.cwd)
        except BaseException:
            protocol._cancel_timers()
            raise
        self.live.add(protocol)
        protocol.finished.addBoth(self._forget, protocol)
        return CliRun(protocol.pid, protocol.result, protocol.finished)

    def _forget(self, result, protocol):
        self.live.discard(protocol)
        return result

    def terminate_all(self) -> Deferred:
        """
        TERM every running CLI (KILL after the grace); fires when all are reaped.
        """
        waiting = [p.finished for p in list(self.live)]
        for protocol in list(self.live):
            protocol.terminate()
        return gatherResults(waiting, consumeErrors=True)
