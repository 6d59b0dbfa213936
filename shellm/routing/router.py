"""
From a validated request to a finished completion: pick the provider, fail
fast when it is known to be unusable, wait for a queue slot, run it, and fall
back once to another provider when it fails on its side.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from attrs import define
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from shellm.completion import (
    Completion,
    CompletionRequest,
    EventSink,
    FallbackInfo,
    ProviderResult,
    ProviderRun,
    TextDelta,
)
from shellm.errors import NotLoggedIn, ProviderUnavailable, QuotaExhausted, ShellmError, ShuttingDown
from shellm.models import ModelEntry, ModelTable
from shellm.routing.circuit import Circuit
from shellm.routing.health import HealthMonitor
from shellm.routing.queue import RequestQueue
from shellm.routing.quota import QuotaTracker

if TYPE_CHECKING:
    from shellm.routing.cache import Ticket


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
        quota: QuotaTracker | None = None,
    ):
        """
        @param queues: by provider kind, C{"cli"} and C{"http"}.
        @param quota: the providers' subscription windows; a spent one makes
            the router skip its provider until it resets.
        @param on_call: told C{(provider, outcome)} after every provider run,
            the outcome being C{"ok"} or an error code.
        """
        #: Told C{(provider, outcome)} after every provider run.
        self.on_call = on_call or (lambda provider, outcome: None)
        #: Cleared when shutdown begins: new requests are refused, while
        #: those already admitted run on.
        self.admitting = True
        #: Cleared at the drain deadline: queued work then starts nothing.
        self.accepting = True
        self._clock = clock
        self.providers = providers
        self.models = models
        self.queues = queues
        self.health = health
        self.circuits = circuits
        self.fallback_chain = fallback_chain
        self.quota = quota if quota is not None else QuotaTracker(clock)
        self._calls: set[_Call] = set()

    def queue_for(self, provider_name: str) -> RequestQueue:
        return self.queues[self.providers[provider_name].kind]

    def unusable_reason(self, name: str, upstream: str | None = None) -> str | None:
        """
        Why C{name} should not even be tried for C{upstream} (the model
        string passed on; none: the CLI's default), or L{None}.
        """
        health = self.health.known_unusable(name)
        if health is not None:
            return health.error or f"{name} is not available"
        if not self.circuits[name].allows():
            return f"{name} is failing; its circuit is open"
        if self.quota.exhausted(name, upstream) is not None:
            return f"{name}'s subscription usage limit is reached"
        return None

    def _quota_refusal(self, name: str, upstream: str | None) -> QuotaExhausted | None:
        """
        The error for a provider whose subscription window (for C{upstream})
        is spent: it is not called, and its circuit is not told (nothing
        failed).
        """
        state = self.quota.exhausted(name, upstream)
        if state is None:
            return None
        kind = state.ruling.kind.replace("_", "-") if state.ruling else "usage"
        return QuotaExhausted(
            f"{name}: its {kind} usage limit is reached until it resets",
            retry_after=self.quota.retry_after(state),
        )

    def _refusal(self, name: str, upstream: str | None, reason: str) -> ShellmError:
        """
        Why C{name} is refused at once: a spent window (429 until its reset)
        when that is what holds an installed, logged-in provider back, else
        503.
        """
        if self.health.known_unusable(name) is None:
            spent = self._quota_refusal(name, upstream)
            if spent is not None:
                return spent
        return ProviderUnavailable(reason, retry_after=self.circuits[name].retry_after())

    def admit(
        self,
        request: CompletionRequest,
        permits: Callable[[ModelEntry], bool] = lambda entry: True,
    ) -> Admission:
        """
        Take C{request} on, or refuse it now: the provider it will start on
        (its own, or at once the fallback when its own is known to be
        unusable) and its place in that provider's queue.  Nothing is
        started yet; L{run} does that, L{Admission.withdraw} gives the place
        back.

        @param permits: whether the caller may use a model table entry; a
            fallback never goes where the caller may not.
        @raise QueueFull: the queue has no room.
        @raise ProviderUnavailable: the provider is known to be unusable and
            no fallback may take the request.
        @raise QuotaExhausted: the provider's subscription window is spent
            and no fallback may take the request.
        """
        if not (self.admitting and self.accepting):
            raise ShuttingDown("SheLLM is shutting down", retry_after=1)
        entry, fallback = request.entry, None
        reason = self.unusable_reason(entry.provider, entry.upstream)
        if reason is not None:
            error = self._refusal(entry.provider, entry.upstream, reason)
            alternate = self._alternate(entry.provider, permits) if request.fallback else None
            if alternate is None:
                raise error
            self._log_fallback(request, entry, error, alternate)
            entry, fallback = alternate, FallbackInfo(entry.provider, error.to_json())
        return Admission(self, entry, fallback, self._place_in_queue(entry), self._clock.seconds())

    async def complete(
        self,
        request: CompletionRequest,
        sink: EventSink,
        permits: Callable[[ModelEntry], bool] = lambda entry: True,
        streaming: bool = False,
    ) -> Completion:
        """
        L{admit}, then L{run}.
        """
        return await self.run(self.admit(request, permits), request, sink, permits, streaming)

    async def run(
        self,
        admission: Admission,
        request: CompletionRequest,
        sink: EventSink,
        permits: Callable[[ModelEntry], bool] = lambda entry: True,
        streaming: bool = False,
    ) -> Completion:
        """
        Run an admitted C{request}, handing each delta to C{sink} as it
        arrives.

        Falls back once, to the next usable provider of the chain, when the
        first fails on its side (502/503/504) and the request allows it; when
        C{streaming}, only while no text has reached the client.  A request
        that is cancelled (its client left) stops what it started and ends
        with L{CancelledError}: no fallback, and nothing counted against the
        provider, whatever error the cancelled call reported.
        """
        started = admission.admitted_at
        sent: list[str] = []

        def forward(event: TextDelta) -> None:
            sent.append(event.text)
            sink(event)

        entry, fallback = admission.entry, admission.fallback
        try:
            result, queued = await self._attempt(request, entry, admission.slot, started, forward)
        except ShellmError as error:
            alternate = (
                self._alternate(entry.provider, permits)
                if (fallback is None and error.provider_side and request.fallback and not (streaming and sent))
                else None
            )
            if alternate is None:
                if fallback is not None or (error.provider_side and request.fallback):
                    error.retry_would_help = False  # SheLLM has already tried what a retry would
                raise
            self._log_fallback(request, entry, error, alternate)
            fallback = FallbackInfo(entry.provider, error.to_json())
            sent.clear()  # only the answer that completes is the content
            asked = self._clock.seconds()
            try:
                result, queued = await self._attempt(
                    request, alternate, self._place_in_queue(alternate), asked, forward
                )
            except ShellmError as second:
                second.retry_would_help = False
                raise
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

    def close(self) -> None:
        """
        Refuse new requests (shutdown has begun); admitted ones run on.
        """
        self.admitting = False

    def stop_all(self) -> None:
        """
        Stop every provider call under way (shutdown, at the drain deadline):
        each ends with a L{ShuttingDown} error its client is told about, as a
        CLI run stopped by a signal would.
        """
        self.accepting = False
        for call in list(self._calls):
            call.stop()

    def _log_fallback(self, request: CompletionRequest, entry: ModelEntry, error: ShellmError, alternate) -> None:
        self.log.warn(
            "{provider} failed ({code}); falling back to {alternate}",
            provider=entry.provider,
            code=error.code,
            alternate=alternate.provider,
            request_id=request.request_id,
        )

    def _place_in_queue(self, entry: ModelEntry) -> Deferred:
        return self.queue_for(entry.provider).acquire()

    def _alternate(self, failed: str, permits) -> ModelEntry | None:
        if not self.accepting:
            return None  # shutting down: report the failure, start nothing new
        for name in self.fallback_chain:
            if name == failed or name not in self.providers or self.unusable_reason(name):
                continue
            entry = self.models.default_for(name)
            if self.quota.exhausted(name, entry.upstream) is None and permits(entry):
                return entry
        return None

    async def _attempt(
        self, request: CompletionRequest, entry: ModelEntry, slot: Deferred, asked: float, sink: EventSink
    ) -> tuple[ProviderResult, int]:
        name = entry.provider
        provider = self.providers[name]
        queue = self.queue_for(name)
        circuit = self.circuits[name]
        await slot
        granted = self._clock.seconds()
        queued_ms = round((granted - asked) * 1000)
        if not self.accepting:
            queue.give_back()
            raise ShuttingDown("SheLLM is shutting down", retry_after=1)
        refusal = self._quota_refusal(name, entry.upstream)
        if refusal is not None:
            # The window was spent while this request waited for its slot.
            queue.give_back()
            raise refusal
        if not circuit.begin():
            queue.give_back()
            raise ProviderUnavailable(f"{name} is failing; its circuit is open", retry_after=circuit.retry_after())
        try:
            run = provider.start(request, entry.upstream, sink)
        except BaseException as e:
            queue.release(self._clock.seconds() - granted)
            self._judge(circuit, name, e)
            raise
        run.finished.addBoth(lambda _: queue.release(self._clock.seconds() - granted))
        call = _Call(run)
        self._calls.add(call)
        try:
            result = await call.outcome
        except BaseException as e:
            self.quota.observe(name, getattr(e, "quota", ()))
            self._judge(circuit, name, e)
            raise
        finally:
            self._calls.discard(call)
        self.quota.observe(name, result.quota)
        circuit.succeeded()
        self.on_call(name, "ok")
        return result, queued_ms

    def _judge(self, circuit: Circuit, name: str, error: BaseException) -> None:
        self.on_call(
            name,
            error.code
            if isinstance(error, ShellmError)
            else "cancelled"
            if isinstance(error, CancelledError)
            else "internal_error",
        )
        if isinstance(error, NotLoggedIn):
            self.health.mark_not_logged_in(name, error.message)
        if isinstance(error, ShellmError) and error.provider_side and error.blames_provider:
            circuit.failed()
        elif isinstance(error, (ShellmError, CancelledError)):
            circuit.abandoned()
        else:
            circuit.failed()


class _Call:
    """
    One provider call as the router sees it.  C{outcome} follows the run's
    result, except that the router remembers why it ended early: a client
    that left (its request cancelled) ends it with L{CancelledError}, and
    shutdown with L{ShuttingDown}, whatever error the provider reported for
    being stopped (an HTTP client reports a cancelled request as a
    connection failure, which must not be blamed on the provider).
    """

    def __init__(self, run: ProviderRun):
        self._run = run
        self._why: BaseException | None = None
        self.outcome: Deferred = Deferred(lambda _: self._end(CancelledError()))
        run.result.addBoth(self._ended)

    def stop(self) -> None:
        self._end(ShuttingDown("SheLLM is shutting down; the call was stopped", retry_after=1))

    def _end(self, why: BaseException) -> None:
        if self._why is None and not self.outcome.called:
            self._why = why
            self._run.result.cancel()

    def _ended(self, outcome):
        if self.outcome.called:
            return None
        if self._why is not None:
            self.outcome.errback(Failure(self._why))
        else:
            self.outcome.callback(outcome)
        return None


@define
class Admission:
    """
    A request the router has taken on: the provider entry it will start on,
    the fallback already taken (when its own provider was known to be
    unusable), and its place in that provider's queue (C{slot} fires when
    the place becomes a slot).
    """

    _router: Router
    entry: ModelEntry
    fallback: FallbackInfo | None
    slot: Deferred
    admitted_at: float
    #: What the response cache decided (L{shellm.routing.cache}), when it
    #: was read: a miss or a bypass runs here (a hit is a
    #: L{shellm.routing.cache.CacheHit} instead).
    cache: Ticket | None = None

    def withdraw(self) -> None:
        """
        Give the place back when the request is refused after all (a rate
        limit) or never run: a granted slot is released, a waiting one leaves
        the line.
        """
        if self.slot.called:
            self.slot.addCallback(lambda _: self._router.queue_for(self.entry.provider).give_back())
        else:
            self.slot.addErrback(lambda f: f.trap(CancelledError))
            self.slot.cancel()
