"""
The small stateful parts under the router: the request queue, the circuit
breaker and the health cache, each on its own, with time on a L{Clock}.
"""

from __future__ import annotations

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from shellm.completion import ProviderHealth
from shellm.errors import QueueFull
from shellm.routing.circuit import Circuit
from shellm.routing.health import HealthMonitor, overall_status
from tests.fake_providers import FakeProvider

OK = ProviderHealth(True, True)
NOT_INSTALLED = ProviderHealth(False, False, "not found")
NOT_LOGGED_IN = ProviderHealth(True, False, "not logged in: run login")


def outcome(d: Deferred):
    """
    What C{d} holds now: its result, a L{Failure}, or L{None} if nothing.
    """
    got: list = []
    d.addBoth(got.append)
    return got[0] if got else None


# -- RequestQueue


def make_queue(max_concurrent: int = 2, max_waiting: int = 2):
    from shellm.routing.queue import RequestQueue

    return RequestQueue("cli", max_concurrent, max_waiting)


def test_queue_counts_active_and_pending():
    """
    Up to C{max_concurrent} acquire at once; the rest wait, in order, and
    each release hands the slot to the first waiter.
    """
    queue = make_queue(max_concurrent=2, max_waiting=5)
    granted = [queue.acquire() for _ in range(4)]
    assert [d.called for d in granted] == [True, True, False, False]
    assert (queue.active, queue.pending) == (2, 2)
    queue.release(1.0)
    assert [d.called for d in granted] == [True, True, True, False]
    assert (queue.active, queue.pending) == (2, 1)
    queue.release(1.0)
    queue.release(1.0)
    assert (queue.active, queue.pending) == (1, 0)
    queue.release(1.0)
    assert (queue.active, queue.pending) == (0, 0)


def test_queue_full_raises_with_retry_after():
    """
    With every slot busy and the line at its limit, acquire raises
    QueueFull (429 queue_full) with a whole, positive retry_after, and the
    line does not grow.
    """
    queue = make_queue(max_concurrent=1, max_waiting=2)
    queue.acquire(), queue.acquire(), queue.acquire()
    with pytest.raises(QueueFull) as caught:
        queue.acquire()
    error = caught.value
    assert error.status == 429 and error.code == "queue_full"
    assert isinstance(error.retry_after, int) and error.retry_after >= 1
    assert (queue.active, queue.pending) == (1, 2)


def test_queue_with_no_waiting_room_refuses_at_once():
    """
    A line of length zero: a request either gets a slot or is refused.
    """
    queue = make_queue(max_concurrent=1, max_waiting=0)
    assert queue.acquire().called
    with pytest.raises(QueueFull):
        queue.acquire()
    queue.release(0)
    assert queue.acquire().called


def test_queue_full_only_when_no_slot_is_free():
    """
    A free slot is always given, whatever the line's limit.
    """
    queue = make_queue(max_concurrent=3, max_waiting=0)
    assert all(queue.acquire().called for _ in range(3))


def test_retry_after_grows_with_the_line_and_hold_time():
    """
    Retry-After estimates when the line moves: longer holds and a longer
    line ask the client to wait longer.
    """
    queue = make_queue(max_concurrent=1, max_waiting=10)
    queue.acquire()
    short_line = queue.retry_after()
    for _ in range(5):
        queue.acquire()
    assert queue.retry_after() > short_line
    before = queue.retry_after()
    for _ in range(5):
        queue.release(60.0)
        queue.acquire()
    assert queue.retry_after() > before


def test_cancelling_a_waiter_leaves_the_line():
    """
    A cancelled waiter leaves the line at once, and never gets a slot when
    one frees up.
    """
    queue = make_queue(max_concurrent=1, max_waiting=5)
    queue.acquire()
    first, second = queue.acquire(), queue.acquire()
    first.cancel()
    assert isinstance(outcome(first).value, CancelledError)
    assert queue.pending == 1
    queue.release(0)
    assert second.called
    assert (queue.active, queue.pending) == (1, 0)


def test_cancelling_a_waiter_makes_room_in_the_line():
    """
    The room a cancelled waiter leaves can be taken by a new request.
    """
    queue = make_queue(max_concurrent=1, max_waiting=1)
    queue.acquire()
    waiting = queue.acquire()
    with pytest.raises(QueueFull):
        queue.acquire()
    waiting.cancel()
    outcome(waiting)
    queue.acquire()
    assert queue.pending == 1


def test_queue_to_json():
    """
    The queue reports its counts and limits.
    """
    queue = make_queue(max_concurrent=2, max_waiting=7)
    queue.acquire(), queue.acquire(), queue.acquire()
    report = queue.to_json()
    assert (report["active"], report["pending"], report["max_concurrent"]) == (2, 1, 2)
    assert report["max_queue_depth"] == 7


# -- Circuit


@pytest.fixture
def clock() -> Clock:
    c = Clock()
    c.advance(10_000)
    return c


def open_circuit(clock, threshold=3, cooldown=60.0) -> Circuit:
    circuit = Circuit(clock, threshold, cooldown)
    for _ in range(threshold):
        assert circuit.begin()
        circuit.failed()
    assert circuit.state == "open"
    return circuit


def test_circuit_starts_closed(clock):
    """
    A new circuit lets everything through.
    """
    circuit = Circuit(clock, 3, 60)
    assert circuit.state == "closed"
    assert circuit.allows()
    assert all(circuit.begin() for _ in range(10))


def test_circuit_opens_after_threshold_consecutive_failures(clock):
    """
    Exactly N consecutive failures open it; then nothing is let through.
    """
    circuit = Circuit(clock, 3, 60)
    circuit.failed()
    circuit.failed()
    assert circuit.state == "closed" and circuit.allows()
    circuit.failed()
    assert circuit.state == "open"
    assert not circuit.allows()
    assert not circuit.begin()


def test_success_resets_consecutive_failures(clock):
    """
    Only consecutive failures count: a success starts again from zero.
    """
    circuit = Circuit(clock, 3, 60)
    circuit.failed()
    circuit.failed()
    circuit.succeeded()
    assert circuit.failures == 0
    circuit.failed()
    circuit.failed()
    assert circuit.state == "closed"


def test_abandoned_neither_counts_nor_resets(clock):
    """
    An abandoned request (client error, disconnect) leaves the count as it is.
    """
    circuit = Circuit(clock, 3, 60)
    circuit.failed()
    circuit.abandoned()
    assert circuit.failures == 1
    circuit.failed()
    circuit.failed()
    assert circuit.state == "open"


def test_half_open_after_cooldown(clock):
    """
    The circuit stays open for the whole cool-down, then is half-open.
    """
    circuit = open_circuit(clock)
    clock.advance(59.9)
    assert circuit.state == "open" and not circuit.allows()
    clock.advance(0.1)
    assert circuit.state == "half_open" and circuit.allows()


def test_half_open_allows_exactly_one_probe(clock):
    """
    In half-open, the first begin() gets the probe; every other request is
    refused while it runs, however much time passes.
    """
    circuit = open_circuit(clock)
    clock.advance(60)
    assert circuit.begin()
    assert not circuit.allows()
    assert not circuit.begin()
    clock.advance(600)
    assert not circuit.begin()


def test_probe_success_closes(clock):
    """
    A successful probe closes the circuit and clears the count.
    """
    circuit = open_circuit(clock)
    clock.advance(60)
    circuit.begin()
    circuit.succeeded()
    assert circuit.state == "closed"
    assert circuit.failures == 0
    assert circuit.begin() and circuit.begin()


def test_probe_failure_reopens_for_a_full_cooldown(clock):
    """
    A failed probe opens the circuit again at once (one failure is enough),
    and the cool-down starts over from the probe's failure.
    """
    circuit = open_circuit(clock)
    clock.advance(60)
    circuit.begin()
    clock.advance(5)
    circuit.failed()
    assert circuit.state == "open" and not circuit.begin()
    clock.advance(59)
    assert circuit.state == "open"
    clock.advance(1)
    assert circuit.state == "half_open"
    assert circuit.begin()


def test_abandoned_probe_frees_the_probe(clock):
    """
    A probe that ends without a verdict lets the next request probe.
    """
    circuit = open_circuit(clock)
    clock.advance(60)
    assert circuit.begin()
    circuit.abandoned()
    assert circuit.state == "half_open"
    assert circuit.allows() and circuit.begin()


def test_allows_has_no_side_effect(clock):
    """
    Asking whether a request would pass does not take the probe.
    """
    circuit = open_circuit(clock)
    clock.advance(60)
    assert circuit.allows() and circuit.allows()
    assert circuit.begin()


def test_circuit_reports_state_count_and_transition_time(clock):
    """
    to_json shows the state, the consecutive failures and when it last
    changed.
    """
    circuit = Circuit(clock, 2, 30)
    report = circuit.to_json()
    assert report["state"] == "closed" and report["consecutive_failures"] == 0
    circuit.failed()
    clock.advance(3)
    circuit.failed()
    report = circuit.to_json()
    assert report["state"] == "open"
    assert report["consecutive_failures"] == 2
    assert report["changed_at"] is not None
    opened = report["changed_at"]
    clock.advance(30)
    assert circuit.to_json()["state"] == "half_open"
    circuit.begin()
    circuit.succeeded()
    assert circuit.to_json()["state"] == "closed"
    assert circuit.to_json()["changed_at"] != opened
    assert circuit.changed_at == clock.seconds()


# -- HealthMonitor


def monitor(clock, ttl=30.0, **healths):
    providers = {name: FakeProvider(name) for name in ("claude", "gemini")}
    for name, provider in providers.items():
        provider.health = healths.get(name, OK)
    return HealthMonitor(clock, providers, ttl), providers


def test_first_call_waits_for_the_checks(clock):
    """
    Before anything was checked, current() waits for every provider's
    check; callers that come meanwhile wait for the same check.
    """
    health, providers = monitor(clock)
    for p in providers.values():
        p.hold_health = True
    first, second = health.current(), health.current()
    assert not first.called and not second.called
    assert [p.health_checks for p in providers.values()] == [1, 1]
    providers["claude"].answer_health(OK)
    assert not first.called
    providers["gemini"].answer_health(NOT_LOGGED_IN)
    assert outcome(first) == {"claude": OK, "gemini": NOT_LOGGED_IN}
    assert outcome(second) == {"claude": OK, "gemini": NOT_LOGGED_IN}


def test_answers_from_the_cache_within_the_ttl(clock):
    """
    Within the TTL, current() answers from the cache without checking.
    """
    health, providers = monitor(clock)
    outcome(health.current())
    clock.advance(29.9)
    assert outcome(health.current())["claude"] == OK
    assert providers["claude"].health_checks == 1


def test_stale_is_served_while_refreshing(clock):
    """
    After the TTL, the stale answer is served at once while one refresh
    runs; when it ends, the new answer is served.
    """
    health, providers = monitor(clock)
    outcome(health.current())
    clock.advance(30)
    for p in providers.values():
        p.hold_health = True
    stale = health.current()
    assert outcome(stale)["gemini"] == OK
    assert providers["gemini"].health_checks == 2
    assert outcome(health.current())["gemini"] == OK
    assert providers["gemini"].health_checks == 2  # one refresh at a time
    providers["claude"].answer_health(OK)
    providers["gemini"].answer_health(NOT_INSTALLED)
    assert outcome(health.current())["gemini"] == NOT_INSTALLED
    assert providers["gemini"].health_checks == 2
    clock.advance(30)
    health.current()
    assert providers["gemini"].health_checks == 3


def test_cached_and_known_unusable(clock):
    """
    cached() is the last answer (None before any); known_unusable() names
    only providers checked and found unusable.
    """
    health, _ = monitor(clock, gemini=NOT_INSTALLED)
    assert health.cached("claude") is None
    assert health.known_unusable("gemini") is None  # unknown is not unusable
    outcome(health.current())
    assert health.cached("claude") == OK
    assert health.known_unusable("claude") is None
    assert health.known_unusable("gemini") == NOT_INSTALLED


def test_mark_not_logged_in(clock):
    """
    A run that proved the login is gone makes the provider unusable until
    the next check says otherwise, keeping what was known of it.
    """
    health, providers = monitor(clock, claude=ProviderHealth(True, True, None, "2.0.1"))
    outcome(health.current())
    health.mark_not_logged_in("claude", "claude is not logged in")
    marked = health.cached("claude")
    assert marked.installed and not marked.authenticated and not marked.usable
    assert marked.error == "claude is not logged in"
    assert marked.version == "2.0.1"
    assert health.known_unusable("claude") == marked
    assert outcome(health.current())["claude"] == marked  # still within the TTL
    clock.advance(30)
    health.current()  # the refresh answers at once
    assert health.cached("claude") == providers["claude"].health


def test_mark_not_logged_in_before_any_check(clock):
    """
    Marking a provider never checked still makes it known unusable.
    """
    health, _ = monitor(clock)
    health.mark_not_logged_in("gemini", "gemini is not logged in")
    assert health.known_unusable("gemini") is not None


def test_failing_check_becomes_an_unusable_entry(clock):
    """
    A check whose Deferred fails counts as a provider that cannot be used,
    with a short message, and does not hide the other providers' answers.
    """
    health, providers = monitor(clock)
    providers["gemini"].health_error = RuntimeError("boom: /secret/path")
    result = outcome(health.current())
    assert result["claude"] == OK
    assert not result["gemini"].usable
    assert result["gemini"].error and "secret" not in result["gemini"].error


def test_check_that_raises_becomes_an_unusable_entry(clock):
    """
    A check that raises instead of returning a Deferred (e.g. an OSError
    from mkdtemp) is treated the same: an unusable entry, and later
    refreshes still run.
    """
    health, providers = monitor(clock)
    providers["gemini"].health_error = OSError("No space left on device")
    providers["gemini"].raise_in_health = True
    try:
        result = outcome(health.current())
    except OSError:
        pytest.fail("HealthMonitor.current() let a raising check escape")
    assert result is not None and not isinstance(result, Failure)
    assert result["claude"] == OK and not result["gemini"].usable
    providers["gemini"].health_error = None
    clock.advance(30)
    health.current()
    assert health.cached("gemini") == OK


def test_refresh_runs_one_check_at_a_time(clock):
    """
    refresh() while a refresh is running does not start another check.
    """
    health, providers = monitor(clock)
    providers["claude"].hold_health = True
    health.refresh()
    health.refresh()
    assert providers["claude"].health_checks == 1
    providers["claude"].answer_health()
    health.refresh()
    assert providers["claude"].health_checks == 2


@pytest.mark.parametrize(
    "healths, status",
    [
        ({"a": OK, "b": OK}, "ok"),
        ({"a": OK, "b": NOT_LOGGED_IN}, "degraded"),
        ({"a": NOT_INSTALLED, "b": OK}, "degraded"),
        ({"a": NOT_INSTALLED, "b": NOT_LOGGED_IN}, "down"),
        ({}, "down"),
    ],
)
def test_overall_status(healths, status):
    """
    ok when every provider is usable, degraded when some are, down when none
    (or none are known).
    """
    assert overall_status(healths) == status


def test_stale_unusable_verdict_refuses_nothing_and_rechecks(clock):
    """
    Once a check is older than the TTL, a provider it found unusable is
    tried again (the user may have logged in since), and a new check starts.
    """
    health, providers = monitor(clock, gemini=NOT_LOGGED_IN)
    outcome(health.current())
    assert health.known_unusable("gemini") == NOT_LOGGED_IN
    calls = providers["gemini"].health_checks
    providers["gemini"].health = OK
    clock.advance(31)
    assert health.known_unusable("gemini") is None
    assert providers["gemini"].health_checks == calls + 1
    assert health.cached("gemini") == OK
