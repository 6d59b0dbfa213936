"""
Usage accounting: every completion request, however it ends, becomes
Prometheus metrics and one usage-ledger row.
"""

from __future__ import annotations

from typing import Any

from attrs import evolve

from shellm.completion import Completion, CompletionRequest, EventSink, TextDelta, Usage
from shellm.state.ledger import Ledger, UsageRecord
from shellm.state.metrics import Metrics

#: Characters of a prompt or an answer kept when SHELLM_LOG_BODIES=1.
BODY_CAP = 4096

#: The provider a request answered from the response cache is counted
#: under: no provider ran, so none is charged tokens, cost or time.
CACHE_PROVIDER = "cache"


class Accounting:
    """
    @ivar metrics: the daemon's Prometheus metrics.
    """

    def __init__(self, clock: Any, metrics: Metrics, ledger: Ledger | None = None):
        """
        @param ledger: where usage rows go; none means nowhere.
        """
        self._clock = clock
        self.metrics = metrics
        self._ledger = ledger
        #: SHELLM_LOG_BODIES: keep prompts and answers (capped) in the log.
        self.log_bodies = False

    def timing_first_delta(self, provider: str, started: float, sink: EventSink) -> EventSink:
        """
        C{sink}, observing the time to the first delta on the way.
        """
        first: list[bool] = []

        def timed(event: TextDelta) -> None:
            if not first:
                first.append(True)
                self.metrics.labelled(self.metrics.first_token, provider).observe(self._clock.seconds() - started)
            sink(event)

        return timed

    def record(
        self,
        client: str,
        request: CompletionRequest,
        status: int,
        completion: Completion | None,
        started: float,
        key_id: str | None = None,
        endpoint: str | None = None,
        error_code: str | None = None,
        cached: bool = False,
    ) -> None:
        """
        Count one finished request: C{status} is what its client got (499
        when it left first), C{completion} the answer when there was one.

        @param cached: the answer came from the response cache: it is
            counted under the provider L{CACHE_PROVIDER}, with no tokens
            and no cost (the client still sees the original usage).
        """
        provider = completion.provider if completion else request.entry.provider
        if cached:
            provider = CACHE_PROVIDER
        elapsed = self._clock.seconds() - started
        metrics = self.metrics
        metrics.labelled(metrics.requests, provider, request.model, str(status), client).inc()
        metrics.labelled(metrics.duration, provider).observe(elapsed)
        usage = completion.usage if completion and not cached else None
        if cached and completion is not None:
            usage = Usage(0, 0)
            completion = evolve(completion, usage=usage, cost_usd=0.0, duration_ms=round(elapsed * 1000))
        elif completion is not None:
            metrics.labelled(metrics.queue_wait, provider).observe(completion.queued_ms / 1000)
        if usage is not None:
            metrics.labelled(metrics.tokens, provider, client, "input").inc(usage.input_tokens)
            metrics.labelled(metrics.tokens, provider, client, "output").inc(usage.output_tokens)
        if self._ledger is None:
            return
        self._ledger.record(
            UsageRecord(
                time=self._clock.seconds(),
                client=client,
                provider=provider,
                model=completion.model if completion else request.model,
                status=status,
                input_tokens=usage.input_tokens if usage else None,
                output_tokens=usage.output_tokens if usage else None,
                cost_usd=completion.cost_usd if completion else None,
                duration_ms=completion.duration_ms if completion else round(elapsed * 1000),
                queued_ms=completion.queued_ms if completion else None,
                request_id=request.request_id,
                key_id=key_id,
                endpoint=endpoint,
                error_code=error_code,
                fallback=completion.fallback.original_provider if completion and completion.fallback else None,
                prompt_text=request.prompt[:BODY_CAP] if self.log_bodies else None,
                answer_text=completion.content[:BODY_CAP] if self.log_bodies and completion else None,
                template=request.template,
            )
        )
