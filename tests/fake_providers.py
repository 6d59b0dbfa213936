"""
An in-memory provider that a test drives by hand.

It implements the provider interface of L{shellm.providers.base} (C{name},
C{kind}, C{capabilities}, C{start}, C{check_health}) and does nothing on its
own: every run waits until the test emits deltas, finishes it, fails it, or
says its "process" was reaped.  Nothing here touches a reactor or a process.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, fail, succeed

from shellm.completion import (
    CompletionRequest,
    EventSink,
    ProviderHealth,
    ProviderResult,
    ProviderRun,
    TextDelta,
    Usage,
)
from shellm.errors import ShellmError
from shellm.providers.base import Capabilities

#: What a run finishes with unless the test says otherwise.
DEFAULT_RESULT = ProviderResult(usage=Usage(input_tokens=11, output_tokens=7), cost_usd=0.0021)

HEALTHY = ProviderHealth(installed=True, authenticated=True, version="fake 1.0")


class FakeRun:
    """
    One call of a L{FakeProvider}.

    @ivar request: the L{CompletionRequest} it was started with.
    @ivar upstream_model: the model string the router passed on.
    @ivar result: the Deferred the router waits on; its canceller records the
        cancellation (as a real provider would send TERM) and leaves
        C{finished} alone: the test reaps the "process" when it wants to.
    @ivar finished: fires when the test calls L{reap}.
    @ivar cancelled: whether the router (or a disconnecting client) cancelled.
    @ivar emitted: the texts handed to the sink, in order.
    """

    def __init__(self, request: CompletionRequest, upstream_model: str | None, sink: EventSink):
        self.request = request
        self.upstream_model = upstream_model
        self._sink = sink
        self.cancelled = False
        self.emitted: list[str] = []
        self.result = Deferred(self._cancel)
        self.finished = Deferred()

    def _cancel(self, result: Deferred) -> None:
        # Not firing here makes Deferred.cancel fail it with CancelledError,
        # which is what a cancelled process run looks like to the router.
        self.cancelled = True

    @property
    def done(self) -> bool:
        return self.result.called

    def emit(self, *texts: str) -> FakeRun:
        """
        Hand each text to the sink as a L{TextDelta}, as a CLI line would.
        """
        for text in texts:
            assert not self.result.called, "emit after the run ended"
            self.emitted.append(text)
            self._sink(TextDelta(text))
        return self

    def succeed(self, result: ProviderResult = DEFAULT_RESULT, reap: bool = True) -> FakeRun:
        """
        End the run successfully; by default the process is reaped at once.
        """
        self.result.callback(result)
        if reap:
            self.reap()
        return self

    def fail(self, error: ShellmError, reap: bool = True) -> FakeRun:
        """
        End the run with C{error} (a classified provider error).
        """
        self.result.errback(error)
        if reap:
            self.reap()
        return self

    def reap(self) -> None:
        """
        The "process" is gone: its queue slot may be released now.
        """
        if not self.finished.called:
            self.finished.callback(None)


class FakeProvider:
    """
    A provider that records every start and health check.

    @ivar runs: one L{FakeRun} per C{start}, in order.
    @ivar health: what C{check_health} answers with, when answering at once.
    @ivar hold_health: when true, C{check_health} returns a Deferred the test
        fires itself (see L{pending_checks}).
    @ivar health_error: when set, C{check_health} returns a failed Deferred
        with it; when C{raise_in_health} is true it is raised instead.
    @ivar start_error: when set, C{start} raises it (the call cannot start).
    @ivar on_start: called with each new L{FakeRun}, e.g. to finish it at once.
    """

    def __init__(
        self,
        name: str,
        kind: str = "cli",
        capabilities: Capabilities | None = None,
        health: ProviderHealth = HEALTHY,
    ):
        self.name = name
        self.kind = kind
        self.capabilities = capabilities or Capabilities(
            system_prompt=True, max_tokens=kind == "http", streaming="token"
        )
        self.health = health
        self.hold_health = False
        self.health_error: BaseException | None = None
        self.raise_in_health = False
        self.start_error: BaseException | None = None
        self.on_start: Callable[[FakeRun], None] | None = None
        self.runs: list[FakeRun] = []
        self.health_checks = 0
        self.pending_checks: list[Deferred] = []

    def __repr__(self) -> str:
        return f"<FakeProvider {self.name} ({len(self.runs)} runs)>"

    @property
    def starts(self) -> list[tuple[CompletionRequest, str | None]]:
        """
        C{(request, upstream_model)} of every start, in order.
        """
        return [(run.request, run.upstream_model) for run in self.runs]

    @property
    def last(self) -> FakeRun:
        assert self.runs, f"{self.name} was never started"
        return self.runs[-1]

    def start(self, request: CompletionRequest, upstream_model: str | None, sink: EventSink) -> ProviderRun:
        if self.start_error is not None:
            raise self.start_error
        run = FakeRun(request, upstream_model, sink)
        self.runs.append(run)
        if self.on_start is not None:
            self.on_start(run)
        return ProviderRun(result=run.result, finished=run.finished)

    def check_health(self) -> Deferred:
        self.health_checks += 1
        if self.health_error is not None:
            if self.raise_in_health:
                raise self.health_error
            return fail(self.health_error)
        if self.hold_health:
            d = Deferred()
            self.pending_checks.append(d)
            return d
        return succeed(self.health)

    def answer_health(self, health: ProviderHealth | None = None) -> None:
        """
        Fire every held health check with C{health} (default: L{health}).
        """
        pending, self.pending_checks = self.pending_checks, []
        for d in pending:
            d.callback(health or self.health)


def fake_providers() -> dict[str, FakeProvider]:
    """
    The four providers of the default model table: three CLIs and one HTTP API.
    """
    return {
        "claude": FakeProvider("claude"),
        "gemini": FakeProvider("gemini"),
        "codex": FakeProvider("codex", capabilities=Capabilities(True, False, "message")),
        "cerebras": FakeProvider("cerebras", kind="http"),
    }


def make_router(
    clock,
    providers: dict | None = None,
    *,
    models=None,
    max_concurrent: int = 2,
    max_queue_depth: int = 10,
    http_max_concurrent: int = 32,
    http_max_queue_depth: int = 256,
    health_ttl: float = 30.0,
    circuit_threshold: int = 3,
    circuit_cooldown: float = 60.0,
    fallback_chain: tuple[str, ...] = ("claude", "gemini", "cerebras"),
):
    """
    A real L{shellm.routing.router.Router} over fake providers, built by
    the daemon's own L{shellm.tap.build_router}, on C{clock}.
    """
    import attrs

    from shellm.config import load_config
    from shellm.models import DEFAULT_MODELS
    from shellm.tap import build_router

    config = attrs.evolve(
        load_config({}, {}, None),
        models=DEFAULT_MODELS if models is None else models,
        max_concurrent=max_concurrent,
        max_queue_depth=max_queue_depth,
        http_max_concurrent=http_max_concurrent,
        http_max_queue_depth=http_max_queue_depth,
        health_ttl=health_ttl,
        circuit_threshold=circuit_threshold,
        circuit_cooldown=circuit_cooldown,
        fallback_chain=fallback_chain,
    )
    return build_router(clock, fake_providers() if providers is None else providers, config)
