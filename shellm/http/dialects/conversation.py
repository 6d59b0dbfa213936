"""
A chat conversation, as the OpenAI and Anthropic dialects receive it, turned
into the one system prompt and one prompt a CLI takes.

A CLI answers the whole of its stdin.  Replaying earlier turns as one flat
block makes models answer those turns again, so everything before the
unanswered user message(s) goes into a labelled history block that the
model is told is context only, and the message to answer is set apart
after it.

A turn may carry the speaker's name (OpenAI's C{name}, which tells apart
participants of the same role): the history labels the turn with it, and
the system prompt and the message to answer say it before the text.
"""

from __future__ import annotations

from collections.abc import Sequence

from attrs import field, frozen

from shellm.completion import CompletionRequest
from shellm.errors import InvalidField, NotFound
from shellm.models import ModelEntry
from shellm.structured import OutputSpec

SYSTEM, USER, ASSISTANT = "system", "user", "assistant"

HISTORY_NOTE = (
    "The conversation so far is in <conversation_history>, for context only: "
    "do not answer or repeat its turns. Reply only to the latest user message, "
    "in <latest_user_message>."
)


class ModelNotFound(NotFound):
    """
    A model name the table does not know: 404, as both vendors answer it.
    """

    code = "model_not_found"
    param = "model"


def _cleaned(text: str) -> str:
    # Turn's converter: clean_text is defined further down.
    return clean_text(text)


@frozen
class Turn:
    """
    One message of a conversation, reduced to its text.

    @ivar role: L{SYSTEM}, L{USER} or L{ASSISTANT}.
    @ivar text: cleaned for a process (L{clean_text}) as it is made, so every
        check sees what the provider will get.
    @ivar name: who is speaking, when the client says so; the dialect
        checks it is a plain identifier (it goes into the markup as is).
    """

    role: str
    text: str = field(converter=_cleaned)
    name: str | None = None

    def spoken(self) -> str:
        """
        The text, said by its speaker when it has a name.
        """
        return f"{self.name}: {self.text}" if self.name else self.text


def number_field(body: dict, name: str, low: float, high: float) -> float | None:
    """
    An optional number within bounds (a JSON boolean is not a number).
    """
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise InvalidField(f'"{name}" must be a number between {low:g} and {high:g}', name)
    return float(value)


def clean_text(text: str) -> str:
    """
    Text a process can be given: NUL cannot be passed on, lone surrogates
    cannot be encoded.
    """
    return text.replace("\0", "").encode("utf-8", "replace").decode("utf-8")


def split_latest(turns: Sequence[Turn]) -> tuple[list[Turn], list[Turn]]:
    """
    The dialogue (system turns left out) split into its history and the
    user turns after the last assistant turn: the message to answer.
    """
    dialogue = [t for t in turns if t.role != SYSTEM]
    split = len(dialogue)
    while split > 0 and dialogue[split - 1].role == USER:
        split -= 1
    return dialogue[:split], dialogue[split:]


def render(turns: Sequence[Turn]) -> tuple[str | None, str]:
    """
    The system prompt and the prompt for C{turns}.

    Every system turn, wherever it is, goes into the system prompt (joined
    by blank lines; L{None} when there is none).  The user turns after the
    last assistant turn are the message to answer: with no earlier turns it
    is the prompt verbatim, otherwise it follows a history block of the
    earlier turns, each labelled with its role (and speaker's name).

    @raise ValueError: when the conversation does not end with a user turn;
        the dialect parsers check that first, naming the field.
    """
    system = [t.spoken() for t in turns if t.role == SYSTEM]
    history, latest = split_latest(turns)
    if not latest:
        raise ValueError("a conversation must end with a user turn")
    question = "\n\n".join(t.spoken() for t in latest)
    if history:
        lines = ["<conversation_history>"]
        for turn in history:
            speaker = f' name="{turn.name}"' if turn.name else ""
            lines += [f'<turn role="{turn.role}"{speaker}>', turn.text, "</turn>"]
        lines.append("</conversation_history>")
        prompt = (
            "\n".join(lines) + "\n\n" + HISTORY_NOTE + "\n\n"
            "<latest_user_message>\n" + question + "\n</latest_user_message>"
        )
    else:
        prompt = question
    return ("\n\n".join(system) if system else None), prompt


def completion_request(
    turns: Sequence[Turn],
    *,
    model: str,
    entry: ModelEntry,
    request_id: str,
    max_prompt_chars: int,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    stop: tuple[str, ...] = (),
    extra_system: str | None = None,
    output: OutputSpec | None = None,
) -> CompletionRequest:
    """
    Render C{turns} and check the result against the prompt limit, which
    applies to the prompt and to the system prompt, each on its own (as for
    the seed dialect).

    @param extra_system: appended to the system prompt (instructions the
        dialect adds, such as JSON mode).
    @param output: structured output or offered functions; its instruction
        ends the system prompt.
    @raise InvalidField: naming C{messages} or C{system}.
    """
    system, prompt = render(turns)
    if output is not None:
        extra_system = "\n\n".join(filter(None, [extra_system, output.instruction()]))
    if extra_system:
        system = f"{system}\n\n{extra_system}" if system else extra_system
    if not any(turn.text.strip() for turn in split_latest(turns)[1]):
        raise InvalidField("the last user message must not be empty", "messages")
    if len(prompt) > max_prompt_chars:
        raise InvalidField(
            f"the conversation exceeds the maximum length of {max_prompt_chars} characters (got {len(prompt)})",
            "messages",
        )
    if system is not None and len(system) > max_prompt_chars:
        raise InvalidField(
            f"the system prompt exceeds the maximum length of {max_prompt_chars} characters (got {len(system)})",
            "system",
        )
    return CompletionRequest(
        model=model,
        entry=entry,
        prompt=prompt,
        system=clean_text(system) if system else None,
        max_tokens=max_tokens,
        request_id=request_id,
        temperature=temperature,
        top_p=top_p,
        stop=stop,
        output=output,
    )
