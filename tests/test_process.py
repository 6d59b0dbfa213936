"""
Unit tests of L{shellm.providers.process.CliProcessProtocol} and L{CliRunner}: time is
a L{Clock}, and the "process" is a fake spawner that records what was
started and which signals its group received.  No real process runs.
"""

from __future__ import annotations

import signal

import pytest
from twisted.internet.defer import CancelledError
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from shellm.providers.process import (
    MAX_LINE_BYTES,
    MAX_STDOUT_BYTES,
    STDERR_TAIL_BYTES,
    CliCommand,
    CliExit,
    CliRunner,
)

PID = 4242
TIMEOUT = 30.0
GRACE = 5.0


class FakeTransport:
    """
    The process transport a protocol talks to; records everything in order.
    """

    def __init__(self, pid: int):
        self.pid = pid
        self.calls: list[tuple] = []

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def closeStdin(self) -> None:
        self.calls.append(("closeStdin",))

    def loseConnection(self) -> None:
        self.calls.append(("loseConnection",))


class FakeSpawner:
    """
    Stands in for L{shellm.providers.spawner.SessionSpawner}: "starts" a process by
    connecting the protocol to a L{FakeTransport}, and records group signals.
    """

    def __init__(self, fail: BaseException | None = None):
        self.fail = fail
        self.spawned: list[dict] = []
        self.signals: list[tuple[int, int]] = []
        self._next_pid = PID

    def spawn(self, protocol, executable, args, env, path):
        if self.fail is not None:
            raise self.fail
        transport = FakeTransport(self._next_pid)
        self._next_pid += 1
        self.spawned.append(
            dict(protocol=protocol, transport=transport, executable=executable, args=args, env=env, path=path)
        )
        protocol.makeConnection(transport)
        return transport

    def signal_group(self, pid: int, signum: int) -> None:
        self.signals.append((pid, signum))

    @property
    def protocol(self):
        return self.spawned[-1]["protocol"]

    @property
    def transport(self):
        return self.spawned[-1]["transport"]


def command(stdin: bytes = b"") -> CliCommand:
    return CliCommand(
        executable="/usr/bin/fake-cli",
        args=("fake-cli", "-p"),
        env={"PATH": "/usr/bin", "HOME": "/home/svc"},
        cwd="/tmp/scratch/work",
        stdin=stdin,
    )


def exited(code: int = 0, signum: int | None = None) -> Failure:
    if code == 0 and signum is None:
        return Failure(ProcessDone(0))
    return Failure(ProcessTerminated(exitCode=None if signum else code, signal=signum))


def end(protocol, code: int = 0, signum: int | None = None) -> None:
    """
    What the reactor does when the child goes away: processExited when it is
    reaped, processEnded once its pipes are closed too.
    """
    protocol.processExited(exited(code, signum))
    protocol.processEnded(exited(code, signum))


def outcome(d):
    """
    The result of an already-fired Deferred (a value, or the Failure).
    """
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def spawner():
    return FakeSpawner()


@pytest.fixture
def runner(clock, spawner):
    return CliRunner(clock, spawner, timeout=TIMEOUT, kill_grace=GRACE)


def start(runner, stdin=b"", timeout=None):
    lines: list[str] = []
    run = runner.run(command(stdin), lines.append, timeout=timeout)
    return run, lines


# -- starting


def test_spawns_the_command_exactly(runner, spawner):
    """
    The executable, argv, environment and working directory of the command
    reach the spawner unchanged, and the run reports the child's pid.
    """
    run, _ = start(runner)
    [spawned] = spawner.spawned
    assert spawned["executable"] == "/usr/bin/fake-cli"
    assert list(spawned["args"]) == ["fake-cli", "-p"]
    assert dict(spawned["env"]) == {"PATH": "/usr/bin", "HOME": "/home/svc"}
    assert spawned["path"] == "/tmp/scratch/work"
    assert run.pid == PID


def test_stdin_written_then_closed(runner, spawner):
    """
    The stdin bytes are written in full and stdin is closed right after, so a
    CLI that reads its prompt to EOF does not wait for more.
    """
    prompt = "say hi — ünïcode\n".encode()
    start(runner, stdin=prompt)
    assert spawner.transport.calls == [("write", prompt), ("closeStdin",)]


def test_empty_stdin_still_closed(runner, spawner):
    """
    With nothing to send, stdin is still closed (and nothing written).
    """
    start(runner, stdin=b"")
    assert spawner.transport.calls == [("closeStdin",)]


def test_spawn_failure_raises_and_leaves_no_timer(clock, spawner):
    """
    When the process cannot be started the OSError reaches the caller, no
    timeout stays scheduled, and nothing counts as running.
    """
    spawner.fail = OSError(2, "No such file or directory")
    runner = CliRunner(clock, spawner, timeout=TIMEOUT, kill_grace=GRACE)
    with pytest.raises(OSError):
        runner.run(command(), lambda line: None)
    assert clock.getDelayedCalls() == []
    assert runner.live == set()


# -- stdout lines


def test_lines_split_across_chunks(runner, spawner):
    """
    stdout is split on newlines whatever the chunk boundaries; each line is
    handed over (without its newline) as soon as it is complete, and a final
    unterminated line is delivered when the process ends.
    """
    run, lines = start(runner)
    protocol = spawner.protocol
    protocol.outReceived(b'{"a"')
    assert lines == []
    protocol.outReceived(b':1}\nsec')
    assert lines == ['{"a":1}']
    protocol.outReceived(b"ond")
    protocol.outReceived(b"\nthird\nfou")
    assert lines == ['{"a":1}', "second", "third"]
    protocol.outReceived(b"rth")
    end(protocol)
    assert lines == ['{"a":1}', "second", "third", "fourth"]
    result = outcome(run.result)
    assert isinstance(result, CliExit)
    assert result.exit_code == 0 and result.signal is None


def test_multibyte_character_split_across_chunks(runner, spawner):
    """
    A UTF-8 character cut in two (or three) by chunk boundaries is decoded
    whole: lines are decoded only once complete.
    """
    run, lines = start(runner)
    protocol = spawner.protocol
    for chunk in (b"caf\xc3", b"\xa9 \xe2", b"\x82", b"\xac ok\n", b"\xf0\x9f", b"\x8e\x89\n"):
        protocol.outReceived(chunk)
    end(protocol)
    assert lines == ["café € ok", "🎉"]
    assert not any("\ufffd" in line for line in lines)


def test_one_byte_at_a_time(runner, spawner):
    """
    A CLI that writes a single byte per chunk still yields exactly its lines.
    """
    run, lines = start(runner)
    protocol = spawner.protocol
    for byte in "Grüße\n世界\n".encode():
        protocol.outReceived(bytes([byte]))
    end(protocol)
    assert lines == ["Grüße", "世界"]


def test_invalid_utf8_is_replaced_not_fatal(runner, spawner):
    """
    Bytes that are not UTF-8 become U+FFFD; the line and the ones after it
    are still delivered and the run succeeds.
    """
    run, lines = start(runner)
    protocol = spawner.protocol
    protocol.outReceived(b"ok \xff\xfe end\nnext\n")
    end(protocol)
    assert lines == ["ok \ufffd\ufffd end", "next"]
    result = outcome(run.result)
    assert isinstance(result, CliExit) and result.exit_code == 0


def test_line_of_exactly_max_bytes_is_kept(runner, spawner):
    """
    A line of exactly MAX_LINE_BYTES is still delivered (real CLIs print
    whole answers as one large JSON line).
    """
    run, lines = start(runner)
    protocol = spawner.protocol
    protocol.outReceived(b"y" * (MAX_LINE_BYTES - 10))
    protocol.outReceived(b"y" * 10 + b"\n")
    end(protocol)
    assert len(lines) == 1 and len(lines[0]) == MAX_LINE_BYTES
    assert outcome(run.result).skipped_lines == 0


def test_overlong_line_is_skipped_and_next_delivered(runner, spawner):
    """
    A line longer than MAX_LINE_BYTES (arriving over several chunks) is
    skipped and counted in skipped_lines; the line after it, even in the
    same chunk as the overlong line's end, is delivered, and the run is not
    killed for it.
    """
    run, lines = start(runner)
    protocol = spawner.protocol
    protocol.outReceived(b"first\n")
    chunk = b"x" * (1024 * 1024)
    for _ in range(MAX_LINE_BYTES // len(chunk)):
        protocol.outReceived(chunk)
    protocol.outReceived(b"xxx\nnext\n")
    protocol.outReceived(b"last\n")
    end(protocol)
    assert lines == ["first", "next", "last"]
    result = outcome(run.result)
    assert result.skipped_lines == 1
    assert result.exit_code == 0
    assert spawner.signals == [(PID, signal.SIGKILL)]  # only the orphan sweep


def test_overlong_unterminated_last_line_is_not_delivered(runner, spawner):
    """
    An overlong line that the process never terminated is dropped at the end
    too, not delivered truncated.
    """
    run, lines = start(runner)
    protocol = spawner.protocol
    protocol.outReceived(b"ok\n")
    protocol.outReceived(b"z" * (MAX_LINE_BYTES + 1))
    end(protocol)
    assert lines == ["ok"]
    assert outcome(run.result).skipped_lines == 1


def test_stdout_overflow_terminates(runner, spawner, clock):
    """
    Past MAX_STDOUT_BYTES of stdout the process group gets TERM (and KILL
    after the grace), nothing more is read, and the result reports
    output_overflow.
    """
    run, lines = start(runner)
    protocol = spawner.protocol
    line = b"a" * (1024 * 1024 - 1) + b"\n"
    for _ in range(MAX_STDOUT_BYTES // len(line)):
        protocol.outReceived(line)
    assert spawner.signals == []
    delivered = len(lines)
    protocol.outReceived(b"over the limit\n")
    assert spawner.signals == [(PID, signal.SIGTERM)]
    protocol.outReceived(b"more\n")
    assert len(lines) == delivered
    assert "more" not in lines and "over the limit" not in lines
    clock.advance(GRACE)
    assert spawner.signals == [(PID, signal.SIGTERM), (PID, signal.SIGKILL)]
    end(protocol, signum=signal.SIGKILL)
    result = outcome(run.result)
    assert result.output_overflow is True
    assert result.timed_out is False
    assert clock.getDelayedCalls() == []


# -- timeout, cancellation, reaping


def test_timeout_terms_then_kills_the_group(runner, spawner, clock):
    """
    At the timeout the process group gets TERM, KILL follows after
    kill_grace if it is still there, and the result says timed_out.
    """
    run, _ = start(runner)
    protocol = spawner.protocol
    clock.advance(TIMEOUT - 0.1)
    assert spawner.signals == []
    clock.advance(0.1)
    assert spawner.signals == [(PID, signal.SIGTERM)]
    clock.advance(GRACE - 0.1)
    assert spawner.signals == [(PID, signal.SIGTERM)]
    assert not run.result.called
    clock.advance(0.1)
    assert spawner.signals == [(PID, signal.SIGTERM), (PID, signal.SIGKILL)]
    end(protocol, signum=signal.SIGKILL)
    result = outcome(run.result)
    assert result.timed_out is True
    assert result.signal == signal.SIGKILL
    assert result.exit_code is None
    assert clock.getDelayedCalls() == []


def test_timeout_no_kill_when_term_suffices(runner, spawner, clock):
    """
    A process that ends on TERM is not sent KILL by the grace timer (only
    the orphan sweep at reaping), and no timer is left behind.
    """
    run, _ = start(runner)
    protocol = spawner.protocol
    clock.advance(TIMEOUT)
    end(protocol, signum=signal.SIGTERM)
    clock.advance(GRACE * 2)
    assert spawner.signals == [(PID, signal.SIGTERM), (PID, signal.SIGKILL)]
    assert outcome(run.result).timed_out is True
    assert clock.getDelayedCalls() == []


def test_per_run_timeout_overrides_runner_default(runner, spawner, clock):
    """
    A timeout given to run() replaces the runner's default for that run.
    """
    run, _ = start(runner, timeout=2.0)
    clock.advance(2.0)
    assert spawner.signals == [(PID, signal.SIGTERM)]
    end(spawner.protocol, signum=signal.SIGTERM)
    assert outcome(run.result).timed_out is True


def test_cancel_terms_at_once_and_kills_after_grace(runner, spawner, clock):
    """
    Cancelling the result sends TERM to the group immediately and KILL after
    kill_grace; the result fails with CancelledError at once, while
    C{finished} waits until the process is actually reaped.
    """
    run, _ = start(runner)
    protocol = spawner.protocol
    run.result.cancel()
    assert spawner.signals == [(PID, signal.SIGTERM)]
    failure = outcome(run.result)
    assert isinstance(failure, Failure) and failure.check(CancelledError)
    assert not run.finished.called
    assert protocol in runner.live
    clock.advance(GRACE)
    assert spawner.signals == [(PID, signal.SIGTERM), (PID, signal.SIGKILL)]
    assert not run.finished.called
    end(protocol, signum=signal.SIGKILL)
    finished = outcome(run.finished)
    assert isinstance(finished, CliExit)
    assert runner.live == set()
    assert clock.getDelayedCalls() == []


def test_reaped_child_group_is_killed_and_timers_cancelled(runner, spawner, clock):
    """
    Once the CLI itself exits, its process group gets KILL (anything left
    in the session is an orphan); after processEnded no timer is pending
    and the run is no longer tracked.
    """
    run, _ = start(runner)
    protocol = spawner.protocol
    protocol.outReceived(b"done\n")
    protocol.processExited(exited(0))
    assert spawner.signals == [(PID, signal.SIGKILL)]
    protocol.processEnded(exited(0))
    assert clock.getDelayedCalls() == []
    assert runner.live == set()
    result = outcome(run.result)
    assert result.exit_code == 0 and result.timed_out is False


def test_pipes_held_by_orphan_are_dropped(runner, spawner, clock):
    """
    If something outside the session still holds the pipes after the CLI
    exited, the connection is dropped after a grace, so the run can end.
    """
    run, _ = start(runner)
    protocol = spawner.protocol
    protocol.processExited(exited(0))
    assert ("loseConnection",) not in spawner.transport.calls
    clock.advance(max(GRACE, 1.0))
    assert ("loseConnection",) in spawner.transport.calls
    protocol.processEnded(exited(0))
    assert outcome(run.result).exit_code == 0
    assert clock.getDelayedCalls() == []


def test_finished_fires_before_result(runner, spawner):
    """
    C{finished} has fired (and the runner forgot the run) by the time the
    result's callbacks run, so whoever reads the result sees its slot free.
    """
    run, _ = start(runner)
    seen = []
    run.result.addCallback(lambda r: seen.append((run.finished.called, set(runner.live))))
    end(spawner.protocol)
    assert seen == [(True, set())]


@pytest.mark.parametrize(
    "reason, code, signum",
    [
        (ProcessDone(0), 0, None),
        (ProcessTerminated(exitCode=3), 3, None),
        (ProcessTerminated(exitCode=None, signal=signal.SIGKILL), None, signal.SIGKILL),
    ],
)
def test_exit_status_reported(runner, spawner, reason, code, signum):
    """
    The result carries the exit code, or the signal (and no exit code) when
    a signal ended the process.
    """
    run, _ = start(runner)
    spawner.protocol.processExited(Failure(reason))
    spawner.protocol.processEnded(Failure(reason))
    result = outcome(run.result)
    assert (result.exit_code, result.signal) == (code, signum)


def test_on_line_exception_ends_the_run(runner, spawner, clock):
    """
    An exception raised by on_line stops the run (TERM to the group), no
    further lines are delivered, and that exception is the result's failure;
    C{finished} still fires normally.
    """
    seen: list[str] = []

    class ParserGaveUp(Exception):
        pass

    def on_line(line):
        seen.append(line)
        if line == "bad":
            raise ParserGaveUp("cannot parse")

    run = runner.run(command(), on_line)
    protocol = spawner.protocol
    protocol.outReceived(b"good\nbad\nafter\n")
    assert seen == ["good", "bad"]
    assert spawner.signals == [(PID, signal.SIGTERM)]
    protocol.outReceived(b"later\n")
    assert seen == ["good", "bad"]
    end(protocol, signum=signal.SIGTERM)
    failure = outcome(run.result)
    assert isinstance(failure, Failure)
    assert failure.check(ParserGaveUp)
    assert str(failure.value) == "cannot parse"
    assert isinstance(outcome(run.finished), CliExit)
    assert clock.getDelayedCalls() == []


def test_stderr_keeps_only_the_tail(runner, spawner):
    """
    Only the last STDERR_TAIL_BYTES of stderr are kept, so a chatty CLI
    cannot grow memory, and the end (where the error is) survives.
    """
    run, _ = start(runner)
    protocol = spawner.protocol
    protocol.errReceived(b"a" * STDERR_TAIL_BYTES)
    protocol.errReceived(b"b" * 1000)
    protocol.errReceived(b"Error: the real reason\n")
    end(protocol, code=1)
    tail = outcome(run.result).stderr_tail
    assert len(tail) == STDERR_TAIL_BYTES
    assert tail.endswith("b" * 1000 + "Error: the real reason\n")
    assert tail.startswith("a")


def test_terminate_all_stops_every_run(runner, spawner, clock):
    """
    terminate_all() sends TERM to every running CLI's group and fires once
    all of them are reaped.
    """
    first, _ = start(runner)
    second, _ = start(runner)
    p1, p2 = spawner.spawned[0]["protocol"], spawner.spawned[1]["protocol"]
    done = runner.terminate_all()
    assert sorted(spawner.signals) == [(PID, signal.SIGTERM), (PID + 1, signal.SIGTERM)]
    end(p1, signum=signal.SIGTERM)
    assert not done.called
    end(p2, signum=signal.SIGTERM)
    assert done.called
    assert runner.live == set()
    assert clock.getDelayedCalls() == []
