"""
Tests of what cleans up after a daemon that died: the watchdog,
L{shellm.providers.watchdog.Watchdog} (the daemon's side) on a fake reactor
that records the spawn and keeps the child's end of the pipe; the program it
runs (L{shellm.providers.watchdog_main}) on a fake C{/proc} and, once, for
real; what the spawner tells it, and its fork path's check for a daemon gone
before the death signal was set (real processes); and the sweep of scratch
directories (L{shellm.providers.scratch}).
"""

from __future__ import annotations

import array
import fcntl
import os
import sys
import termios

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from shellm.providers import scratch
from shellm.providers.process import CliCommand, CliRunner
from shellm.providers.spawner import SessionSpawner, find_launcher
from shellm.providers.watchdog import EXIT_GRACE, PROGRAM, RESTART_DELAY, Watchdog
from shellm.providers.watchdog_main import MARKER, apply, doomed, follow
from tests.conftest import processes_with_marker, wait_for_no_processes
from tests.daemon import eventually


class FakeProcess:
    def __init__(self, pid: int):
        self.pid = pid
        self.signals: list[str] = []

    def signalProcess(self, signal: str) -> None:
        self.signals.append(signal)


class ProcessReactor(MemoryReactorClock):
    """
    Records spawns; each keeps a duplicate of the stdin it was given, as the
    child would, so the test reads what the daemon wrote and sees the end.
    """

    def __init__(self):
        super().__init__()
        self.spawned: list[dict] = []
        self.in_threads: list[tuple] = []

    def spawnProcess(
        self, protocol, executable, args, env=None, path=None, uid=None, gid=None, usePTY=0, childFDs=None
    ):
        pipe = os.dup(childFDs[0])
        os.set_blocking(pipe, False)
        transport = FakeProcess(5000 + len(self.spawned))
        self.spawned.append(
            dict(protocol=protocol, executable=executable, args=args, env=env, path=path, fds=childFDs, pipe=pipe)
        )
        protocol.makeConnection(transport)
        return transport

    def callInThread(self, f, *args, **kwargs):
        self.in_threads.append((f, args, kwargs))

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


def received(spawned: dict) -> tuple[bytes, bool]:
    """
    What the daemon has written to this watchdog so far, and whether the pipe has ended.
    """
    data = b""
    while True:
        try:
            chunk = os.read(spawned["pipe"], 4096)
        except BlockingIOError:
            return data, False
        if not chunk:
            return data, True
        data += chunk


@pytest.fixture
def reactor():
    reactor = ProcessReactor()
    yield reactor
    for spawned in reactor.spawned:
        os.close(spawned["pipe"])


@pytest.fixture
def watchdog(reactor):
    watchdog = Watchdog(reactor)
    yield watchdog
    if watchdog._fd is not None:
        os.close(watchdog._fd)


def test_started_isolated(reactor, watchdog):
    """
    The watchdog runs this Python, isolated (-I -S), with an empty environment,
    in /, the pipe as its stdin and its output read by the daemon; its token is
    the marker every CLI gets, and differs from one daemon to the next.
    """
    watchdog.startService()
    [spawned] = reactor.spawned
    assert spawned["args"] == [sys.executable, "-I", "-S", PROGRAM, watchdog.token]
    assert spawned["executable"] == sys.executable
    assert spawned["env"] == {}
    assert spawned["path"] == "/"
    assert spawned["fds"][1] == "r" and spawned["fds"][2] == "r"
    assert watchdog.environment == {MARKER: watchdog.token}
    assert len(watchdog.token) >= 32
    assert Watchdog(reactor).token != watchdog.token
    assert os.path.exists(PROGRAM)


def test_sessions_written_as_they_change(reactor, watchdog):
    """
    Each start and end of a run is on the pipe at once, before the reactor
    runs again: a run is covered from the moment it is spawned.
    """
    watchdog.startService()
    watchdog.watch(101)
    watchdog.watch(102)
    watchdog.release(101)
    assert received(reactor.spawned[0]) == (b"+101\n+102\n-101\n", False)
    assert watchdog.watched == {102}


def test_sessions_before_start_are_sent_at_start(reactor, watchdog):
    """
    A run spawned before the watchdog started (a health check) is passed on
    when it starts.
    """
    watchdog.watch(55)
    watchdog.startService()
    assert received(reactor.spawned[0]) == (b"+55\n", False)


def test_stop_keeps_watchdog_until_runs_are_reaped(reactor, watchdog):
    """
    Stopping the service does not hold up the daemon's drain (it returns at
    once) and keeps the pipe open while a run is alive, so a kill -9 during
    the drain is still covered; the pipe ends when the last run is reaped.
    """
    watchdog.startService()
    watchdog.watch(7)
    assert watchdog.stopService() is None
    assert received(reactor.spawned[0]) == (b"+7\n", False)
    watchdog.release(7)
    assert received(reactor.spawned[0]) == (b"-7\n", True)


def test_stop_when_idle_ends_the_pipe_and_waits_for_exit(reactor, watchdog, log_events):
    """
    Idle, the pipe ends at once; the reactor's shutdown waits (a before
    trigger) until the watchdog has exited and been reaped.
    """
    watchdog.startService()
    [(wait, args, kwargs)] = reactor.triggers["before"]["shutdown"]
    watchdog.stopService()
    assert received(reactor.spawned[0]) == (b"", True)
    waiting = wait(*args, **kwargs)
    assert isinstance(waiting, Deferred) and not waiting.called
    reactor.spawned[0]["protocol"].processEnded(Failure(ProcessDone(0)))
    assert waiting.called
    assert reactor.getDelayedCalls() == []
    assert [e.get("pid") for e in log_events if e.get("log_format") == "watchdog {pid} stopped"] == [5000]


def test_watchdog_that_does_not_exit_is_killed(reactor, watchdog):
    """
    If the watchdog has not exited EXIT_GRACE seconds after its pipe ended,
    it is killed.
    """
    watchdog.startService()
    watchdog.stopService()
    process = watchdog._transport
    reactor.advance(EXIT_GRACE - 0.1)
    assert process.signals == []
    reactor.advance(0.1)
    assert process.signals == ["KILL"]


def test_restarted_when_it_dies(reactor, watchdog, log_events):
    """
    A watchdog that dies on its own (someone killed it) is logged and started
    again after RESTART_DELAY, and told every session still running.
    """
    watchdog.startService()
    watchdog.watch(9)
    watchdog.watch(10)
    watchdog.release(10)
    reactor.spawned[0]["protocol"].processEnded(Failure(ProcessTerminated(signal=9)))
    assert received(reactor.spawned[0])[1] is True
    assert any("exited unexpectedly" in (e.get("log_format") or "") for e in log_events)
    reactor.advance(RESTART_DELAY)
    assert len(reactor.spawned) == 2
    assert received(reactor.spawned[1]) == (b"+9\n", False)


def test_not_restarted_when_stopping(reactor, watchdog):
    """
    Once stopping, a watchdog that dies is not started again.
    """
    watchdog.startService()
    watchdog.watch(9)
    watchdog.stopService()
    reactor.spawned[0]["protocol"].processEnded(Failure(ProcessTerminated(signal=9)))
    reactor.advance(RESTART_DELAY * 2)
    assert len(reactor.spawned) == 1


def test_output_is_logged(reactor, watchdog, log_events):
    """
    Whatever the watchdog prints (a traceback) reaches the daemon's log.
    """
    watchdog.startService()
    reactor.spawned[0]["protocol"].childDataReceived(2, b"Traceback: boom\n")
    assert any(e.get("line") == "Traceback: boom" for e in log_events)


def test_sweep_at_start_off_the_reactor_thread(reactor, tmp_path, log_events):
    """
    With a scratch root, start-up sweeps it in a thread and logs what a dead
    daemon left there.
    """
    stale = tmp_path / "shellm-claude-999999999.1-abc"
    stale.mkdir()
    watchdog = Watchdog(reactor, str(tmp_path))
    watchdog.startService()
    os.close(watchdog._fd)
    watchdog._fd = None
    [(sweep, args, kwargs)] = reactor.in_threads
    assert stale.exists()
    sweep(*args, **kwargs)
    assert not stale.exists()
    assert [e["path"] for e in log_events if "path" in e] == [str(stale)]


# -- the program


def test_commands():
    """
    C{+N} watches session N, C{-N} forgets it; anything else, and pids 0 and
    1, are ignored.
    """
    sessions: set[int] = set()
    for line in [b"+12", b"+13\r", b"-12", b"+1", b"+0", b"12", b"+x", b"", b"+-5", b"-99"]:
        apply(line, sessions)
    assert sessions == {13}


def test_commands_split_across_reads():
    """
    Lines that arrive in pieces are put together; the reading ends with the pipe.
    """
    read, write = os.pipe()
    os.write(write, b"+1")
    os.write(write, b"2\n+13\n-1")
    os.write(write, b"2\n+14")  # no newline: cut off by the daemon's death
    os.close(write)
    sessions: set[int] = set()
    follow(read, sessions)
    os.close(read)
    assert sessions == {13}


def _fake_proc(root, pid, session, group, state="S", environ=b"", name="cli"):
    entry = root / str(pid)
    entry.mkdir()
    (entry / "stat").write_bytes(f"{pid} ({name}) {state} 1 {group} {session} 0 0".encode())
    (entry / "environ").write_bytes(environ)


def test_doomed_processes(tmp_path):
    """
    Doomed: members of a watched session, by session or by process group,
    and processes carrying this daemon's marker; not zombies, not other
    daemons' marked processes, not this process, not the rest.
    """
    token = "t0ken"
    marked = f"PATH=/bin\0{MARKER}={token}\0HOME=/h\0".encode()
    _fake_proc(tmp_path, 100, session=100, group=100)  # the CLI
    _fake_proc(tmp_path, 101, session=100, group=100, name="a ) b")  # its helper
    _fake_proc(tmp_path, 102, session=100, group=102)  # a job in its own group
    _fake_proc(tmp_path, 103, session=100, group=100, state="Z")
    _fake_proc(tmp_path, 104, session=104, group=104, environ=marked)  # left the session
    _fake_proc(tmp_path, 105, session=105, group=105, environ=marked.replace(b"t0ken", b"other"))
    _fake_proc(tmp_path, 106, session=106, group=106, environ=marked.replace(b"t0ken", b"t0ken2"))
    _fake_proc(tmp_path, 107, session=1, group=1)
    _fake_proc(tmp_path, os.getpid(), session=100, group=100, environ=marked)
    (tmp_path / "self").mkdir()
    assert sorted(doomed({100}, token, str(tmp_path))) == [100, 101, 102, 104]
    assert sorted(doomed(set(), "", str(tmp_path))) == []


def _unread(fd: int) -> int:
    """
    Bytes written to a pipe and not yet read from it (FIONREAD on its write end).
    """
    count = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, count)
    return count[0]


class _Lines(ProcessProtocol):
    def __init__(self):
        self.output = b""
        self.ready = Deferred()
        self.ended = Deferred()

    def outReceived(self, data):
        self.output += data
        if b"\n" in self.output and not self.ready.called:
            self.ready.callback([int(p) for p in self.output.split(b"\n")[0].split()])

    def processEnded(self, reason):
        self.ended.callback(reason.value)


# Leads a session with: a child in its group, one in a group of its own
# (same session), one that left the session (keeps the environment), and one
# that left the session with a scrubbed environment.  Prints their pids.
FAMILY = """
import os, subprocess, sys, time
os.setsid()
sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
kids = [
    subprocess.Popen(sleep),
    subprocess.Popen(sleep, process_group=0),
    subprocess.Popen(sleep, start_new_session=True),
    subprocess.Popen(sleep, start_new_session=True, env={"KEEP": os.environ["KEEP"]}),
]
print(os.getpid(), *[k.pid for k in kids], flush=True)
time.sleep(60)
"""


@pytest.mark.timeout(30)
@pytest_twisted.ensureDeferred
async def test_program_kills_sessions_when_the_pipe_ends(marker):
    """
    The real program: when its pipe ends it kills, within 2 s, every process
    of a watched session (leader, child, a child in its own group) and a
    marked process that left the session, then exits 0; an unmarked process
    that left the session is not its business.
    """
    from twisted.internet import reactor

    token = "test-" + marker
    env = {"KEEP": marker, "SHELLM_TEST_MARKER": marker, MARKER: token, "PATH": os.environ["PATH"]}
    family = _Lines()
    reactor.spawnProcess(family, sys.executable, [sys.executable, "-c", FAMILY], env=env)
    leader, *kids = await family.ready
    read, write = os.pipe()
    guard = _Lines()
    reactor.spawnProcess(
        guard, sys.executable, [sys.executable, "-I", "-S", PROGRAM, token], env={}, childFDs={0: read, 1: "r", 2: "r"}
    )
    os.close(read)
    os.write(write, b"+%d\n" % leader)
    assert await eventually(lambda: _unread(write) == 0)  # it has started and read the line
    assert guard.ended.called is False
    os.close(write)
    exited = await guard.ended
    assert isinstance(exited, ProcessDone)
    assert await wait_for_no_processes(marker, timeout=2.0) == [kids[3]]
    os.kill(kids[3], 9)
    await family.ended
    assert processes_with_marker(marker) in ([], [kids[3]])
    await wait_for_no_processes(marker)


# -- the spawner's side


class RecordingWatchdog:
    environment = {MARKER: "tok"}

    def __init__(self):
        self.calls: list[tuple[str, int]] = []

    def watch(self, group: int) -> None:
        self.calls.append(("watch", group))

    def release(self, group: int) -> None:
        self.calls.append(("release", group))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("way", ["posix_spawn", "fork"])
@pytest_twisted.ensureDeferred
async def test_spawner_reports_every_run(way, tmp_path):
    """
    Both ways of starting a CLI give it the watchdog's marker (beside its own
    environment), tell the watchdog its session as soon as it is spawned, and
    release it once it has been reaped.
    """
    from twisted.internet import reactor

    launcher = find_launcher() if way == "posix_spawn" else None
    if way == "posix_spawn" and launcher is None:
        pytest.skip("setpriv or env -C is missing here")
    watchdog = RecordingWatchdog()
    runner = CliRunner(reactor, SessionSpawner(reactor, launcher, watchdog), 10.0, 1.0)
    script = "import os; print(os.environ['SHELLM_WATCHDOG'], os.environ['OWN'], os.getsid(0))"
    lines: list[str] = []
    run = runner.run(
        CliCommand(sys.executable, (sys.executable, "-c", script), {"OWN": "1"}, str(tmp_path)), lines.append
    )
    assert watchdog.calls == [("watch", run.pid)]
    outcome = await run.result
    assert await eventually(lambda: len(watchdog.calls) == 2)
    assert outcome.exit_code == 0, outcome
    assert lines == [f"tok 1 {run.pid}"]
    assert watchdog.calls == [("watch", run.pid), ("release", run.pid)]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("daemon_gone", [False, True])
@pytest_twisted.ensureDeferred
async def test_forked_child_of_a_gone_daemon_never_runs(daemon_gone, tmp_path, monkeypatch):
    """
    On the fork path, a child whose parent, once the death signal is set, is
    not the daemon that forked it (the daemon died in between, so the signal
    will never come) exits at once, before running the CLI.
    """
    from twisted.internet import reactor

    ran = tmp_path / "ran"
    runner = CliRunner(reactor, SessionSpawner(reactor), 10.0, 1.0)
    script = f"open({str(ran)!r}, 'w').close()"
    with monkeypatch.context() as patch:
        if daemon_gone:
            # As if the daemon had been another process: the parent the
            # child sees is not the one that forked it.
            patch.setattr(os, "getpid", lambda: 1)
        run = runner.run(CliCommand(sys.executable, (sys.executable, "-c", script), {}, str(tmp_path)), print)
    outcome = await run.result
    assert (outcome.exit_code, ran.exists()) == ((1, False) if daemon_gone else (0, True))


# -- scratch directories


def test_scratch_names_carry_their_daemon(tmp_path, monkeypatch):
    """
    A scratch directory is private and named for the daemon that made it.
    """
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    path = scratch.make("claude")
    name = os.path.basename(path)
    assert name.startswith(f"shellm-claude-{os.getpid()}.{scratch.start_time(os.getpid())}-")
    assert os.stat(path).st_mode & 0o077 == 0


def test_sweep_removes_only_dead_daemons_scratch(tmp_path):
    """
    The sweep removes scratch directories whose daemon is gone (no such pid,
    or the pid reused by a process that started at another time), with what
    they hold; it keeps a live daemon's, look-alikes that are not SheLLM's
    names, and files.
    """
    me = os.getpid()
    started = scratch.start_time(me)
    dead = tmp_path / "shellm-claude-999999999.12345-abc_12"
    (dead / "work" / "deep").mkdir(parents=True)
    (dead / "work" / "deep" / "file").write_text("x")
    reused = tmp_path / f"shellm-codex-check-{me}.{started + 1}-zz"
    reused.mkdir()
    alive = tmp_path / f"shellm-gemini-{me}.{started}-q1"
    alive.mkdir()
    unrelated = [tmp_path / "shellm-claude-abc", tmp_path / "shellm-e2e-x1", tmp_path / "other-1.2-x"]
    for path in unrelated:
        path.mkdir()
    a_file = tmp_path / "shellm-claude-999999999.1-file"
    a_file.write_text("not a directory")
    removed = scratch.sweep(str(tmp_path))
    assert sorted(removed) == sorted([str(dead), str(reused)])
    assert not dead.exists() and not reused.exists()
    assert alive.exists() and a_file.exists()
    assert all(path.exists() for path in unrelated)
