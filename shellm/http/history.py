"""
Stored history in front of a new turn: the earlier turns a session or a
chain of responses holds, framed for a CLI by
L{shellm.http.dialects.conversation.render} (a labelled, context-only
history block, then the message to answer), with the oldest turns left out
when the whole would exceed the prompt limit.  The system prompt and the new
turn are never left out.
"""

from __future__ import annotations

from collections.abc import Sequence

from attrs import evolve, frozen

from shellm.completion import CompletionRequest
from shellm.http.dialects.conversation import SYSTEM, InvalidField, Turn, clean_text, render, split_latest


@frozen
class Framed:
    """
    What a CLI is given for a turn with history.

    @ivar truncated: whether the oldest turns were left out to fit.
    @ivar history_turns: how many earlier turns it sees.
    """

    system: str | None
    prompt: str
    truncated: bool
    history_turns: int


def frame_history(history: Sequence[Turn], new: Sequence[Turn], max_prompt_chars: int) -> Framed:
    """
    Render C{history} then C{new} (which ends with the user turn to
    answer), leaving out the oldest history turns, one at a time, while the
    prompt is longer than C{max_prompt_chars}.

    @raise InvalidField: the new turn alone does not fit.
    """
    kept = [turn for turn in history if turn.role != SYSTEM]
    systems = [turn for turn in history if turn.role == SYSTEM]
    dropped = 0
    while True:
        system, prompt = render([*systems, *kept[dropped:], *new])
        if len(prompt) <= max_prompt_chars:
            return Framed(system, prompt, dropped > 0, len(kept) - dropped)
        if dropped >= len(kept):
            raise InvalidField(
                f"the new turn exceeds the maximum length of {max_prompt_chars} characters (got {len(prompt)})",
                "input",
            )
        dropped += 1


def with_history(
    request: CompletionRequest, history: Sequence[Turn], max_prompt_chars: int
) -> tuple[CompletionRequest, Framed]:
    """
    C{request} (a single new prompt and its own system prompt) with
    C{history} in front of it.
    """
    new = [Turn(SYSTEM, request.system)] if request.system else []
    new.append(Turn("user", request.prompt))
    framed = frame_history(history, new, max_prompt_chars)
    system = clean_text(framed.system) if framed.system else None
    return evolve(request, prompt=framed.prompt, system=system), framed


def ends_with_user(turns: Sequence[Turn]) -> bool:
    return bool(split_latest(turns)[1])
