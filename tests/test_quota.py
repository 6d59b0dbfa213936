"""
Subscription windows: what each CLI's reports and limit texts turn into,
how the tracker holds a provider back until its window resets (time on a
L{Clock}), and how the router skips such a provider without calling it and
without blaming it.
"""

from __future__ import annotations

import calendar
import json
import time

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from shellm.completion import ProviderResult, QuotaWindow
from shellm.errors import ProviderFailed, QuotaExhausted, RateLimited
from shellm.providers.claude import ClaudeOutput
from shellm.providers.codex import CodexOutput
from shellm.providers.gemini import GeminiOutput
from shellm.providers.process import CliExit
from shellm.providers.usage_limits import (
    DEFAULT_HOLD,
    claude_limit_text,
    codex_limit_error,
    codex_rate_limits,
    gemini_limit_error,
    next_pacific_midnight,
)
from shellm.routing.quota import QuotaTracker
from tests.fake_providers import fake_providers, make_router

#: 2026-11-30 10:00:00 UTC, a Monday.
NOW = calendar.timegm((2026, 11, 30, 10, 0, 0))


def utc(*fields) -> float:
    return float(calendar.timegm(fields + (0,) * (6 - len(fields))))


@pytest.fixture
def utc_zone(monkeypatch):
    """
    The daemon's own time zone is UTC, so a reset time without a zone
    ("resets 2am") is read as UTC.
    """
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def clock_at(now: float = NOW) -> Clock:
    clock = Clock()
    clock.advance(now)
    return clock


def exit_with(code: int = 0, stderr: str = "") -> CliExit:
    return CliExit(code, None, stderr, False, False, 0)


def feed(parser, *events) -> None:
    for event in events:
        parser.feed(json.dumps(event))


# Recorded claude stream-json rate_limit_event lines (claude 2.x): a float
# utilization on an allowed answer, the 7-day warning on a successful
# answer, and a rejection whose utilization is the integer 1.
CLAUDE_ALLOWED = {
    "type": "rate_limit_event",
    "rate_limit_info": {
        "status": "allowed",
        "resetsAt": NOW + 7200,
        "rateLimitType": "five_hour",
        "utilization": 0.42,
        "isUsingOverage": False,
        "overageStatus": "rejected",
        "overageDisabledReason": "org_level_disabled",
    },
    "uuid": "1f0c",
    "session_id": "5e1d",
}
CLAUDE_WARNING = {
    "type": "rate_limit_event",
    "rate_limit_info": {
        "status": "allowed_warning",
        "resetsAt": NOW + 3 * 86400,
        "rateLimitType": "seven_day",
        "utilization": 0.81,
        "isUsingOverage": False,
    },
}
CLAUDE_REJECTED = {
    "type": "rate_limit_event",
    "rate_limit_info": {
        "status": "rejected",
        "resetsAt": NOW + 5400,
        "rateLimitType": "five_hour",
        "isUsingOverage": False,
        "overageStatus": "rejected",
        "unifiedWindows": {"five_hour": {"utilization": 1}, "seven_day": {"utilization": 0.37}},
    },
}
CLAUDE_SUCCESS = {
    "type": "result",
    "subtype": "success",
    "is_error": False,
    "result": "Hi",
    "usage": {"input_tokens": 3, "output_tokens": 1},
}
CLAUDE_REFUSED = {
    "type": "result",
    "subtype": "success",
    "is_error": True,
    "result": "You've hit your limit · resets 2pm (UTC)",
    "api_error_status": 429,
}


# -- claude's rate_limit_event

#: What claude 2.1.332 printed for a subscription login (a token) against a
#: fake server sending anthropic-ratelimit-unified-* headers: the warning
#: shows only in the window's own status; the rejection has the integer 1.
MEASURED_WARNING = {
    "type": "rate_limit_event",
    "rate_limit_info": {
        "status": "allowed",
        "resetsAt": NOW + 3600,
        "rateLimitType": "five_hour",
        "overageStatus": "rejected",
        "overageDisabledReason": "org_level_disabled",
        "isUsingOverage": False,
        "unifiedWindows": {
            "five_hour": {"utilization": 0.82, "resetsAt": NOW + 3600, "status": "allowed_warning"},
            "seven_day": {"utilization": 0.4, "resetsAt": NOW + 3 * 86400, "status": "allowed"},
        },
    },
    "uuid": "8f2a34f3",
    "session_id": "84996334",
}
MEASURED_REJECTED = {
    "type": "rate_limit_event",
    "rate_limit_info": {
        "status": "rejected",
        "resetsAt": NOW + 3600,
        "rateLimitType": "five_hour",
        "overageStatus": "rejected",
        "overageDisabledReason": "org_level_disabled",
        "isUsingOverage": False,
        "unifiedWindows": {
            "five_hour": {"utilization": 1, "resetsAt": NOW + 3600, "status": "rejected"},
            "seven_day": {"utilization": 0.4, "resetsAt": NOW + 3 * 86400, "status": "allowed"},
        },
    },
}


def test_measured_claude_events():
    """
    The events claude 2.1.332 prints: each window of C{unifiedWindows}
    with its own share, reset and status (the warning comes from there).
    """
    parser = ClaudeOutput("claude", lambda event: None)
    parser.clock = clock_at()
    feed(parser, MEASURED_WARNING)
    assert [(w.kind, w.status, w.used, w.resets_at) for w in parser.quota] == [
        ("five_hour", "allowed_warning", 0.82, NOW + 3600),
        ("seven_day", "allowed", 0.4, NOW + 3 * 86400),
    ]
    parser = ClaudeOutput("claude", lambda event: None)
    parser.clock = clock_at()
    feed(parser, MEASURED_REJECTED)
    assert [(w.kind, w.status, w.used) for w in parser.quota] == [
        ("five_hour", "rejected", 1.0),
        ("seven_day", "allowed", 0.4),
    ]


def test_claude_allowed_warning_is_a_successful_answer():
    """
    Windows reported on a successful answer, the 7-day warning included,
    come back with its result: the answer is not an error.
    """
    parser = ClaudeOutput("claude", lambda event: None)
    parser.clock = clock_at()
    feed(parser, CLAUDE_ALLOWED, CLAUDE_WARNING, CLAUDE_SUCCESS)
    result = parser.finish(exit_with(0))
    assert isinstance(result, ProviderResult)
    assert [(w.kind, w.status, w.used, w.resets_at, w.source) for w in result.quota] == [
        ("five_hour", "allowed", 0.42, NOW + 7200, "stream"),
        ("seven_day", "allowed_warning", 0.81, NOW + 3 * 86400, "stream"),
    ]


def test_claude_rejection_is_quota_exhausted_until_its_reset():
    """
    A rejected window (integer utilization 1) makes the refusal a 429
    C{quota_exhausted} lasting until C{resetsAt}, carrying every window the
    event named, not a rate limit or a provider failure.
    """
    parser = ClaudeOutput("claude", lambda event: None)
    parser.clock = clock_at()
    feed(parser, CLAUDE_REJECTED, CLAUDE_REFUSED)
    with pytest.raises(QuotaExhausted) as caught:
        parser.finish(exit_with(1))
    error = caught.value
    assert (error.status, error.code, error.retry_after) == (429, "quota_exhausted", 5400)
    assert not error.blames_provider and error.provider_side
    assert {(w.kind, w.status, w.used) for w in error.quota} == {
        ("five_hour", "rejected", 1.0),
        ("seven_day", "allowed", 0.37),
    }


@pytest.mark.parametrize(
    "info, expected",
    [
        ({"status": "allowed", "utilization": 1, "rateLimitType": "five_hour"}, ("five_hour", "allowed", 1.0, None)),
        ({"status": "allowed", "resetsAt": (NOW + 60) * 1000}, ("usage_limit", "allowed", None, NOW + 60)),
        ({"status": "weird", "utilization": "high", "resetsAt": "soon"}, ("usage_limit", "allowed", None, None)),
        ({"status": "allowed", "utilization": True}, ("usage_limit", "allowed", None, None)),
        (
            {"status": "rejected", "rateLimitType": "seven_day", "overageStatus": "allowed", "resetsAt": NOW + 99},
            ("seven_day", "allowed_warning", None, NOW + 99),
        ),
        (
            {"status": "rejected", "rateLimitType": "seven_day_opus"},
            ("seven_day_opus", "rejected", None, NOW + DEFAULT_HOLD),
        ),
    ],
)
def test_claude_events_are_read_tolerantly(info, expected):
    """
    Integers and floats, milliseconds, unknown statuses, strings where
    numbers belong, a rejection served from overage (a warning), and a
    rejection without a reset time (the conservative 5 hours).
    """
    parser = ClaudeOutput("claude", lambda event: None)
    parser.clock = clock_at()
    feed(parser, {"type": "rate_limit_event", "rate_limit_info": info})
    [window] = parser.quota
    assert (window.kind, window.status, window.used, window.resets_at) == expected


def test_claude_event_without_info_is_ignored():
    """
    A C{rate_limit_event} with no usable C{rate_limit_info} reports nothing.
    """
    parser = ClaudeOutput("claude", lambda event: None)
    feed(parser, {"type": "rate_limit_event"}, {"type": "rate_limit_event", "rate_limit_info": [1]})
    assert parser.quota == []


# -- the limit-reached texts


@pytest.mark.parametrize(
    "text, kind, resets_at",
    [
        # cline #4616 (2025): the epoch after the bar.
        (f"Claude AI usage limit reached|{NOW + 7000}", "usage_limit", NOW + 7000),
        # claude-code #7157.
        ("5-hour limit reached ∙ resets 2am", "five_hour", utc(2026, 12, 1, 2)),
        # paperclip #5776 (2026): a zone in brackets.
        ("You've hit your limit · resets 2pm (Asia/Shanghai)", "usage_limit", utc(2026, 12, 1, 6)),
        ("You've hit your weekly limit · resets Dec 3, 2pm (UTC)", "seven_day", utc(2026, 12, 3, 14)),
        ("You've hit your session limit · resets 11:30am", "five_hour", utc(2026, 11, 30, 11, 30)),
        (
            "Claude usage limit reached. Your limit will reset at 3pm (Europe/Paris).",
            "usage_limit",
            utc(2026, 11, 30, 14),
        ),
        ("You've hit your limit", "usage_limit", NOW + DEFAULT_HOLD),
        # claude 2.1.332 against a fake server sending a rejection (measured).
        ("You've hit your 5-hour limit · resets 11:58pm (UTC)", "five_hour", utc(2026, 11, 30, 23, 58)),
    ],
)
def test_claude_limit_texts(utc_zone, text, kind, resets_at):
    """
    Each form claude has printed maps to its window and reset time, in the
    zone it names or else the daemon's own; none given, 5 hours.
    """
    window = claude_limit_text(text, NOW)
    assert window is not None
    assert (window.kind, window.status, window.resets_at, window.source) == (kind, "rejected", resets_at, "error")


@pytest.mark.parametrize(
    "text",
    [
        "API Error: Request rejected (429) · rate limited (fake)",
        "API Error: 500 fake failure",
        "This request would exceed your account's rate limit. Please try again later.",
    ],
)
def test_claude_rate_limits_are_not_windows(text):
    """
    A transient API rate limit is not a spent subscription window.
    """
    assert claude_limit_text(text, NOW) is None


@pytest.mark.parametrize(
    "text, resets_at",
    [
        # codex #3899, #3124.
        (
            "You've hit your usage limit. Upgrade to Pro (https://openai.com/chatgpt/pricing) or try again in "
            "5 days 22 hours 11 minutes.",
            NOW + 5 * 86400 + 22 * 3600 + 11 * 60,
        ),
        # codex 0.169 against a fake server answering 429 usage_limit_reached
        # (measured; note the typographic apostrophe).
        (
            "You’ve hit your usage limit. Upgrade to Pro (https://chatgpt.com/explore/pro), visit "
            "https://chatgpt.com/settings/usage to purchase more credits or try again at Dec 1st, 2026 1:07 AM.",
            utc(2026, 12, 1, 1, 7),
        ),
        # codex #26668.
        (
            "You've hit your usage limit. Upgrade to Pro or try again at Dec 2nd, 2026 8:19 PM.",
            utc(2026, 12, 2, 20, 19),
        ),
        ("You've hit your usage limit. Try again at 8:19 PM.", utc(2026, 11, 30, 20, 19)),
        # The app's wording (#47305): no time given.
        ("You've reached your usage limit. Upgrade your plan or add credits to continue", NOW + DEFAULT_HOLD),
        (
            json.dumps(
                {
                    "type": "error",
                    "error": {
                        "type": "usage_limit_reached",
                        "message": "The usage limit has been reached",
                        "plan_type": "plus",
                        "resets_at": NOW + 4000,
                        "resets_in_seconds": 4000,
                    },
                }
            ),
            NOW + 4000,
        ),
        ('{"error":{"type":"usage_limit_reached","resets_in_seconds":900}}', NOW + 900),
    ],
)
def test_codex_limit_texts(utc_zone, text, resets_at):
    """
    Codex's limit texts and its 429 C{usage_limit_reached} body map to the
    reset they give (a span, a date, an epoch) or to 5 hours.
    """
    window = codex_limit_error(text, NOW)
    assert window is not None
    assert (window.status, window.resets_at, window.used) == ("rejected", resets_at, 1.0)


def test_codex_rate_limit_is_not_a_window():
    """
    A plain 429 (C{rate_limit_exceeded}) is a rate limit, not a spent window.
    """
    assert codex_limit_error("exceeded retry limit, last status: 429 Too Many Requests", NOW) is None


GEMINI_DAILY_BODY = json.dumps(
    {
        "error": {
            "code": 429,
            "message": "You exceeded your current quota.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier", "quotaValue": "250"}
                    ],
                },
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "43s"},
            ],
        }
    }
)


@pytest.mark.parametrize(
    "text",
    [
        # gemini 0.61 -o stream-json, after a 429 whose QuotaFailure names a
        # PerDay quota (measured; exit 173).
        "[API Error: You have exhausted your daily quota on this model.]\nPlease wait and try again later. "
        "To increase your limits, request a quota increase through AI Studio, or switch to another /auth method",
        "You have reached your daily gemini-2.5-pro quota limit.",
        "Quota exceeded for quota metric 'Gemini 2.5 Pro Requests' and limit "
        "'Gemini 2.5 Pro Requests per day per user per tier'",
        GEMINI_DAILY_BODY,
    ],
)
def test_gemini_daily_quota_texts(text):
    """
    A spent daily quota lasts until the next midnight Pacific time, when
    Google resets daily quotas (08:00 UTC in winter).
    """
    window = gemini_limit_error(text, NOW)
    assert window is not None
    assert (window.kind, window.status, window.resets_at) == ("daily", "rejected", utc(2026, 12, 1, 8))
    assert next_pacific_midnight(NOW) == utc(2026, 12, 1, 8)


@pytest.mark.parametrize(
    "text",
    [
        '{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).",'
        '"status":"RESOURCE_EXHAUSTED"}}',
        '{"error":{"status":"RESOURCE_EXHAUSTED","details":[{"violations":'
        '[{"quotaId":"GenerateRequestsPerMinutePerProjectPerModel"}]}]}}',
    ],
)
def test_gemini_per_minute_limits_are_not_windows(text):
    """
    Per-minute exhaustion is an ordinary rate limit.
    """
    assert gemini_limit_error(text, NOW) is None


def test_parsers_classify_limit_texts():
    """
    Each CLI's parser turns its limit text into C{quota_exhausted}, and an
    ordinary 429 into C{rate_limited} as before.
    """
    codex = CodexOutput("codex", lambda event: None)
    codex.clock = clock_at()
    feed(codex, {"type": "turn.failed", "error": {"message": "You've hit your usage limit. Try again in 2 hours."}})
    with pytest.raises(QuotaExhausted) as caught:
        codex.finish(exit_with(1))
    assert caught.value.retry_after == 7200

    gemini = GeminiOutput("gemini", lambda event: None)
    gemini.clock = clock_at()
    gemini.upstream = "gemini-2.5-pro"
    with pytest.raises(QuotaExhausted) as spent:
        gemini.finish(exit_with(173, stderr=json.dumps({"error": {"message": GEMINI_DAILY_BODY, "code": 429}})))
    [daily] = spent.value.quota
    assert (daily.kind, daily.model) == ("daily", "gemini-2.5-pro")
    gemini = GeminiOutput("gemini", lambda event: None)
    with pytest.raises(RateLimited) as limited:
        gemini.finish(exit_with(173, stderr='{"error":{"message":"Resource has been exhausted (e.g. check quota)."}}'))
    assert limited.value.retry_after == 60
    # gemini 0.61 on a per-minute quota (measured): its suggested wait is kept.
    gemini = GeminiOutput("gemini", lambda event: None)
    feed(
        gemini,
        {
            "type": "result",
            "status": "error",
            "error": {
                "type": "unknown",
                "message": "[API Error: You exceeded your current quota, please check your plan and billing details."
                "\nSuggested retry after 43s.]\nPlease wait and try again later.",
            },
        },
    )
    with pytest.raises(RateLimited) as limited:
        gemini.finish(exit_with(173))
    assert limited.value.retry_after == 43


# -- codex app-server rate limits


def test_codex_windows_are_classified_by_duration():
    """
    The weekly window may come as C{primary}: the duration decides, and
    C{usedPercent} (an integer percentage) becomes a share.
    """
    windows = codex_rate_limits(
        {
            "rateLimits": {
                "primary": {"usedPercent": 97, "windowDurationMins": 10080, "resetsAt": NOW + 86400},
                "secondary": {"usedPercent": 12.5, "windowDurationMins": 300, "resetsAt": NOW + 600},
                "planType": "plus",
            }
        },
        NOW,
    )
    assert [(w.kind, w.used, w.resets_at, w.source) for w in windows] == [
        ("seven_day", 0.97, NOW + 86400, "app-server"),
        ("five_hour", 0.125, NOW + 600, "app-server"),
    ]
    assert codex_rate_limits({"rateLimits": {"primary": None, "secondary": {"usedPercent": "x"}}}, NOW) == []
    [full] = codex_rate_limits({"rateLimits": {"primary": {"usedPercent": 100, "windowDurationMins": 300}}}, NOW)
    assert (full.kind, full.status) == ("five_hour", "rejected")


# -- the tracker


def window(kind="five_hour", status="allowed", used=None, resets_in=3600.0, source="stream"):
    return QuotaWindow(kind, status, used, NOW + resets_in if resets_in is not None else None, source)


def test_threshold_and_states():
    """
    A window at or above the threshold, or rejected, exhausts its provider
    until it resets; a warning or a window below the threshold does not.
    """
    tracker = QuotaTracker(clock_at(), threshold=0.95)
    tracker.observe("claude", [window(used=0.94)])
    assert tracker.state("claude").state == "ok"
    tracker.observe("claude", [window("seven_day", "allowed_warning", 0.81)])
    assert tracker.state("claude").state == "warning"
    assert tracker.exhausted("claude") is None
    tracker.observe("claude", [window(used=0.95, resets_in=100)])
    state = tracker.exhausted("claude")
    assert state is not None and state.resets_at == NOW + 100
    assert tracker.retry_after(state) == 100
    assert tracker.state("codex").state == "ok" and tracker.state("codex").windows == ()


def test_most_restrictive_window_rules():
    """
    With several spent windows the provider waits for the last reset.
    """
    tracker = QuotaTracker(clock_at())
    tracker.observe(
        "claude", [window(status="rejected", resets_in=600), window("seven_day", "rejected", resets_in=9000)]
    )
    assert tracker.exhausted("claude").resets_at == NOW + 9000


def test_state_ends_at_the_reset(log_events):
    """
    The exhausted state ends exactly at C{resets_at}, by the clock; the
    window is then forgotten, and both changes are logged.
    """
    clock = clock_at()
    tracker = QuotaTracker(clock)
    tracker.observe("claude", [window(status="rejected", used=1.0, resets_in=300)])
    clock.advance(299)
    assert tracker.exhausted("claude") is not None
    clock.advance(1)
    assert tracker.exhausted("claude") is None
    assert tracker.state("claude").windows == ()
    said = [
        (e.get("provider"), e.get("state")) for e in log_events if e.get("log_namespace", "").endswith("QuotaTracker")
    ]
    assert said == [("claude", "exhausted"), ("claude", "ok")]
    assert clock.getDelayedCalls() == []


def test_window_without_reset_does_not_hold_a_provider():
    """
    A full window whose reset is unknown cannot say how long to wait: it is
    shown, but does not hold the provider back.
    """
    tracker = QuotaTracker(clock_at())
    tracker.observe("codex", [window(used=1.0, resets_in=None)])
    assert tracker.exhausted("codex") is None
    assert tracker.state("codex").state == "ok"


def test_past_windows_are_ignored_and_kinds_replace():
    """
    A report whose reset has passed says nothing; a new report replaces the
    last one of its kind.
    """
    tracker = QuotaTracker(clock_at())
    tracker.observe("claude", [window(status="rejected", resets_in=-1)])
    assert tracker.state("claude").windows == ()
    tracker.observe("claude", [window(status="rejected")])
    tracker.observe("claude", [window(status="allowed", used=0.1)])
    [known] = tracker.state("claude").windows
    assert (known.status, known.used, known.observed_at) == ("allowed", 0.1, NOW)


# -- the router


class Harness:
    def __init__(self):
        self.clock = clock_at()
        self.providers = fake_providers()
        self.router = make_router(self.clock, self.providers, fallback_chain=("claude", "gemini", "cerebras"))

    def complete(self, model="claude", fallback=True) -> Deferred:
        from shellm.completion import CompletionRequest

        entry = self.router.models.resolve(model)
        request = CompletionRequest(model=model, entry=entry, prompt="hi", request_id="r", fallback=fallback)
        return Deferred.fromCoroutine(self.router.complete(request, lambda event: None))

    def spend(self, name="claude", resets_in=1800.0):
        self.router.quota.observe(name, [window(status="rejected", used=1.0, resets_in=resets_in)])


def outcome(d: Deferred):
    results = []
    d.addBoth(results.append)
    assert results, "not finished"
    return results[0].value if hasattr(results[0], "value") else results[0]


def test_fallback_without_starting_the_exhausted_provider():
    """
    A provider whose window is spent is skipped before it is called: the
    next provider of the chain answers and says why it took over.
    """
    h = Harness()
    h.spend()
    d = h.complete()
    assert h.providers["claude"].runs == []
    h.providers["gemini"].last.emit("hello").succeed()
    completion = outcome(d)
    assert completion.provider == "gemini"
    assert completion.fallback.original_provider == "claude"
    assert completion.fallback.original_error["error"] == "quota_exhausted"
    assert (h.router.circuits["claude"].state, h.router.circuits["claude"].failures) == ("closed", 0)


def test_no_fallback_is_429_until_the_reset():
    """
    Without a fallback the request is refused with 429 C{quota_exhausted}
    and a Retry-After until the reset; after the reset the provider is
    called again.
    """
    h = Harness()
    h.spend(resets_in=1800)
    h.clock.advance(800)
    error = outcome(h.complete(fallback=False))
    assert isinstance(error, QuotaExhausted)
    # No SDK retry: it would come long before the reset.
    assert (error.status, error.retry_after, error.should_retry) == (429, 1000, False)
    assert h.providers["claude"].runs == []
    h.clock.advance(1000)
    d = h.complete(fallback=False)
    h.providers["claude"].last.emit("back").succeed()
    assert outcome(d).provider == "claude"


def test_refusals_for_quota_leave_the_circuit_closed():
    """
    Runs that end in C{quota_exhausted}, however many, are not failures:
    the circuit stays closed, and the provider falls back to the next one.
    """
    h = Harness()
    for _ in range(5):
        d = h.complete()
        error = QuotaExhausted("claude: its five-hour usage limit is reached", retry_after=60)
        error.quota = (window(status="rejected", used=1.0, resets_in=60),)
        h.providers["claude"].last.fail(error)
        h.providers["gemini"].last.emit("ok").succeed()
        assert outcome(d).provider == "gemini"
        h.clock.advance(61)
    assert h.router.circuits["claude"].to_json()["consecutive_failures"] == 0
    assert h.router.circuits["claude"].state == "closed"


def test_failed_run_reports_its_window():
    """
    The windows a failed run reported reach the tracker: the next request
    skips the provider at once.
    """
    h = Harness()
    d = h.complete()
    error = ProviderFailed("claude failed")
    error.quota = (window(status="rejected", used=1.0),)
    h.providers["claude"].last.fail(error)
    h.providers["gemini"].last.emit("ok").succeed()
    outcome(d)
    h.complete()
    assert len(h.providers["claude"].runs) == 1
    assert h.router.quota.state("claude").state == "exhausted"


def test_successful_run_reports_its_windows():
    """
    Windows on a successful answer are recorded; a warning changes nothing
    about routing.
    """
    h = Harness()
    d = h.complete()
    h.providers["claude"].last.emit("ok").succeed(
        ProviderResult(quota=(window("seven_day", "allowed_warning", 0.8, resets_in=86400),))
    )
    outcome(d)
    assert h.router.quota.state("claude").state == "warning"
    d = h.complete()
    assert len(h.providers["claude"].runs) == 2


def test_a_spent_model_quota_holds_back_only_that_model():
    """
    Gemini's daily quotas are per model: a spent one refuses (or moves to
    the fallback) requests for that model only; the provider as a whole is
    then only in warning.
    """
    h = Harness()
    h.router.quota.observe("gemini", [QuotaWindow("daily", "rejected", 1.0, NOW + 3600, "error", model="pro")])
    assert h.router.quota.state("gemini").state == "warning"
    error = outcome(h.complete("gemini-pro", fallback=False))
    assert isinstance(error, QuotaExhausted) and error.retry_after == 3600
    d = h.complete("gemini-flash", fallback=False)
    h.providers["gemini"].last.emit("flash").succeed()
    assert outcome(d).provider == "gemini"
    assert [upstream for _, upstream in h.providers["gemini"].starts] == ["flash"]
    d = h.complete("gemini-pro")
    h.providers["claude"].last.emit("claude").succeed()
    assert outcome(d).provider == "claude"


def test_queued_request_is_refused_when_the_window_is_spent_meanwhile():
    """
    A request that waited for a slot while the provider's window was spent
    is not started on it: it falls back instead.
    """
    h = Harness()
    first, second = h.complete(), h.complete()
    third = h.complete()  # two CLI slots: this one waits
    assert len(h.providers["claude"].runs) == 2
    h.spend()
    h.providers["claude"].runs[0].emit("a").succeed()
    assert len(h.providers["claude"].runs) == 2
    h.providers["gemini"].last.emit("b").succeed()
    assert outcome(third).provider == "gemini"
    h.providers["claude"].runs[1].emit("c").succeed()
    assert outcome(first).provider == outcome(second).provider == "claude"
