"""
The JSON log lines: what a line holds, and that nothing secret gets in.
"""

from __future__ import annotations

import io
import json

from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.python.failure import Failure

from shellm.logs import JsonLineObserver, json_observer, redact


def _lines(emit, level="info") -> list[dict]:
    stream = io.StringIO()
    publisher = LogPublisher(json_observer(level, stream))
    emit(Logger(namespace="shellm.test", observer=publisher))
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_holds_time_level_namespace_message_and_fields():
    """
    One JSON object per event: the formatted message, the plain fields, and
    nothing of Twisted's own bookkeeping.
    """
    [line] = _lines(
        lambda log: log.info(
            "{method} {path} {status} in {duration_ms} ms",
            method="POST",
            path="/v1/messages",
            status=200,
            duration_ms=3,
            provider=None,
            ratio=0.5,
        )
    )
    assert line["message"] == "POST /v1/messages 200 in 3 ms"
    assert line["level"] == "info" and line["namespace"] == "shellm.test"
    assert line["time"].endswith("+00:00") and len(line["time"]) == 29
    assert line["provider"] is None and line["ratio"] == 0.5 and line["status"] == 200
    assert not [key for key in line if key.startswith("log_")]


def test_formats_beyond_plain_fields_read_as_twisted_would():
    """
    Conversions and format specs, attribute access and Twisted's call syntax
    all give Twisted's own text; a broken format never loses the event.
    """

    class Thing:
        size = 3

        def describe(self):
            return "called"

    lines = _lines(
        lambda log: (
            log.info("{name!r} {ratio:.2f} {thing.size}", name="x", ratio=0.25, thing=Thing()),
            log.info("{thing.describe()}", thing=Thing()),
            log.info("{missing} here"),
        )
    )
    assert [line["message"] for line in lines[:2]] == ["'x' 0.25 3", "called"]
    assert "Unable to format event" in lines[2]["message"]


def test_levels_below_the_threshold_are_dropped():
    lines = _lines(lambda log: (log.debug("quiet"), log.info("said"), log.error("loud")), level="info")
    assert [line["message"] for line in lines] == ["said", "loud"]


def test_failures_are_logged_redacted():
    """
    A traceback goes into C{error}, with anything shaped like a key replaced.
    """
    secret = "sk-ant-0123456789abcdefghijklmnop"
    try:
        raise ValueError(f"upstream said Bearer {secret}")
    except ValueError:
        failure = Failure()
    [line] = _lines(lambda log: log.failure("call failed", failure))
    assert line["level"] == "critical" and line["message"] == "call failed"
    assert "ValueError" in line["error"] and secret not in line["error"]
    assert secret not in redact(f"key={secret}")


def test_a_closed_stream_does_not_raise():
    stream = io.StringIO()
    observer = JsonLineObserver(stream)
    stream.close()
    observer({"log_format": "x", "log_level": LogLevel.info, "log_time": 0})
