"""
Logging: one JSON object per line on stdout (journald reads it), filtered by
level.  Messages are built from explicit fields; prompts, completions and
secrets are never passed to a log call, and L{redact} cleans the few
third-party texts that are logged (upstream error bodies).
"""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime, timezone
from typing import IO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
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
            "time": datetime.fromtimestamp(
                event.get("log_time") or 0, timezone.utc
            ).isoformat(timespec="milliseconds"),
            "level": level.name,
            "namespace": event.get("log_namespace", ""),
            "message": formatEvent(event),
        }
        for key, value in event.items():
            if key.startswith("log_") or key in ("format", "message", "time", "level") \
                    or key.startswith("_") or key in ("isError", "system", "why", "failure"):
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
        [LogLevelFilterPredicate(defaultLogLevel=_LEVELS[level])],
    )


#: The level for L{daemon_observer}, set from the configuration before twistd
#: starts logging (twistd takes its observer factory by name).
daemon_level = "info"


def daemon_observer() -> ILogObserver:
    return json_observer(daemon_level)
