"""
The completion vocabulary shared by dialects, the router and providers: what
a client asked for, the events a provider produces, and what it all came to.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from attrs import frozen
from twisted.internet.defer import Deferred

from shellm.models import ModelEntry

if TYPE_CHECKING:
    from shellm.structured import Answer, OutputSpec


@frozen
class CacheControl:
    """
    What a request asked of the response cache (L{shellm.routing.cache}):
    its C{cache} field and C{Cache-Control} header, read together.

    @ivar ttl: how long to keep this answer, in seconds (at most the
        operator's C{SHELLM_CACHE_TTL}); L{None}: that TTL.
    @ivar no_cache: answer afresh, never from the cache (the fresh answer
        is still stored).
    @ivar no_store: do not keep this answer.
    """

    ttl: int | None = None
    no_cache: bool = False
    no_store: bool = False


@frozen
class CompletionRequest:
    """
    A validated request, whatever dialect it arrived in.

    @ivar model: the name the client asked for.
    @ivar entry: what that name resolved to in the model table.
    @ivar fallback: whether another provider may answer if this one fails.
    """

    model: str
    entry: ModelEntry
    prompt: str
    system: str | None = None
    max_tokens: int | None = None
    request_id: str = ""
    fallback: bool = True
    # Sampling controls: passed on where a backend takes them (see each
    # provider's capabilities), otherwise not applied.
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    #: Structured output or offered functions (L{shellm.structured}): what
    #: the answer must be, for backends with a mechanism of their own.
    output: OutputSpec | None = None
    #: The prompt template version that made the prompt (C{name@version}),
    #: for the request log; the prompt itself is already rendered.
    template: str | None = None
    #: What the client asked of the response cache; not part of its key.
    cache: CacheControl = CacheControl()


@frozen
class TextDelta:
    """
    A piece of the answer, in order, as soon as the provider produced it.
    """

    text: str


@frozen
class Usage:
    input_tokens: int
    output_tokens: int

    def to_json(self) -> dict:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}


@frozen
class ProviderResult:
    """
    How a provider run ended, successfully: exact usage and cost when the
    provider reported them, and the model that actually answered.
    """

    usage: Usage | None = None
    cost_usd: float | None = None
    model: str | None = None
    #: C{"stop"} (a natural end) or C{"length"} (the token limit was hit).
    finish_reason: str = "stop"
    #: The subscription windows the run reported (L{QuotaWindow}s).
    quota: tuple = ()


#: Providers hand each event to one of these, in order.
EventSink = Callable[[TextDelta], None]


@frozen
class FallbackInfo:
    original_provider: str
    original_error: dict


@frozen
class Completion:
    """
    A finished request, as every dialect reports it.
    """

    content: str
    provider: str
    model: str
    duration_ms: int
    queued_ms: int
    request_id: str
    usage: Usage | None
    cost_usd: float | None
    fallback: FallbackInfo | None = None
    finish_reason: str = "stop"
    #: The validated answer, when the request asked for structured output.
    answer: Answer | None = None


@frozen
class ProviderHealth:
    """
    What a health check found, without spending a token.

    @ivar error: a short, secret-free explanation when not usable, with the fix.
    """

    installed: bool
    authenticated: bool
    error: str | None = None
    version: str | None = None

    @property
    def usable(self) -> bool:
        return self.installed and self.authenticated

    def to_json(self) -> dict:
        body: dict[str, object] = {"installed": self.installed, "authenticated": self.authenticated}
        if self.version:
            body["version"] = self.version
        if self.error:
            body["error"] = self.error
        return body


@frozen
class ProviderRun:
    """
    One provider call under way.

    @ivar result: fires with a L{shellm.completion.ProviderResult} or fails
        with a L{shellm.errors.ShellmError}; cancelling it stops the call.
    @ivar finished: fires, never fails, once everything the call used is
        released (child reaped, connection closed): its queue slot is free then.
    """

    result: Deferred
    finished: Deferred


@frozen
class QuotaWindow:
    """
    Where a provider stands in one of its subscription windows, as a CLI
    reported it.

    @ivar kind: C{five_hour}, C{seven_day}, C{daily}, or another name the
        CLI gave (C{seven_day_opus}, C{usage_limit} when a limit text named
        no window).
    @ivar status: C{allowed}, C{allowed_warning} or C{rejected}.
    @ivar used: the share used, 0..1, when reported.
    @ivar resets_at: when the window resets, epoch seconds, when known.
    @ivar source: C{stream} (a run's own output), C{app-server} (a codex
        probe) or C{error} (a limit-reached error or text).
    @ivar observed_at: when SheLLM learnt it, epoch seconds.
    @ivar model: for a per-model quota (gemini's daily ones), the model
        string SheLLM passed on (L{DEFAULT_MODEL} for the CLI's default):
        the window holds back only requests for that model.  L{None}: the
        whole provider.
    """

    kind: str
    status: str
    used: float | None = None
    resets_at: float | None = None
    source: str = "stream"
    observed_at: float | None = None
    model: str | None = None

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "status": self.status,
            "used": self.used,
            "resets_at": self.resets_at,
            "observed_at": self.observed_at,
            "source": self.source,
            "model": self.model,
        }


#: L{QuotaWindow.model} for a request that named no model (the CLI chose).
DEFAULT_MODEL = "(default)"
