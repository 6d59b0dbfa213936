"""
From a validated request to a finished completion: pick the provider, fail
fast when it is known to be unusable, wait for a queue slot, run it, and fall
back once to another provider when it fails on its side.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from twisted.internet.defer import CancelledError
from twisted.logger import Logger

from shellm.completion import (
    Completion,
    CompletionRequest,
    EventSink,
    FallbackInfo,
    ProviderResult,
    TextDelta,
)
from shellm.errors import NotLoggedIn, ProviderUnavailable, ShellmError
from shellm.models import ModelEntry, ModelTable
from shellm.routing.circuit import Circuit
from shellm.routing.health import HealthMonitor
from shellm.routing.queue import RequestQueue


class Router:
    log = Logger()

    def __init__(
        self,
        clock,
        providers: Mapping[str, object],
        models: ModelTable,
        queues: Mapping[str, RequestQueue],
        health: HealthMonitor,
        circuits: Mapping[str, Circuit],
        fallback_chain: tuple[str, ...],
        on_call: Callable[[str, str], None] | None = None,
    ):
        """
        @param queues: by provider kind, C{"cli"} and C{"http"}.
        @param on_call: told C{(provider, outcome)} after every provider run,
            the outcome being C{"ok"} or an error code.
        """
        self._on_call = on_call or (lambda provider, outcome: None)
        #: Cleared when shutdown stops waiting: queued work then starts nothing.
        self.accepting = True
        self._clock = clock
        self.providers = providers
        self.models = models
        self.queues = queues
        self.health = health
        self.circuits = circuits
        self.fallback_chain = fallback_chain

    def queue_for(self, provider_name: str) -> RequestQueue:
        return self.queues[self.providers[provider_name].kind]

    def unusable_reason(self, name: str) -> str | None:
        """
        Why C{name} should not even be tried, or L{None}.
        """
        health = self.health.known_unusable(name)
        if health is not None:
            return health.error or f"{name} is not available"
        if not self.circuits[name].allows():
            return f"{name} is failing; its circuit is open"
        return None

    async def complete(
        self,
        request: CompletionRequest,
        sink: EventSink,
        permits: Callable[[ModelEntry], bool] = lambda entry: True,
        streaming: bool = False,
    ) -> Completion:
        """
        Run C{request}, handing each delta to C{sink} as it arrives.

        @param permits: whether the caller may use a model table entry; a
            fallback never goes where the caller may not.

        Falls back once, to the next usable provider of the chain, when the
        first fails on its side (502/503/504) and the request allows it; when
        C{streaming}, only while no text has reached the client.
        """
        started = self._clock.seconds()
        sent: list[str] = []

        def forward(event: TextDelta) -> None:
            sent.append(event.text)
            sink(event)

        entry = request.entry
        try:
            result, queued = await self._attempt(request, entry, forward)
            fallback = None
        except ShellmError as error:
            alternate = (
                self._alternate(entry.provider, permits)
                if (error.provider_side and request.fallback and not (streaming and sent))
                else None
            )
            if alternate is None:
                raise
            self.log.warn(
                "{provider} failed ({code}); falling back to {alternate}",
                provider=entry.provider,
                code=error.code,
                alternate=alternate.provider,
                request_id=request.request_id,
            )
            fallback = FallbackInfo(entry.provider, error.to_json())
            sent.clear()  # only the answer that completes is the content
            result, queued = await self._attempt(request, alternate, forward)
            entry = alternate
        return Completion(
            content="".join(sent),
            provider=entry.provider,
            model=result.model or entry.upstream or entry.alias,
            duration_ms=round((self._clock.seconds() - started) * 1000),
            queued_ms=queued,
            request_id=request.request_id,
            usage=result.usage,
            cost_usd=result.cost_usd,
            fallback=fallback,
            finish_reason=result.finish_reason,
        )

    def _alternate(self, failed: str, permits) -> ModelEntry | None:
        if not self.accepting:
            return None  # shutting down: report the failure, start nothing new
        for name in self.fallback_chain:
            if name == failed or name not in self.providers or self.unusable_reason(name):
                continue
            entry = self.models.default_for(name)
            if permits(entry):
                return entry
        return None

    async def _attempt(
        self, request: CompletionRequest, entry: ModelEntry, sink: EventSink
    ) -> tuple[ProviderResult, int]:
        name = entry.provider
        reason = self.unusable_reason(name)
        if reason is not None:
            raise ProviderUnavailable(reason)
        provider = self.providers[name]
        queue = self.queue_for(name)
        circuit = self.circuits[name]
        asked = self._clock.seconds()
        await queue.acquire()
        granted = self._clock.seconds()
        queued_ms = round((granted - asked) * 1000)
        if not self.accepting:
            queue.release(0)
            raise ProviderUnavailable("SheLLM is shutting down")
        if not circuit.begin():
            queue.release(0)
            raise ProviderUnavailable(f"{name} is failing; its circuit is open")
        try:
            run = provider.start(request, entry.upstream, sink)
        except BaseException as e:
            queue.release(self._clock.seconds() - granted)
            self._judge(circuit, name, e)
            raise
        run.finished.addBoth(lambda _: queue.release(self._clock.seconds() - granted))
        try:
            result = await run.result
        except BaseException as e:
            self._judge(circuit, name, e)
            raise
        circuit.succeeded()
        self._on_call(name, "ok")
        return result, queued_ms

    def _judge(self, circuit: Circuit, name: str, error: BaseException) -> None:
        self._on_call(
            name,
            error.code
            if isinstance(error, ShellmError)
            else "cancelled"
            if isinstance(error, CancelledError)
            else "internal_error",
        )
        if isinstance(error, NotLoggedIn):
            self.health.mark_not_logged_in(name, error.message)
        if isinstance(error, ShellmError) and error.provider_side:
            circuit.failed()
        elif isinstance(error, (ShellmError, CancelledError)):
            circuit.abandoned()
        else:
            circuit.failed()
