"""
The watchdog: a tiny process started with the daemon that kills every process
started for a CLI run, grandchildren included, as soon as the daemon is gone,
however it went (even C{kill -9}, without systemd).  It also sweeps, at
start-up, the scratch directories a killed daemon left behind.

The kernel's parent-death signal reaches a CLI only; the helpers it starts in
its session would be re-parented to init and keep running.  So the daemon
holds the write end of a pipe whose read end is the watchdog's stdin, tells it
each run's session as it starts and ends (see
L{shellm.providers.watchdog_main}, the program it runs), and when the pipe
ends the watchdog kills them all.  Each CLI also carries
C{SHELLM_WATCHDOG=<token>} in its environment (L{Watchdog.environment}), which
lets the watchdog find helpers that left the session, and a CLI started in the
instant between its spawn and the daemon writing to the pipe.
"""

from __future__ import annotations

import errno
import os
import secrets
import sys
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from shellm.providers import scratch
from shellm.providers.watchdog_main import MARKER

#: The program the watchdog process runs.
PROGRAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "watchdog_main.py")
#: After the pipe is closed on a normal stop, how long the watchdog may take to
#: exit before it is killed, in seconds.
EXIT_GRACE = 5.0
#: How long to wait before starting a watchdog again after it died on its own.
RESTART_DELAY = 1.0


class _WatchdogProtocol(ProcessProtocol):
    def __init__(self, watchdog: Watchdog):
        self._watchdog = watchdog

    def outReceived(self, data: bytes) -> None:
        self._watchdog.said(data)

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self._watchdog.ended(reason.value)


class Watchdog(Service):
    """
    Starts the watchdog process and tells it which sessions to kill if the
    daemon dies.

    On stop it keeps the watchdog until the last watched run has been reaped
    (the daemon's drain stops runs after its children have stopped, and a
    C{kill -9} during the drain must still be covered), then closes the pipe;
    the reactor's shutdown waits until the watchdog has exited and been reaped.

    @param scratch_root: where the runs' scratch directories are made, swept
        of a dead daemon's on start; L{None} sweeps nothing.
    """

    log = Logger()

    def __init__(self, reactor: Any, scratch_root: str | None = None, python: str = sys.executable):
        self._reactor = reactor
        self._scratch_root = scratch_root
        self._python = python
        self.token = secrets.token_hex(16)
        self.pid: int | None = None
        self._fd: int | None = None
        self._transport: Any = None
        self._watched: set[int] = set()
        self._stopping = False
        # Fired once the running watchdog has been reaped.
        self._exit_waiters: list[Deferred[None]] | None = None
        self._kill_timer: Any = None
        self._restart_timer: Any = None
        self._trigger: Any = None
        self._shutting_down = False

    @property
    def environment(self) -> dict[str, str]:
        """
        The variables every CLI is started with, so the watchdog can find it
        and what it starts.
        """
        return {MARKER: self.token}

    @property
    def watched(self) -> frozenset[int]:
        return frozenset(self._watched)

    # -- what the spawner calls

    def watch(self, group: int) -> None:
        """
        A CLI run started in its own session C{group}.
        """
        self._watched.add(group)
        self._send(b"+%d\n" % group)

    def release(self, group: int) -> None:
        """
        The run of session C{group} has been reaped (and its group killed).
        """
        self._watched.discard(group)
        self._send(b"-%d\n" % group)
        if self._stopping and not self._watched:
            self._close()

    # -- the service

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        if self._scratch_root is not None:
            # Large trees may be left: removed off the reactor thread.
            self._reactor.callInThread(self._sweep, self._scratch_root)
        self._start()
        self._trigger = self._reactor.addSystemEventTrigger("before", "shutdown", self._until_exited)

    def stopService(self) -> None:
        """
        Returns at once: the watchdog stays until the runs are reaped.
        """
        super().stopService()
        self._stopping = True
        if self._restart_timer is not None and self._restart_timer.active():
            self._restart_timer.cancel()
        self._restart_timer = None
        if not self._watched:
            self._close()

    def _sweep(self, root: str) -> None:
        # In a thread; what was removed is logged on the reactor's.
        self._reactor.callFromThread(self._swept, scratch.sweep(root))

    def _swept(self, paths: list[str]) -> None:
        for path in paths:
            self.log.info("removed {path}, left by a daemon that is gone", path=path)

    def _start(self) -> None:
        read, write = os.pipe()
        try:
            os.set_blocking(write, False)
            self._transport = self._reactor.spawnProcess(
                _WatchdogProtocol(self),
                self._python,
                [self._python, "-I", "-S", PROGRAM, self.token],
                env={},
                path="/",
                childFDs={0: read, 1: "r", 2: "r"},
            )
        except BaseException:
            os.close(write)
            raise
        finally:
            os.close(read)
        self._fd = write
        self.pid = self._transport.pid
        self._exit_waiters = []
        for group in sorted(self._watched):
            self._send(b"+%d\n" % group)
        self.log.debug("watchdog {pid} started", pid=self.pid)

    def _send(self, line: bytes) -> None:
        if self._fd is None:
            return  # sent when the watchdog (re)starts
        try:
            # Shorter than PIPE_BUF: written whole or not at all, at once, so
            # a run is covered from the moment it is spawned.
            os.write(self._fd, line)
        except BlockingIOError:
            self.log.error("the watchdog is not reading: session {line} not passed on", line=line.strip().decode())
        except OSError as e:
            # Never raised to the spawner: the run has started either way.
            if e.errno != errno.EPIPE:
                self.log.failure("could not write to the watchdog")
            # EPIPE: it died; ended() starts another, told every session.

    def _close(self) -> None:
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        if self._transport is not None and self._kill_timer is None:
            self._kill_timer = self._reactor.callLater(EXIT_GRACE, self._kill)

    def _kill(self) -> None:
        self._kill_timer = None
        if self._transport is not None:
            self.log.warn("the watchdog did not exit in time; killing it")
            try:
                self._transport.signalProcess("KILL")
            except OSError:
                pass

    def said(self, data: bytes) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            if line.strip():
                self.log.warn("watchdog: {line}", line=line)

    def ended(self, reason: BaseException) -> None:
        """
        The watchdog process has exited and been reaped.
        """
        pid, self.pid = self.pid, None
        self._transport = None
        if self._kill_timer is not None and self._kill_timer.active():
            self._kill_timer.cancel()
        self._kill_timer = None
        waiters, self._exit_waiters = self._exit_waiters or [], None
        if self._fd is not None:
            # Not asked to: whatever killed it, runs must stay covered.
            os.close(self._fd)
            self._fd = None
            self.log.error("the watchdog exited unexpectedly: {why}", why=str(reason))
            if not self._stopping:
                self._restart_timer = self._reactor.callLater(RESTART_DELAY, self._restart)
        else:
            self.log.info("watchdog {pid} stopped", pid=pid)
        for waiting in waiters:
            waiting.callback(None)
        if self._stopping and self._trigger is not None and not self._shutting_down:
            self._reactor.removeSystemEventTrigger(self._trigger)
            self._trigger = None

    def _restart(self) -> None:
        self._restart_timer = None
        if not self._stopping:
            self._start()

    def _until_exited(self) -> Deferred[None] | None:
        # A "before shutdown" trigger, waited for like the service's stop:
        # the daemon exits only once the watchdog has been reaped.
        self._shutting_down = True
        if self._exit_waiters is None:
            return None
        waiting: Deferred[None] = Deferred()
        self._exit_waiters.append(waiting)
        return waiting
