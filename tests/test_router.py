"""
The router's fallback rules and circuit breakers, with fake providers driven
by hand and time on a L{Clock}.
"""

from __future__ import annotations

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from shellm.completion import Completion, CompletionRequest, ProviderHealth, TextDelta
from shellm.errors import (
    InvalidRequest,
    NotLoggedIn,
    ProviderFailed,
    ProviderUnavailable,
    QueueFull,
    RateLimited,
    ShellmError,
    Timeout,
)
from shellm.models import DEFAULT_MODELS, merge_models
from shellm.routing.router import Router
from tests.fake_providers import fake_providers, make_router

THRESHOLD = 3
COOLDOWN = 60.0

PROVIDER_SIDE = [
    ProviderFailed("claude failed (exit code 1)"),
    ProviderUnavailable("claude is not installed"),
    Timeout("claude did not finish in time"),
]
NOT_PROVIDER_SIDE = [
    InvalidRequest("claude refused the request"),
    RateLimited("claude: the upstream rate limit was reached", retry_after=60),
    QueueFull("the queue is full", retry_after=3),
]


class Harness:
    """
    A real router over fake providers, and a way to send it requests.
    """

    def __init__(self, **settings):
        self.clock = Clock()
        self.clock.advance(500)
        self.providers = fake_providers()
        settings.setdefault("circuit_threshold", THRESHOLD)
        settings.setdefault("circuit_cooldown", COOLDOWN)
        self.router: Router = make_router(self.clock, self.providers, **settings)

    def request(self, model: str = "claude", fallback: bool = True, request_id: str = "req-1") -> CompletionRequest:
        entry = self.router.models.resolve(model)
        assert entry is not None, model
        return CompletionRequest(model=model, entry=entry, prompt="hello", request_id=request_id, fallback=fallback)

    def complete(self, model: str = "claude", fallback: bool = True, sink=None, streaming: bool = False) -> Deferred:
        sink = sink if sink is not None else (lambda event: None)
        return Deferred.fromCoroutine(self.router.complete(self.request(model, fallback), sink, streaming=streaming))

    def fail_once(self, name: str = "claude", error: ShellmError | None = None) -> ShellmError:
        """
        Send one request for C{name} without fallback and fail its run.
        """
        d = self.complete(name, fallback=False)
        provider = self.providers[name]
        runs = len(provider.runs)
        assert runs, f"{name} did not start"
        provider.last.fail(error or ProviderFailed(f"{name} failed (exit code 1)"))
        return failure_of(d)

    def succeed_once(self, name: str = "claude") -> Completion:
        d = self.complete(name, fallback=False)
        self.providers[name].last.emit("ok").succeed()
        return result_of(d)

    def starts(self) -> dict[str, int]:
        return {name: len(p.runs) for name, p in self.providers.items()}


def result_of(d: Deferred):
    """
    The result a Deferred already has (like trial's successResultOf).
    """
    got: list = []
    d.addBoth(got.append)
    assert got, "no result yet"
    if isinstance(got[0], Failure):
        got[0].raiseException()
    return got[0]


def failure_of(d: Deferred) -> BaseException:
    """
    The exception a Deferred has already failed with.
    """
    got: list = []
    d.addBoth(got.append)
    assert got, "no result yet"
    assert isinstance(got[0], Failure), f"succeeded with {got[0]!r}"
    return got[0].value


@pytest.fixture
def h() -> Harness:
    return Harness()


# -- fallback


@pytest.mark.parametrize("error", PROVIDER_SIDE, ids=lambda e: e.code)
def test_falls_back_on_provider_side_failures(h, error):
    """
    A 502, 503 or 504 from the first provider hands the request to the next
    usable provider of the chain, and the result says so.
    """
    d = h.complete("claude")
    h.providers["claude"].last.fail(error)
    assert h.starts() == {"claude": 1, "gemini": 1, "codex": 0, "cerebras": 0}
    h.providers["gemini"].last.emit("from ", "gemini").succeed()
    completion = result_of(d)
    assert completion.provider == "gemini"
    assert completion.content == "from gemini"
    assert completion.fallback is not None
    assert completion.fallback.original_provider == "claude"
    assert completion.fallback.original_error == {"error": error.code, "message": error.message}


@pytest.mark.parametrize("error", NOT_PROVIDER_SIDE, ids=lambda e: e.code)
def test_never_falls_back_on_client_side_or_rate_limit_errors(h, error):
    """
    A 400 or a 429 is the answer: no other provider is tried.
    """
    d = h.complete("claude")
    h.providers["claude"].last.fail(error)
    assert failure_of(d) is error
    assert h.starts() == {"claude": 1, "gemini": 0, "codex": 0, "cerebras": 0}


def test_at_most_one_fallback(h):
    """
    When the alternate fails too, the request fails: the third provider of
    the chain is never tried.
    """
    d = h.complete("claude")
    h.providers["claude"].last.fail(ProviderFailed("claude failed"))
    h.providers["gemini"].last.fail(Timeout("gemini did not finish in time"))
    error = failure_of(d)
    assert isinstance(error, ShellmError) and error.provider_side
    assert h.starts() == {"claude": 1, "gemini": 1, "codex": 0, "cerebras": 0}


def test_fallback_false_disables_it(h):
    """
    A request with fallback disabled gets the first provider's error.
    """
    d = h.complete("claude", fallback=False)
    error = Timeout("claude did not finish in time")
    h.providers["claude"].last.fail(error)
    assert failure_of(d) is error
    assert h.starts() == {"claude": 1, "gemini": 0, "codex": 0, "cerebras": 0}


def test_alternate_runs_its_own_default_model(h):
    """
    The requested alias is not sent to another vendor: the alternate runs
    with the upstream model of its own provider-named entry, and the result
    names that model.
    """
    d = h.complete("claude-opus")
    assert h.providers["claude"].last.upstream_model == "opus"
    h.providers["claude"].last.fail(ProviderFailed("claude failed"))
    assert h.providers["gemini"].last.upstream_model is None
    h.providers["gemini"].last.succeed()
    assert result_of(d).model == "gemini"


def test_alternate_default_model_comes_from_the_model_table():
    """
    The alternate's model is whatever its provider-named entry says, so a
    table that changes that entry changes what the fallback runs.
    """
    models = merge_models(DEFAULT_MODELS, {"gemini": {"provider": "gemini", "model": "gemini-2.5-pro"}})
    h = Harness(models=models)
    d = h.complete("claude-haiku")
    h.providers["claude"].last.fail(ProviderFailed("claude failed"))
    assert h.providers["gemini"].last.upstream_model == "gemini-2.5-pro"
    h.providers["gemini"].last.succeed()
    assert result_of(d).model == "gemini-2.5-pro"


def test_alternate_http_provider_gets_its_default_model():
    """
    Falling back to cerebras runs cerebras's own default model.
    """
    h = Harness(fallback_chain=("claude", "cerebras"))
    d = h.complete("claude-sonnet")
    h.providers["claude"].last.fail(ProviderFailed("claude failed"))
    assert h.providers["cerebras"].last.upstream_model == "gpt-oss-120b"
    h.providers["cerebras"].last.succeed()
    assert result_of(d).provider == "cerebras"


def test_fallback_from_a_provider_outside_the_chain(h):
    """
    A provider that is not in the chain falls back to the chain's first
    usable provider.
    """
    d = h.complete("codex-mini")
    h.providers["codex"].last.fail(ProviderFailed("codex failed"))
    assert h.providers["claude"].last.upstream_model is None
    h.providers["claude"].last.succeed()
    assert result_of(d).provider == "claude"


def test_no_alternate_means_the_original_error():
    """
    With no other provider in the chain, the first error is the answer.
    """
    h = Harness(fallback_chain=("claude",))
    d = h.complete("claude")
    error = ProviderFailed("claude failed")
    h.providers["claude"].last.fail(error)
    assert failure_of(d) is error
    assert h.starts()["claude"] == 1 and sum(h.starts().values()) == 1


def refresh_health(h: Harness, **healths: ProviderHealth) -> None:
    for name, health in healths.items():
        h.providers[name].health = health
    h.router.health.refresh()


def test_unusable_alternate_is_skipped_without_starting(h):
    """
    An alternate the health cache knows is not installed is skipped; the
    next usable one in the chain answers.
    """
    refresh_health(h, gemini=ProviderHealth(False, False, "gemini executable not found"))
    d = h.complete("claude")
    h.providers["claude"].last.fail(ProviderFailed("claude failed"))
    assert h.starts() == {"claude": 1, "gemini": 0, "codex": 0, "cerebras": 1}
    h.providers["cerebras"].last.succeed()
    assert result_of(d).provider == "cerebras"


def test_alternate_with_open_circuit_is_skipped(h):
    """
    An alternate whose circuit is open is skipped without starting.
    """
    for _ in range(THRESHOLD):
        h.fail_once("gemini")
    assert h.router.circuits["gemini"].state == "open"
    d = h.complete("claude")
    h.providers["claude"].last.fail(ProviderFailed("claude failed"))
    assert h.starts() == {"claude": 1, "gemini": THRESHOLD, "codex": 0, "cerebras": 1}
    h.providers["cerebras"].last.succeed()
    assert result_of(d).provider == "cerebras"


def test_known_unusable_first_provider_is_skipped_and_falls_back(h):
    """
    A provider the health cache knows is not logged in is never started: the
    request goes straight to the alternate, reporting why.
    """
    refresh_health(h, claude=ProviderHealth(True, False, "not logged in: run claude /login"))
    d = h.complete("claude")
    assert h.starts()["claude"] == 0
    h.providers["gemini"].last.succeed()
    completion = result_of(d)
    assert completion.provider == "gemini"
    assert completion.fallback.original_error["error"] == "provider_unavailable"
    assert "not logged in" in completion.fallback.original_error["message"]


def test_known_unusable_without_fallback_is_503_without_starting(h):
    """
    Without fallback, a provider known to be unusable fails at once with
    503, and is not started.
    """
    refresh_health(h, claude=ProviderHealth(False, False, "claude executable not found"))
    error = failure_of(h.complete("claude", fallback=False))
    assert isinstance(error, ProviderUnavailable)
    assert error.message == "claude executable not found"
    assert sum(h.starts().values()) == 0


def test_not_logged_in_run_marks_the_provider_unusable(h):
    """
    A run that proves the login is gone marks the provider unusable in the
    health cache, so the next request skips it without starting.
    """
    d = h.complete("claude")
    h.providers["claude"].last.fail(NotLoggedIn("claude is not logged in or its credentials were refused"))
    h.providers["gemini"].last.succeed()
    assert result_of(d).provider == "gemini"
    assert h.router.health.known_unusable("claude") is not None

    d = h.complete("claude")
    assert h.starts()["claude"] == 1
    h.providers["gemini"].last.succeed()
    assert result_of(d).provider == "gemini"


def test_every_alternate_unusable_gives_the_original_error(h):
    """
    When no alternate is usable, the original error is the answer and
    nothing else starts.
    """
    refresh_health(
        h,
        gemini=ProviderHealth(False, False, "gemini executable not found"),
        cerebras=ProviderHealth(True, False, "CEREBRAS_API_KEY is not set"),
    )
    d = h.complete("claude")
    error = Timeout("claude did not finish in time")
    h.providers["claude"].last.fail(error)
    assert failure_of(d) is error
    assert h.starts() == {"claude": 1, "gemini": 0, "codex": 0, "cerebras": 0}


def test_stream_no_fallback_once_a_delta_was_sent(h):
    """
    Once text has reached the client, a failure is the answer: switching
    provider mid-answer would glue two answers together.
    """
    seen: list[str] = []
    d = h.complete("claude", sink=lambda event: seen.append(event.text), streaming=True)
    h.providers["claude"].last.emit("Hel")
    assert seen == ["Hel"]
    error = ProviderFailed("claude failed (exit code 1)")
    h.providers["claude"].last.fail(error)
    assert failure_of(d) is error
    assert h.starts()["gemini"] == 0


def test_stream_fallback_before_any_delta(h):
    """
    Before any text was sent, a streaming request falls back like any other,
    and the sink receives only the alternate's deltas, in order.
    """
    seen: list[TextDelta] = []
    d = h.complete("claude", sink=seen.append, streaming=True)
    h.providers["claude"].last.fail(ProviderUnavailable("claude is not installed"))
    h.providers["gemini"].last.emit("a", "b", "c").succeed()
    assert [e.text for e in seen] == ["a", "b", "c"]
    assert result_of(d).content == "abc"


def test_fallback_duration_covers_both_attempts(h):
    """
    duration_ms is measured from the request's start, across the fallback.
    """
    d = h.complete("claude")
    h.clock.advance(2)
    h.providers["claude"].last.fail(Timeout("claude did not finish in time"))
    h.clock.advance(1.5)
    h.providers["gemini"].last.succeed()
    assert result_of(d).duration_ms == 3500


def test_cancelled_request_does_not_fall_back(h):
    """
    A client that goes away cancels the run; that is not a provider failure,
    so nothing else is started.
    """
    d = h.complete("claude")
    d.cancel()
    assert h.providers["claude"].last.cancelled
    assert isinstance(failure_of(d), CancelledError)
    assert h.starts()["gemini"] == 0


# -- circuit breaker


def test_circuit_opens_after_consecutive_failures(h):
    """
    N consecutive provider-side failures open the circuit; the next request
    fails at once with 503 and does not start the provider.
    """
    for _ in range(THRESHOLD - 1):
        h.fail_once("claude")
    assert h.router.circuits["claude"].state == "closed"
    h.fail_once("claude")
    assert h.router.circuits["claude"].state == "open"
    error = failure_of(h.complete("claude", fallback=False))
    assert isinstance(error, ProviderUnavailable)
    assert h.starts()["claude"] == THRESHOLD


def test_open_circuit_with_fallback_goes_to_the_alternate(h):
    """
    While the circuit is open, a request with fallback goes straight to the
    alternate.
    """
    for _ in range(THRESHOLD):
        h.fail_once("claude")
    d = h.complete("claude")
    h.providers["gemini"].last.succeed()
    completion = result_of(d)
    assert completion.provider == "gemini"
    assert completion.fallback.original_error["error"] == "provider_unavailable"
    assert h.starts()["claude"] == THRESHOLD


def test_success_resets_the_failure_count(h):
    """
    The failures must be consecutive: a success in between starts the count
    again.
    """
    for _ in range(THRESHOLD - 1):
        h.fail_once("claude")
    h.succeed_once("claude")
    for _ in range(THRESHOLD - 1):
        h.fail_once("claude")
    assert h.router.circuits["claude"].state == "closed"


def test_half_open_after_cooldown_allows_exactly_one_probe(h):
    """
    After the cool-down exactly one request is let through as a probe; a
    second one while it runs is refused without starting.
    """
    for _ in range(THRESHOLD):
        h.fail_once("claude")
    h.clock.advance(COOLDOWN - 0.1)
    assert isinstance(failure_of(h.complete("claude", fallback=False)), ProviderUnavailable)
    assert h.starts()["claude"] == THRESHOLD

    h.clock.advance(0.1)
    assert h.router.circuits["claude"].state == "half_open"
    probe = h.complete("claude", fallback=False)
    assert h.starts()["claude"] == THRESHOLD + 1
    second = h.complete("claude", fallback=False)
    assert isinstance(failure_of(second), ProviderUnavailable)
    assert h.starts()["claude"] == THRESHOLD + 1
    h.providers["claude"].last.succeed()
    assert result_of(probe).provider == "claude"


def test_probe_success_closes_the_circuit(h):
    """
    A successful probe closes the circuit: requests flow again.
    """
    for _ in range(THRESHOLD):
        h.fail_once("claude")
    h.clock.advance(COOLDOWN)
    h.succeed_once("claude")
    assert h.router.circuits["claude"].state == "closed"
    assert h.router.circuits["claude"].failures == 0
    a = h.complete("claude", fallback=False)
    b = h.complete("claude", fallback=False)
    assert h.starts()["claude"] == THRESHOLD + 3
    for run in h.providers["claude"].runs[-2:]:
        run.succeed()
    result_of(a), result_of(b)


def test_probe_failure_reopens_the_circuit(h):
    """
    A failed probe opens the circuit again at once, for a whole new
    cool-down.
    """
    for _ in range(THRESHOLD):
        h.fail_once("claude")
    h.clock.advance(COOLDOWN)
    h.fail_once("claude")
    assert h.router.circuits["claude"].state == "open"
    assert isinstance(failure_of(h.complete("claude", fallback=False)), ProviderUnavailable)
    assert h.starts()["claude"] == THRESHOLD + 1
    h.clock.advance(COOLDOWN - 1)
    assert h.router.circuits["claude"].state == "open"
    h.clock.advance(1)
    assert h.router.circuits["claude"].state == "half_open"
    h.succeed_once("claude")
    assert h.router.circuits["claude"].state == "closed"


@pytest.mark.parametrize("error", [e for e in NOT_PROVIDER_SIDE if not isinstance(e, QueueFull)], ids=lambda e: e.code)
def test_client_errors_and_rate_limits_never_count(h, error):
    """
    Errors that say nothing about the provider's health never open the
    circuit, however many there are.
    """
    for _ in range(THRESHOLD * 2):
        h.fail_once("claude", error)
    assert h.router.circuits["claude"].state == "closed"
    assert h.router.circuits["claude"].failures == 0


def test_client_errors_do_not_break_the_failure_streak(h):
    """
    A client error between provider failures neither resets nor adds to
    the count of consecutive provider failures.
    """
    h.fail_once("claude")
    h.fail_once("claude", InvalidRequest("bad"))
    assert h.router.circuits["claude"].failures == 1


def test_queue_rejections_never_count():
    """
    Requests refused because the queue is full never touch the circuit,
    and never start the provider.
    """
    h = Harness(max_concurrent=1, max_queue_depth=0)
    running = h.complete("claude", fallback=False)
    for _ in range(THRESHOLD * 2):
        assert isinstance(failure_of(h.complete("claude", fallback=False)), QueueFull)
    assert h.router.circuits["claude"].state == "closed"
    assert h.router.circuits["claude"].failures == 0
    assert h.starts()["claude"] == 1
    h.providers["claude"].last.succeed()
    result_of(running)


def test_cancelled_requests_never_count(h):
    """
    Client disconnects are not provider failures.
    """
    for _ in range(THRESHOLD * 2):
        d = h.complete("claude", fallback=False)
        d.cancel()
        failure_of(d)
        h.providers["claude"].last.reap()
    assert h.router.circuits["claude"].state == "closed"
    assert h.router.circuits["claude"].failures == 0


def test_cancelled_probe_lets_another_probe_through(h):
    """
    A probe abandoned by its client says nothing about the provider: the
    circuit stays half-open and the next request may probe.
    """
    for _ in range(THRESHOLD):
        h.fail_once("claude")
    h.clock.advance(COOLDOWN)
    probe = h.complete("claude", fallback=False)
    probe.cancel()
    failure_of(probe)
    assert h.router.circuits["claude"].state == "half_open"
    h.succeed_once("claude")
    assert h.router.circuits["claude"].state == "closed"


def test_stream_failure_after_delta_counts(h):
    """
    Streams record their outcome too: provider failures after text was sent
    count towards opening the circuit.
    """
    for _ in range(THRESHOLD):
        d = h.complete("claude", sink=lambda event: None, streaming=True)
        h.providers["claude"].last.emit("x").fail(ProviderFailed("claude failed"))
        failure_of(d)
    assert h.router.circuits["claude"].state == "open"


def test_failure_of_the_alternate_counts_for_the_alternate(h):
    """
    Each attempt is judged against its own provider's circuit.
    """
    for _ in range(THRESHOLD):
        d = h.complete("claude")
        h.providers["claude"].last.fail(ProviderFailed("claude failed"))
        h.providers["gemini"].last.fail(ProviderFailed("gemini failed"))
        failure_of(d)
    assert h.router.circuits["claude"].state == "open"
    assert h.router.circuits["gemini"].state == "open"
    assert h.router.circuits["cerebras"].state == "closed"


def test_queue_slot_is_held_until_the_run_is_reaped():
    """
    A finished run keeps its slot until its process is reaped; only then
    does the next waiting request start.
    """
    h = Harness(max_concurrent=1)
    first = h.complete("claude", fallback=False)
    second = h.complete("claude", fallback=False)
    run = h.providers["claude"].last
    run.succeed(reap=False)
    result_of(first)
    assert h.starts()["claude"] == 1
    run.reap()
    assert h.starts()["claude"] == 2
    h.providers["claude"].last.succeed()
    result_of(second)
    queue = h.router.queues["cli"]
    assert (queue.active, queue.pending) == (0, 0)


def test_queued_ms_measures_the_wait():
    """
    queued_ms is the time spent waiting for a slot, on the clock.
    """
    h = Harness(max_concurrent=1)
    h.complete("claude", fallback=False)
    second = h.complete("claude", fallback=False)
    h.clock.advance(1.25)
    h.providers["claude"].runs[0].succeed()
    h.providers["claude"].runs[1].succeed()
    assert result_of(second).queued_ms == 1250
