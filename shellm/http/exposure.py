"""
What the endpoints open to load balancers and scrapers show to a caller
without a key, when auth is on.

C{/health} answers everyone, with what a load balancer needs: the overall
status, whether each provider is usable, how busy the queues are, and
whether the state store answers.  The
detail (CLI versions, login state and its fix, circuits, limits, uptime,
SheLLM's version) is for callers with a valid key, or for everyone when
auth is off.  C{/metrics} names clients and counts their tokens, so it
needs a key too unless C{SHELLM_METRICS_PUBLIC} says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping

from shellm.completion import ProviderHealth
from shellm.routing.health import overall_status
from shellm.routing.queue import RequestQueue


def _load(queue: RequestQueue) -> dict:
    return {"active": queue.active, "pending": queue.pending}


def health_summary(
    healths: Mapping[str, ProviderHealth], queues: Mapping[str, RequestQueue], store_up: bool | None
) -> dict:
    """
    The C{/health} body for a caller without a key; C{store_up} is whether
    the state store answers (L{None}: no store).
    """
    summary = {
        "status": overall_status(healths),
        "providers": {name: {"usable": health.usable} for name, health in healths.items()},
        "queue": {**_load(queues["cli"]), "http": _load(queues["http"])},
    }
    if store_up is not None:
        summary["store"] = {"up": store_up}
    return summary
