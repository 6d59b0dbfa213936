"""
Logging: one JSON object per line on stdout (journald reads it), filtered by
level.  Messages are built from explicit fields; prompts, completions and
secrets are never passed to a log call, and L{redact} cleans the few
third-party texts that are logged (upstream error bodies).

In daemon mode (C{shellm start -d}) the same lines go to a file instead:
L{daemon_file_observer}, which appends and reopens the file on SIGUSR1 so
logrotate can rename it and signal, rather than copy and truncate it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from datetime import UTC, datetime
from typing import IO

from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogLevel,
    PredicateResult,
    formatEvent,
)
from zope.interface import implementer

_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}

_SECRETS = re.compile(
    r"(?i)(bearer\s+)\S+"
    r"|\b(?:sk|csk|key|shellm)-[A-Za-z0-9_\-]{8,}"
    r"|[A-Za-z0-9_\-]{32,}"
)


def redact(text: str) -> str:
    """
    Replace anything that looks like a key or token with C{[REDACTED]}.
    """
    return _SECRETS.sub(lambda m: (m.group(1) or "") + "[REDACTED]", text)


def _message(event: dict) -> str:
    """
    The event's text.  C{str.format_map} gives the same text as Twisted's
    own formatter for every format SheLLM uses, in a tenth of the time (one
    access-log line per request); the rest (call syntax, legacy events, bad
    formats) goes to Twisted's.
    """
    text = event.get("log_format")
    if isinstance(text, str) and "log_flattened" not in event:
        try:
            return text.format_map(event)
        except Exception:
            pass
    return formatEvent(event)


#: Event keys that are not fields of a line (Twisted's own, legacy ones).
_NOT_FIELDS = frozenset(("format", "message", "time", "level", "isError", "system", "why", "failure"))


@implementer(ILogFilterPredicate)
class LevelAtLeast:
    """
    Lets through events at C{level} or above.  Twisted's
    C{LogLevelFilterPredicate} does the same with per-namespace levels
    SheLLM has no use for, at several times the cost (it orders the level
    constants anew on every event: one access-log line per request).
    """

    def __init__(self, level: LogLevel):
        self._levels = frozenset(known for known in LogLevel.iterconstants() if known >= level)

    def __call__(self, event: dict) -> PredicateResult:
        return PredicateResult.maybe if event.get("log_level") in self._levels else PredicateResult.no


@implementer(ILogObserver)
class JsonLineObserver:
    """
    Writes C{{"time", "level", "namespace", "message", ...fields}} lines.
    """

    def __init__(self, stream: IO[str]):
        self._stream = stream

    def __call__(self, event: dict) -> None:
        level = event.get("log_level", LogLevel.info)
        record = {
            "time": datetime.fromtimestamp(event.get("log_time") or 0, UTC).isoformat(timespec="milliseconds"),
            "level": level.name,
            "namespace": event.get("log_namespace", ""),
            "message": _message(event),
        }
        for key, value in event.items():
            if key in _NOT_FIELDS or key.startswith(("log_", "_")):
                continue
            if isinstance(value, (str, int, float, bool)) or value is None:
                record[key] = value
        failure = event.get("log_failure")
        if failure is not None:
            record["error"] = redact(failure.getTraceback())
        try:
            self._stream.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            pass


def json_observer(level: str = "info", stream: IO[str] = None) -> ILogObserver:
    """
    The daemon's log observer: JSON lines at C{level} and above.
    """
    return FilteringLogObserver(
        JsonLineObserver(stream or sys.stdout),
        [LevelAtLeast(_LEVELS[level])],
    )


#: The level for L{daemon_observer}, set from the configuration before twistd
#: starts logging (twistd takes its observer factory by name).
daemon_level = "info"


def daemon_observer() -> ILogObserver:
    return json_observer(daemon_level)


class ReopeningFile:
    """
    A text file opened for appending, that can be told to reopen its path:
    after logrotate has renamed it, the next line goes to a new file.

    The reopen is only requested by L{request_reopen} (safe in a signal
    handler, which may interrupt a write) and done before the next write.
    """

    def __init__(self, path: str):
        self.path = path
        self._reopen = False
        self._file = self._open()

    def _open(self) -> IO[str]:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        # O_APPEND: every line lands at the end, whoever else writes the file.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return open(fd, "a", encoding="utf-8")

    def request_reopen(self) -> None:
        self._reopen = True

    def write(self, text: str) -> None:
        if self._reopen:
            self._reopen = False
            try:
                new = self._open()
            except OSError:
                pass  # keep writing where we were rather than lose lines
            else:
                old, self._file = self._file, new
                old.close()
        self._file.write(text)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


#: Names the daemon-mode log file for L{daemon_file_observer}; set by
#: C{shellm start -d} in the daemon's environment.
LOG_FILE_ENV = "SHELLM_LOG_FILE"


def daemon_file_observer() -> ILogObserver:
    """
    The daemon-mode observer (C{twistd --logger shellm.logs.daemon_file_observer}):
    JSON lines at L{daemon_level} and above, appended to the file named by
    C{$SHELLM_LOG_FILE}, reopened on SIGUSR1.
    """
    path = os.environ.get(LOG_FILE_ENV)
    if not path:
        raise RuntimeError(f"{LOG_FILE_ENV} must name the log file")
    stream = ReopeningFile(os.path.abspath(path))
    signal.signal(signal.SIGUSR1, lambda signum, frame: stream.request_reopen())
    return json_observer(daemon_level, stream)
