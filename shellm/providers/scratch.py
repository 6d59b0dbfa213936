"""
Each CLI run's scratch directory, and the sweep of those a dead daemon left.

A scratch directory is named C{shellm-<what>-<pid>.<start>-<random>}: the pid
and start time (in clock ticks since boot) of the daemon that made it.  A
daemon removes its own when each run ends; one killed with SIGKILL cannot, so
at start-up L{sweep} removes those whose maker is gone: the name must match,
the directory must belong to this user, and no live process may have that pid
and start time (a pid alone may have been reused).  Nothing else is touched.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool

_NAME = re.compile(r"shellm-.+-(\d+)\.(\d+)-\w+")


def start_time(pid: int) -> int | None:
    """
    When process C{pid} started, in clock ticks since boot; L{None} if there
    is no such process.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # Field 22; the command name (field 2) may hold spaces and ")".
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


_owner: tuple[int, str] | None = None


def owner_tag() -> str:
    """
    C{<pid>.<start>} of this process, as scratch directory names carry it.
    """
    global _owner
    pid = os.getpid()
    if _owner is None or _owner[0] != pid:  # first use, or forked since
        _owner = (pid, f"{pid}.{start_time(pid) or 0}")
    return _owner[1]


def make(what: str) -> str:
    """
    A new private (0700) scratch directory for C{what} (a provider's name),
    under the temporary directory; its path.
    """
    return tempfile.mkdtemp(prefix=f"shellm-{what}-{owner_tag()}-")


def remove(reactor: IReactorThreads, path: str) -> Deferred[None]:
    """
    Remove the scratch directory C{path}, in a thread of C{reactor}'s pool:
    on a slow disk that takes about a millisecond, which neither the reactor
    nor the answer it is about to send should wait for.
    """
    return deferToThreadPool(reactor, reactor.getThreadPool(), shutil.rmtree, path, ignore_errors=True)


def sweep(root: str) -> list[str]:
    """
    Remove the scratch directories under C{root} whose daemon is gone; the
    paths removed.  Blocking: call it off the reactor thread.
    """
    removed: list[str] = []
    if start_time(os.getpid()) is None:
        return removed  # no /proc: whether a daemon is gone cannot be told
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    me = os.getuid()
    for name in names:
        match = _NAME.fullmatch(name)
        if match is None:
            continue
        path = os.path.join(root, name)
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != me:
            continue
        pid, started = int(match[1]), int(match[2])
        if start_time(pid) == started:
            continue  # its daemon is still running
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            removed.append(path)
    return removed
