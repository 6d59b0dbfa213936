"""
Starting a CLI in its own session, killed by the kernel if the daemon dies:
L{SessionSpawner} and the launcher it uses.  The only module that reaches
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

from twisted.internet.process import Process

try:
    # Twisted's own helpers for posix_spawn's file actions; without them
    # (another Twisted), every child is forked.
    from twisted.internet.process import _getFileActions, _listOpenFDs
except ImportError:  # pragma: no cover
    _getFileActions = _listOpenFDs = None

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

    def __init__(self, reactor, executable, args, environment, path, proto, launcher):
        self._launcher = launcher
        super().__init__(reactor, executable, args, environment, path, proto)

    def _trySpawnInsteadOfFork(self, path, uid, gid, executable, args, environment, kwargs):
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
        open_fds = []
        for fd in _listOpenFDs():
            try:
                open_fds.append((fd, fcntl.fcntl(fd, fcntl.F_GETFD, fcntl.FD_CLOEXEC)))
            except OSError:
                pass
        self.pid = os.posix_spawn(
            setpriv,
            argv,
            environment,
            file_actions=_getFileActions(open_fds, kwargs["fdmap"], os.POSIX_SPAWN_CLOSE, os.POSIX_SPAWN_DUP2),
            setsigdef=_ignored_signals(),
            setsid=True,
        )
        # If the daemon dies before setpriv runs, this child is orphaned
        # without the death signal; under systemd the unit's control group
        # is killed anyway.
        self.status = -1
        return True

    def _setupChild(self, fdmap):
        # Runs in the forked child, before exec.
        parent = os.getppid()
        os.setsid()
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            # The daemon died between fork and prctl: nobody will reap us.
            os._exit(1)
        super()._setupChild(fdmap)


class SessionSpawner:
    """
    Starts CLIs in their own session and signals their process groups.

    @param launcher: see L{find_launcher}; L{None} forks every child.
    """

    def __init__(self, reactor, launcher: tuple[str, str] | None = None):
        self._reactor = reactor
        self._launcher = launcher if _getFileActions is not None else None

    @property
    def spawns(self) -> bool:
        return self._launcher is not None

    def spawn(self, protocol, executable, args, env, path):
        return _SessionProcess(self._reactor, executable, list(args), dict(env), path, protocol, self._launcher)

    def signal_group(self, pid: int, signum: int) -> None:
        # The session leader's pid is its process group id.
        try:
            os.killpg(pid, signum)
        except OSError as e:
            if e.errno not in (errno.ESRCH, errno.EPERM):
                raise
