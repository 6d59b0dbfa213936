"""
What the CLIs say about their subscription windows, turned into
L{QuotaWindow}s: claude's C{rate_limit_event} lines, codex's
C{usage_limit_reached} errors and app-server rate limits, gemini's daily
C{RESOURCE_EXHAUSTED} quotas, and the limit-reached texts each CLI has
printed over its versions.  Every parser here is tolerant: anything it does
not recognise gives nothing, never an exception.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shellm.completion import QuotaWindow

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

#: When a limit-reached text gives no reset time: claude and codex windows
#: are 5 hours, so that is the longest a rolling window can still hold.
DEFAULT_HOLD = 5 * 3600
#: A parsed reset is trusted only inside these bounds.
MIN_HOLD, MAX_HOLD = 60, 8 * 24 * 3600

#: Codex reports windows by duration; their position says nothing.
_KIND_BY_MINUTES = {300: "five_hour", 1440: "daily", 10080: "seven_day"}


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _share(value: object) -> float | None:
    """
    A used share, 0..1, from a fraction (claude, ints included) or a
    percentage (codex C{usedPercent}).
    """
    number = _number(value)
    if number is None or number < 0:
        return None
    return min(number, 1.0) if number <= 1.0 else min(number / 100.0, 1.0)


def _epoch(value: object) -> float | None:
    number = _number(value)
    if number is None or number <= 0:
        if isinstance(value, str) and value.strip().isdigit():
            number = float(value.strip())
        else:
            return None
    return number / 1000.0 if number > 1e12 else number  # milliseconds, seen in some captures


def _bounded(resets_at: float | None, now: float, default: float) -> float:
    if resets_at is None or not (now + MIN_HOLD <= resets_at <= now + MAX_HOLD):
        if resets_at is not None and now < resets_at < now + MIN_HOLD:
            return now + MIN_HOLD
        return default
    return resets_at


# -- claude


_STATUSES = ("allowed", "allowed_warning", "rejected")


def _status(value: object) -> str | None:
    return value if value in _STATUSES else None


def _worse(a: str, b: str | None) -> str:
    return a if b is None or _STATUSES.index(a) >= _STATUSES.index(b) else b


def claude_rate_limit_event(event: Mapping, now: float) -> list[QuotaWindow]:
    """
    The windows in a claude C{rate_limit_event} line, as claude 2.1.332
    prints it for a subscription login::

        {"type": "rate_limit_event", "rate_limit_info": {"status": "allowed",
         "resetsAt": 1796083131, "rateLimitType": "five_hour", "overageStatus": "rejected",
         "isUsingOverage": false, "unifiedWindows": {
           "five_hour": {"utilization": 0.82, "resetsAt": 1796083131, "status": "allowed_warning"},
           "seven_day": {"utilization": 0.4, "resetsAt": 1796338731, "status": "allowed"}}}}

    The top level names the window that rules (C{rateLimitType}); each of
    C{unifiedWindows} has its own share, reset and status (the warning
    shows there while the top level still says C{allowed}).  Older captures
    put C{utilization} at the top level.  A rejection that claude serves
    from paid overage anyway is a warning, not a spent window.
    """
    info = event.get("rate_limit_info")
    if not isinstance(info, Mapping):
        return []
    overage = info.get("overageStatus") in ("allowed", "allowed_warning")

    def judged(status: str) -> str:
        return "allowed_warning" if status == "rejected" and overage else status

    status = judged(_status(info.get("status")) or "allowed")
    named = info.get("rateLimitType")
    kind = named if isinstance(named, str) else "usage_limit"
    resets_at = _epoch(info.get("resetsAt"))
    windows = {kind: QuotaWindow(kind, status, _share(info.get("utilization")), resets_at, "stream")}
    unified = info.get("unifiedWindows")
    if isinstance(unified, Mapping):
        for name, detail in unified.items():
            if not isinstance(name, str) or not isinstance(detail, Mapping):
                continue
            used = _share(detail.get("utilization"))
            own = _status(detail.get("status"))
            reset = _epoch(detail.get("resetsAt"))
            main = windows.get(name)
            if main is not None:
                windows[name] = QuotaWindow(
                    name,
                    judged(_worse(main.status, own)),
                    used if used is not None else main.used,
                    reset or main.resets_at,
                    "stream",
                )
            else:
                windows[name] = QuotaWindow(name, judged(own or "allowed"), used, reset, "stream")
    return [
        w
        if w.status != "rejected"
        else QuotaWindow(w.kind, w.status, w.used, _bounded(w.resets_at, now, now + DEFAULT_HOLD), w.source)
        for w in windows.values()
    ]


_CLAUDE_EPOCH = re.compile(r"usage limit reached\|(\d{9,13})", re.IGNORECASE)
_CLAUDE_LIMIT = re.compile(
    r"(?P<what>5-hour|weekly|opus|session|usage)?\s*limit (?:reached|hit)"
    r"|(?:hit|reached) your (?P<what2>session |weekly |opus |5-hour |usage )?limit",
    re.IGNORECASE,
)
_RESETS = re.compile(
    r"resets?\s+(?:at\s+)?(?P<when>[^·∙|\n()]*?\d[^·∙|\n()]*?)\s*(?:\((?P<tz>[A-Za-z_]+(?:/[A-Za-z_+-]+)*)\))?\s*(?:$|[·∙|\n.])",
    re.IGNORECASE,
)


def _kind_named(word: str | None) -> str:
    word = (word or "").strip().lower()
    if word in ("5-hour", "session"):
        return "five_hour"
    if word in ("weekly",):
        return "seven_day"
    if word == "opus":
        return "seven_day_opus"
    return "usage_limit"


def claude_limit_text(text: str, now: float) -> QuotaWindow | None:
    """
    A claude limit-reached text, e.g. C{Claude AI usage limit reached|1751385600},
    C{5-hour limit reached ∙ resets 2am}, C{You've hit your limit · resets
    2pm (Asia/Shanghai)}.
    """
    default = now + DEFAULT_HOLD
    match = _CLAUDE_EPOCH.search(text)
    if match:
        return QuotaWindow("usage_limit", "rejected", 1.0, _bounded(_epoch(match.group(1)), now, default), "error")
    match = _CLAUDE_LIMIT.search(text)
    if not match:
        return None
    kind = _kind_named(match.group("what") or match.group("what2"))
    resets = _RESETS.search(text, match.end())
    resets_at = wall_clock_time(resets.group("when"), resets.group("tz"), now) if resets else None
    return QuotaWindow(kind, "rejected", 1.0, _bounded(resets_at, now, default), "error")


# -- codex


def codex_rate_limits(result: Mapping, now: float) -> list[QuotaWindow]:
    """
    The windows in a codex app-server C{account/rateLimits/read} result:
    C{{"rateLimits": {"primary": {"usedPercent", "windowDurationMins",
    "resetsAt"}, "secondary": ...}}}, classified by duration.
    """
    limits = result.get("rateLimits", result)
    if not isinstance(limits, Mapping):
        return []
    windows = []
    for slot in ("primary", "secondary"):
        window = limits.get(slot)
        if not isinstance(window, Mapping):
            continue
        minutes = _number(window.get("windowDurationMins", window.get("window_minutes")))
        used = _share(window.get("usedPercent", window.get("used_percent")))
        if minutes is None or used is None:
            continue
        kind = _KIND_BY_MINUTES.get(int(minutes), f"{int(minutes)}_minute")
        resets_at = _epoch(window.get("resetsAt", window.get("resets_at")))
        windows.append(QuotaWindow(kind, "rejected" if used >= 1.0 else "allowed", used, resets_at, "app-server"))
    return windows


_CODEX_LIMIT = re.compile(
    r"(?:hit|reached) your usage limit|usage_limit_reached|usage limit has been reached", re.IGNORECASE
)
_CODEX_IN = re.compile(
    r"try again in\s+(?P<span>(?:\d+\s*(?:days?|hours?|minutes?|mins?|seconds?|secs?)[\s,and]*)+)", re.IGNORECASE
)
_CODEX_AT = re.compile(r"try again at\s+(?P<when>[^\n]+?)\.?\s*(?:$|\n)", re.IGNORECASE)
_SPAN_PART = re.compile(r"(\d+)\s*(day|hour|min|sec)", re.IGNORECASE)
_SPAN_SECONDS = {"day": 86400, "hour": 3600, "min": 60, "sec": 1}


def codex_limit_error(text: str, now: float) -> QuotaWindow | None:
    """
    A codex usage-limit error: the JSON C{usage_limit_reached} body (with
    C{resets_at} or C{resets_in_seconds}), or the texts C{You've hit your
    usage limit. ... try again in 5 days 22 hours 11 minutes.} and C{... try
    again at Jul 5th, 2026 8:19 PM.}
    """
    if not _CODEX_LIMIT.search(text):
        return None
    default = now + DEFAULT_HOLD
    resets_at = None
    body = _json_in(text)
    error = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(error, Mapping):
        resets_at = _epoch(error.get("resets_at"))
        seconds = _number(error.get("resets_in_seconds"))
        if resets_at is None and seconds is not None:
            resets_at = now + seconds
    if resets_at is None:
        match = _CODEX_IN.search(text)
        if match:
            resets_at = now + sum(
                int(n) * _SPAN_SECONDS[unit.lower()] for n, unit in _SPAN_PART.findall(match.group("span"))
            )
        else:
            match = _CODEX_AT.search(text)
            if match:
                resets_at = wall_clock_time(match.group("when"), None, now)
    return QuotaWindow("usage_limit", "rejected", 1.0, _bounded(resets_at, now, default), "error")


# -- gemini


_GEMINI_DAILY = re.compile(r"(?:reached|exhausted) your daily [\w.\- ]*quota|PerDay|per day", re.IGNORECASE)


def next_pacific_midnight(now: float) -> float:
    """
    Google's daily quotas reset at midnight Pacific time.
    """
    zone = _zone("America/Los_Angeles") or datetime.UTC
    local = datetime.datetime.fromtimestamp(now, zone)
    midnight = datetime.datetime.combine(local.date() + datetime.timedelta(days=1), datetime.time(), zone)
    return midnight.timestamp()


def gemini_limit_error(text: str, now: float) -> QuotaWindow | None:
    """
    A spent daily gemini quota: C{You have exhausted your daily quota on
    this model.} (gemini 0.61, when the API's C{QuotaFailure} names a
    per-day quota), C{You have reached your daily gemini-2.5-pro quota
    limit} (older), a C{RESOURCE_EXHAUSTED} body naming a per-day quota,
    or C{Quota exceeded ... per day ...}.  Per-minute limits are not windows
    (they are ordinary rate limits).
    """
    if not _GEMINI_DAILY.search(text):
        return None
    if not re.search(r"quota|resource_exhausted|429", text, re.IGNORECASE):
        return None
    return QuotaWindow("daily", "rejected", 1.0, next_pacific_midnight(now), "error")


# -- shared


def _json_in(text: str) -> Any:
    start = text.find("{")
    while start >= 0:
        try:
            value, _ = json.JSONDecoder().raw_decode(text[start:])
            return value
        except ValueError:
            start = text.find("{", start + 1)
    return None


def _zone(name: str | None) -> ZoneInfo | None:
    if not name:
        return None
    # Imported here: only a limit message that names a time zone needs it.
    from zoneinfo import ZoneInfo

    try:
        return ZoneInfo(name)
    except Exception:
        return None


_WHEN = re.compile(
    r"(?:(?P<month>[A-Za-z]{3,9})\.?\s+(?P<day>\d{1,2})(?:st|nd|rd|th)?,?\s*(?:(?P<year>\d{4}),?)?\s*(?:at\s+)?)?"
    r"(?P<hour>\d{1,2})(?::(?P<minute>\d{2}))?\s*(?P<ampm>[ap]\.?m\.?)?",
    re.IGNORECASE,
)
_MONTHS = {m: i + 1 for i, m in enumerate(("jan feb mar apr may jun jul aug sep oct nov dec").split())}


def wall_clock_time(when: str, tz: str | None, now: float) -> float | None:
    """
    The first moment at or after C{now} that a CLI's wall-clock text names:
    C{2am}, C{2:30pm}, C{14:00}, C{Jul 5th, 2026 8:19 PM}, C{Dec 3, 2pm}, in
    the named time zone or else the daemon's own (the CLI ran in it).
    """
    match = _WHEN.search(when or "")
    if not match:
        return None
    hour, minute = int(match.group("hour")), int(match.group("minute") or 0)
    ampm = (match.group("ampm") or "").replace(".", "").lower()
    if ampm:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if ampm == "pm" else 0)
    if hour > 23 or minute > 59:
        return None
    named = _zone(tz)
    local_now = (
        datetime.datetime.fromtimestamp(now, named) if named else datetime.datetime.fromtimestamp(now).astimezone()
    )
    zone = local_now.tzinfo
    if match.group("month"):
        month = _MONTHS.get(match.group("month")[:3].lower())
        if month is None:
            return None
        year = int(match.group("year") or local_now.year)
        try:
            moment = datetime.datetime(year, month, int(match.group("day")), hour, minute, tzinfo=zone)
        except ValueError:
            return None
        if not match.group("year") and moment < local_now:
            moment = moment.replace(year=year + 1)
        return moment.timestamp()
    moment = local_now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if moment <= local_now:
        moment += datetime.timedelta(days=1)
    return moment.timestamp()
