"""
The watchdog process itself, run by L{shellm.providers.watchdog.Watchdog} as
C{python -I -S watchdog_main.py TOKEN} with the read end of a pipe as stdin.

The daemon writes one ASCII line per change: C{+N} when a CLI run starts in
its own session N (its pid, which is also its process group id), C{-N} once
it has been reaped.  When the pipe ends (end of file: the daemon exited, or
was killed, even with SIGKILL), the watchdog kills with SIGKILL every process
of the sessions it still holds, including any that moved to a process group
of their own, and every process of the same user whose environment carries
C{SHELLM_WATCHDOG=TOKEN} (which each CLI is started with, and which helpers
usually inherit even when they leave the session), and exits.

The standard library only, nothing of SheLLM: it starts in milliseconds and
needs no import path.
"""

from __future__ import annotations

import os
import signal
import sys
import time

#: The environment variable that marks a process as started for a CLI run.
MARKER = "SHELLM_WATCHDOG"
#: How long the watchdog keeps looking for stragglers (processes forked while
#: it was killing their parents) after the pipe ends, in seconds.
SWEEP_SECONDS = 1.5


def apply(line: bytes, sessions: set[int]) -> None:
    """
    Update C{sessions} from one command line; anything else is ignored.
    """
    line = line.strip()
    if len(line) < 2 or not line[1:].isdigit():
        return
    group = int(line[1:])
    if group <= 1:
        return
    if line[:1] == b"+":
        sessions.add(group)
    elif line[:1] == b"-":
        sessions.discard(group)


def follow(fd: int, sessions: set[int]) -> None:
    """
    Read commands from C{fd} until the pipe ends.
    """
    pending = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except InterruptedError:  # pragma: no cover (retried by Python itself)
            continue
        except OSError:
            return
        if not chunk:
            return
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            apply(line, sessions)


def doomed(sessions: set[int], token: str, proc: str = "/proc") -> list[int]:
    """
    The live processes to kill: members of C{sessions} (by session or
    process group), and this user's processes marked with C{token}.
    """
    needle = f"\0{MARKER}={token}\0".encode()
    me, uid = os.getpid(), os.getuid()
    found: list[int] = []
    try:
        entries = os.listdir(proc)
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid <= 1 or pid == me:
            continue
        try:
            with open(f"{proc}/{entry}/stat", "rb") as f:
                # The command name may hold spaces and parentheses: the
                # fields that follow come after its last ")".
                state, _ppid, group, session = f.read().rsplit(b")", 1)[1].split()[:4]
            if state in (b"Z", b"X"):
                continue
            if int(session) in sessions or int(group) in sessions:
                found.append(pid)
                continue
            if not token or os.stat(f"{proc}/{entry}").st_uid != uid:
                continue
            with open(f"{proc}/{entry}/environ", "rb") as f:
                if needle in b"\0" + f.read() + b"\0":
                    found.append(pid)
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
    return found


def kill_all(sessions: set[int], token: str, proc: str = "/proc", seconds: float = SWEEP_SECONDS) -> int:
    """
    SIGKILL every process L{doomed} finds, again until two looks in a row
    find none (or C{seconds} have passed).  Returns how many were signalled.
    """
    killed = 0
    for group in sessions:
        try:
            os.killpg(group, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + seconds
    quiet = 0
    while quiet < 2 and time.monotonic() < deadline:
        found = doomed(sessions, token, proc)
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        quiet = 0 if found else quiet + 1
        time.sleep(0.01)
    return killed


def main(argv: list[str]) -> int:
    token = argv[1] if len(argv) > 1 else ""
    try:
        # Out of the daemon's session and process group: a signal meant for
        # them (Ctrl-C in a terminal, kill of the group) does not reach here.
        os.setsid()
    except OSError:
        pass
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        # Only the end of the pipe ends the watchdog: it must outlive a
        # daemon that is draining, and is gone as soon as the daemon is.
        signal.signal(signum, signal.SIG_IGN)
    sessions: set[int] = set()
    follow(0, sessions)
    kill_all(sessions, token)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
