"""
Token budgets per key: a day's and a month's input plus output tokens (UTC
boundaries), counted from the usage ledger under the key's id, so a
rotation keeps its spend and every node sharing the store sees the same
count.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from shellm.errors import ShellmError
from shellm.routing.auth import Client
from shellm.state.ledger import Ledger


class BudgetExceeded(ShellmError):
    status = 429
    code = "budget_exceeded"


def day_window(now: float) -> tuple[float, float]:
    """
    The UTC day holding C{now}: its start and the next one's.
    """
    start = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return start.timestamp(), start.timestamp() + 86400


def month_window(now: float) -> tuple[float, float]:
    """
    The UTC month holding C{now}: its start and the next one's.
    """
    start = datetime.fromtimestamp(now, UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (
        start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    )
    return start.timestamp(), following.timestamp()


async def check_budget(ledger: Ledger, client: Client, now: float) -> None:
    """
    Refuse C{client} while a budget of its key is spent.

    @raise BudgetExceeded: with C{retry_after} until the window resets.
    """
    if client.id is None:
        return
    for limit, window, name in (
        (client.daily_tokens, day_window, "daily"),
        (client.monthly_tokens, month_window, "monthly"),
    ):
        if limit is None:
            continue
        start, reset = window(now)
        spent = await ledger.spent(client.id, start)
        if spent >= limit:
            raise BudgetExceeded(
                f"key {client.name} has used its {name} budget of {limit} tokens ({spent} used); it resets at"
                f" {datetime.fromtimestamp(reset, UTC).isoformat()}",
                retry_after=max(1, math.ceil(reset - now)),
            )
