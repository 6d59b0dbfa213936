"""
What every provider offers the router.
"""

from __future__ import annotations

from typing import Protocol

from attrs import frozen
from twisted.internet.defer import Deferred

from shellm.completion import CompletionRequest, EventSink, ProviderRun


@frozen
class Capabilities:
    """
    @ivar streaming: C{"token"} when deltas are pieces of text as the model
        writes them, C{"message"} when each delta is a whole message.
    """

    system_prompt: bool
    max_tokens: bool
    streaming: str
    #: temperature, top_p and stop sequences reach the model.
    sampling: bool = False

    def to_json(self) -> dict:
        return {
            "system_prompt": self.system_prompt,
            "max_tokens": self.max_tokens,
            "sampling": self.sampling,
            "streaming": self.streaming,
        }


class Provider(Protocol):
    name: str
    kind: str  # "cli" or "http"
    capabilities: Capabilities

    def start(self, request: CompletionRequest, upstream_model: str | None, sink: EventSink) -> ProviderRun:
        """
        Begin answering; every L{shellm.completion.TextDelta} goes to C{sink}.

        @raise shellm.errors.ShellmError: when the call cannot even start.
        """

    def check_health(self) -> Deferred:
        """
        Fires with a L{ProviderHealth}; never spends tokens.
        """
