"""
Starting a CLI in its own session, killed by the kernel if the daemon dies
and reported to the watchdog: L{SessionSpawner} and the launcher it uses.  The only module that reaches
into Twisted's private spawning helpers (C{twisted.internet.process}).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import functools
import os
import shutil
import signal
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IProcessProtocol, IProcessTransport, IReactorProcess
from twisted.internet.process import Process

try:
    # Twisted's own helpers for posix_spawn's file actions; without them
    # (another Twisted), every child is forked.
    from twisted.internet.process import _getFileActions, _listOpenFDs
except ImportError:  # pragma: no cover
    _getFileActions = _listOpenFDs = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from shellm.providers.watchdog import Watchdog

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


@functools.cache
def find_launcher() -> tuple[str, str] | None:
    """
    C{setpriv} and C{env} from the system, if together they can set a
    parent-death signal and a working directory and then run a program;
    L{None} otherwise (asked once, at start-up).
    """
    setpriv = shutil.which("setpriv", path="/usr/bin:/bin:/usr/sbin:/sbin")
    env = shutil.which("env", path="/usr/bin:/bin")
    if setpriv is None or env is None or not hasattr(os, "posix_spawn"):
        return None
    try:
        probe = subprocess.run(
            [setpriv, "--pdeathsig", "KILL", "--", env, "-C", "/", "--", env],
            env={},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (setpriv, env) if probe.returncode == 0 else None


@functools.cache
def _ignored_signals() -> tuple[int, ...]:
    # Which signals the daemon ignores (SIGPIPE, at least) is settled before
    # it serves: looking them up once saves 64 lookups per spawn.
    return tuple(signum for signum in signal.valid_signals() if signal.getsignal(signum) == signal.SIG_IGN)


class _SessionProcess(Process):
    """
    A child that leads a new session (so signalling its process group reaches
    every grandchild too) and is killed by the kernel if the daemon dies.

    With a launcher, the child is started by C{posix_spawn}, whose cost does
    not grow with the daemon's memory as C{fork}'s does: the kernel makes
    the session, and C{setpriv} and C{env} set the parent-death signal and
    the directory before running the CLI.  Without one, it forks and does
    both itself.
    """

    def __init__(
        self,
        reactor: IReactorProcess,
        executable: str,
        args: list[str],
        environment: dict[str, str],
        path: str | None,
        proto: IProcessProtocol,
        launcher: tuple[str, str] | None,
        watchdog: Watchdog | None = None,
    ):
        self._launcher = launcher
        self._watchdog = watchdog
        self._group: int | None = None
        # Read before the fork: a forked child that asked getppid() itself
        # would learn init's pid if the daemon were already gone.
        self._daemon_pid = os.getpid()
        super().__init__(reactor, executable, args, environment, path, proto)
        if self.pid is not None:  # not already reaped
            self._watch()

    def _watch(self) -> None:
        if self._watchdog is not None and self._group is None and self.pid is not None:
            # The session leader's pid is the session's and the group's id.
            self._group = self.pid
            self._watchdog.watch(self._group)

    def processEnded(self, status: int) -> None:
        # Reaped: the protocol's processExited has KILLed the group.
        group, self._group = self._group, None
        super().processEnded(status)
        if group is not None and self._watchdog is not None:  # a group is only set with a watchdog
            self._watchdog.release(group)

    def _trySpawnInsteadOfFork(
        self,
        path: str | None,
        uid: int | None,
        gid: int | None,
        executable: str,
        args: Sequence[str],
        environment: Mapping[str, str],
        kwargs: dict[str, Any],
    ) -> bool:
        if (
            self._launcher is None
            or uid is not None
            or gid is not None
            or path is None
            # env would take a name with "=" for a variable to set.
            or "=" in executable
        ):
            return False
        setpriv, env = self._launcher
        argv = [setpriv, "--pdeathsig", "KILL", "--", env, "-C", path, "--", executable, *args[1:]]
        # What Twisted's own posix_spawn path does: the pipes go to 0, 1
        # and 2, every other inheritable descriptor is closed, and signals
        # the daemon ignores are reset.
        open_fds: list[tuple[int, int]] = []
        for fd in _listOpenFDs():
            try:
                open_fds.append((fd, fcntl.fcntl(fd, fcntl.F_GETFD, fcntl.FD_CLOEXEC)))
            except OSError:
                pass
        self.pid = os.posix_spawn(
            setpriv,
            argv,
            environment,
            # F_GETFD's flags, an int used as the close-on-exec bool, as Twisted passes them.
            file_actions=_getFileActions(open_fds, kwargs["fdmap"], os.POSIX_SPAWN_CLOSE, os.POSIX_SPAWN_DUP2),  # type: ignore[arg-type]
            setsigdef=_ignored_signals(),
            setsid=True,
        )
        # If the daemon dies before setpriv has set the death signal, the
        # watchdog still finds this child: by its session once told (at
        # once, here), and before that by the marker in its environment.
        self._watch()
        self.status = -1
        return True

    def _setupChild(self, fdmap: dict[int, int]) -> None:
        # Runs in the forked child, before exec.
        os.setsid()
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != self._daemon_pid:
            # The daemon died after the fork, before the death signal was
            # set: it will never come, so go now, before exec.
            os._exit(1)
        super()._setupChild(fdmap)


class SessionSpawner:
    """
    Starts CLIs in their own session and signals their process groups.

    @param launcher: see L{find_launcher}; L{None} forks every child.
    @param watchdog: a L{shellm.providers.watchdog.Watchdog} told of every
        child's session, whose marker every child's environment carries.
    """

    def __init__(
        self, reactor: IReactorProcess, launcher: tuple[str, str] | None = None, watchdog: Watchdog | None = None
    ):
        self._reactor = reactor
        self._launcher = launcher if _getFileActions is not None else None
        self._watchdog = watchdog

    @property
    def spawns(self) -> bool:
        return self._launcher is not None

    def spawn(
        self,
        protocol: IProcessProtocol,
        executable: str,
        args: Iterable[str],
        env: Mapping[str, str],
        path: str | None,
    ) -> IProcessTransport:
        environment = dict(env)
        if self._watchdog is not None:
            environment.update(self._watchdog.environment)
        return _SessionProcess(
            self._reactor, executable, list(args), environment, path, protocol, self._launcher, self._watchdog
        )

    def signal_group(self, pid: int, signum: int) -> None:
        # The session leader's pid is its process group id.
        try:
            os.killpg(pid, signum)
        except OSError as e:
            if e.errno not in (errno.ESRCH, errno.EPERM):
                raise
