"""
The completion vocabulary shared by dialects, the router and providers: what
a client asked for, the events a provider produces, and what it all came to.
"""

from __future__ import annotations

from typing import Callable, Optional

from attrs import frozen

from shellm.models import ModelEntry


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
    system: Optional[str] = None
    max_tokens: Optional[int] = None
    request_id: str = ""
    fallback: bool = True
    # Sampling controls: passed on where a backend takes them (see each
    # provider's capabilities), otherwise not applied.
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    stop: tuple[str, ...] = ()


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

    usage: Optional[Usage] = None
    cost_usd: Optional[float] = None
    model: Optional[str] = None
    #: C{"stop"} (a natural end) or C{"length"} (the token limit was hit).
    finish_reason: str = "stop"


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
    usage: Optional[Usage]
    cost_usd: Optional[float]
    fallback: Optional[FallbackInfo] = None
    finish_reason: str = "stop"
