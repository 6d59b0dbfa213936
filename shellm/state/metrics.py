"""
Prometheus metrics, in a registry of the daemon's own.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}


class _LiveState:
    """
    Gauges read at scrape time from the queues and circuits themselves, so
    they can never drift from the truth.
    """

    def __init__(self, queues, circuits, quota=None):
        self._queues = queues
        self._circuits = circuits
        self._quota = quota

    def describe(self):
        return []

    def collect(self):
        active = GaugeMetricFamily("shellm_in_flight", "Calls holding a slot", labels=["queue"])
        waiting = GaugeMetricFamily("shellm_queued", "Requests waiting for a slot", labels=["queue"])
        for name, queue in self._queues.items():
            active.add_metric([name], queue.active)
            waiting.add_metric([name], queue.pending)
        circuits = GaugeMetricFamily(
            "shellm_circuit_state",
            "Circuit breaker: 0 closed, 1 half-open, 2 open",
            labels=["provider"],
        )
        for name, circuit in self._circuits.items():
            circuits.add_metric([name], _CIRCUIT_STATES[circuit.state])
        return [active, waiting, circuits, *self._quota_gauges()]

    def _quota_gauges(self):
        if self._quota is None:
            return []
        used = GaugeMetricFamily(
            "shellm_quota_used_ratio",
            "Used share of a subscription window, as its CLI last reported it",
            labels=["provider", "window", "model"],
        )
        resets = GaugeMetricFamily(
            "shellm_quota_resets_at_seconds",
            "When a subscription window resets, Unix time",
            labels=["provider", "window", "model"],
        )
        exhausted = GaugeMetricFamily(
            "shellm_quota_exhausted",
            "1 while a provider is skipped because a subscription window of its own (not a model's) is spent",
            labels=["provider"],
        )
        for provider in self._quota.providers():
            state = self._quota.state(provider)
            exhausted.add_metric([provider], 1 if state.state == "exhausted" else 0)
            for window in state.windows:
                # model: empty for a window of the whole provider.
                labels = [provider, window.kind, window.model or ""]
                if window.used is not None:
                    used.add_metric(labels, window.used)
                if window.resets_at is not None:
                    resets.add_metric(labels, window.resets_at)
        return [used, resets, exhausted]


class _CacheState:
    """
    The response cache's counts and size, read at scrape time from its
    C{stats()}.
    """

    def __init__(self, cache):
        self._cache = cache

    def describe(self):
        return []

    def collect(self):
        stats = self._cache.stats()
        requests = CounterMetricFamily(
            "shellm_cache_requests",
            "Completion requests by what the response cache did: hit, miss, or bypass (not read)",
            labels=["result"],
        )
        for result, name in (("hit", "hits"), ("miss", "misses"), ("bypass", "bypasses")):
            requests.add_metric([result], stats[name])
        entries = GaugeMetricFamily("shellm_cache_entries", "Answers held by the response cache")
        entries.add_metric([], stats["entries"])
        size = GaugeMetricFamily("shellm_cache_bytes", "Bytes held by the response cache (text and overhead)")
        size.add_metric([], stats["bytes"])
        return [requests, entries, size]


class Metrics:
    content_type = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self, queues, circuits, quota=None):
        """
        @param queues: the queues by name; @param circuits: the circuit
        breakers by provider; @param quota: the subscription windows (a
        L{shellm.routing.quota.QuotaTracker}).  All are read live at each
        scrape.
        """
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "shellm_requests",
            "Completion requests by outcome",
            ["provider", "model", "status", "client"],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "shellm_queue_wait_seconds",
            "Time waiting for a slot",
            ["provider"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_token = Histogram(
            "shellm_time_to_first_token_seconds",
            "Time from request to the first delta",
            ["provider"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.duration = Histogram(
            "shellm_request_duration_seconds",
            "Time from request to the end of the answer",
            ["provider"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "shellm_tokens",
            "Tokens reported by providers",
            ["provider", "client", "direction"],
            registry=self.registry,
        )
        self.provider_calls = Counter(
            "shellm_provider_calls",
            "Provider runs (CLI exits, API calls) by outcome",
            ["provider", "outcome"],
            registry=self.registry,
        )
        self.reload_failures = Counter(
            "shellm_reload_failures",
            "SIGHUP reloads refused, the clients before them kept",
            registry=self.registry,
        )
        self.last_reload_ok = Gauge(
            "shellm_last_reload_success",
            "1 if the last SIGHUP reload was applied (or none was tried), 0 if it was refused",
            registry=self.registry,
        )
        self.last_reload_ok.set(1)
        self.registry.register(_LiveState(queues, circuits, quota))
        self._children: dict[tuple, object] = {}

    def labelled(self, metric, *values: str):
        """
        C{metric.labels(*values)}, looked up once: prometheus_client checks
        and converts the values again on every call (seven times a request).
        """
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def reload_done(self, applied: bool) -> None:
        """
        Count the outcome of a reload of the settings (SIGHUP).
        """
        self.last_reload_ok.set(1 if applied else 0)
        if not applied:
            self.reload_failures.inc()

    def watch_cache(self, cache) -> None:
        """
        Show the response cache (L{shellm.routing.cache.ResponseCache}):
        its counts and size, read from it at scrape time.
        """
        self.registry.register(_CacheState(cache))

    def count_call(self, provider: str, outcome: str) -> None:
        self.labelled(self.provider_calls, provider, outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
