"""
The OpenAI Responses API, mounted at C{/v1/responses} by
L{shellm.http.api.ShellmAPI}: create (JSON or the Responses event stream),
retrieve, list input items, delete.  A stored response keeps its input and
output in the store; C{previous_response_id} puts that chain in front of
the new input as history, framed for a CLI like any conversation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from attrs import evolve
from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from shellm.completion import Completion, CompletionRequest
from shellm.errors import InvalidRequest
from shellm.http.dialects import openai, responses
from shellm.http.dialects.conversation import ASSISTANT, USER, InvalidField, Turn, clean_text
from shellm.http.dialects.responses import ResponseShape, ResponsesRequest, ResponseStream
from shellm.http.headers import header
from shellm.http.history import frame_history
from shellm.http.template_use import joined_system, render_prompt_object
from shellm.routing.cache import UNCACHED, read_control
from shellm.state.conversations import Conversations, StoredResponse

if TYPE_CHECKING:
    from shellm.http.api import ShellmAPI

MAX_PAGE = 100


def message_id(response_id: str) -> str:
    return "msg_" + response_id.removeprefix("resp_")


class ResponseTurn:
    """
    A Responses request under way: stored, when asked, once its answer is
    complete; nothing is kept otherwise.
    """

    def __init__(self, conversations: Conversations | None, shape: ResponseShape, client: str, clock: IReactorTime):
        self._conversations = conversations
        self._shape = shape
        self._client = client
        self._clock = clock

    async def commit(self, completion: Completion) -> None:
        request = self._shape.request
        if self._conversations is None or not request.store:
            return
        usage = completion.usage
        now = self._clock.seconds()
        await self._conversations.save_response(
            StoredResponse(
                id=self._shape.id,
                client=self._client,
                previous_id=request.previous_response_id,
                model=completion.model,
                instructions=request.instructions,
                input=tuple((turn.role, turn.text) for turn in request.turns),
                output=completion.content,
                provider=completion.provider,
                input_tokens=usage.input_tokens if usage else None,
                output_tokens=usage.output_tokens if usage else None,
                metadata=request.metadata,
                created_at=self._shape.created_at,
                expires_at=now + self._conversations.ttl,
            )
        )

    def abandon(self) -> None:
        """
        Nothing was stored for a response that did not complete.
        """


def stored_json(stored: StoredResponse) -> dict[str, Any]:
    return responses.response_json(
        stored.id,
        stored.created_at,
        stored.model,
        status="completed",
        output=[responses.output_message(message_id(stored.id), stored.output)],
        usage=responses.usage_json(stored.input_tokens, stored.output_tokens),
        instructions=stored.instructions,
        previous_response_id=stored.previous_id,
        metadata=stored.metadata,
        store=True,
    )


def history_of(chain: list[StoredResponse]) -> list[Turn]:
    """
    A chain of stored responses as turns: each one's input items, then its
    answer.  Instructions are the request's own and are not carried on, as
    with OpenAI.
    """
    turns = []
    for stored in chain:
        turns += [Turn(role, text) for role, text in stored.input]
        turns.append(Turn(ASSISTANT, stored.output))
    return turns


class ResponsesAPI:
    app = Klein()

    def __init__(self, api: ShellmAPI, conversations: Conversations | None, clock: IReactorTime):
        self._api = api
        self._conversations = conversations
        self._clock = clock

    def _store(self) -> Conversations:
        if self._conversations is None:
            raise InvalidRequest("stored responses need the state store, which is not configured")
        return self._conversations

    @app.handle_errors(Exception)
    def failed(self, request: Any, failure: Failure) -> Any:
        return self._api.answer_failure(request, failure)

    async def _history(self, client: str, parsed: ResponsesRequest) -> list[Turn]:
        if parsed.previous_response_id is None:
            return []
        return history_of(await self._store().chain(client, parsed.previous_response_id))

    @app.route("/", methods=["POST"])
    async def create(self, request: Any) -> Any:
        client = self._api.authenticate(request)
        body = self._api.read_json(request)
        rendered = None
        if body.get("prompt") is not None:
            rendered = await render_prompt_object(self._api.templates, body["prompt"])
            body["instructions"] = joined_system(rendered.system, body.get("instructions"))
        parsed = responses.parse_request(body, (Turn(USER, rendered.prompt),) if rendered else ())
        if rendered is not None:
            given = body["prompt"].get("variables")
            parsed = evolve(parsed, prompt={"id": rendered.name, "version": str(rendered.version), "variables": given})
        control = read_control(body, header(request, b"cache-control"))
        entry = self._api.models.resolve(parsed.model)
        if entry is None:
            raise openai.unknown_model(parsed.model)
        new = [Turn("system", parsed.instructions)] if parsed.instructions else []
        new += parsed.turns
        dialogue = [turn for turn in new if turn.role != "system"]
        if not dialogue or dialogue[-1].role != USER:
            raise InvalidField('the last input item must be a "user" message', "input")
        if not dialogue[-1].text.strip():
            raise InvalidField("the last user message must not be empty", "input")
        framed = frame_history(await self._history(client.scope, parsed), new, self._api.max_prompt_chars)
        if framed.system is not None and len(framed.system) > self._api.max_prompt_chars:
            raise InvalidField(
                f"the instructions exceed the maximum length of {self._api.max_prompt_chars} characters",
                "instructions",
            )
        completion_request = CompletionRequest(
            model=parsed.model,
            entry=entry,
            prompt=framed.prompt,
            system=clean_text(framed.system) if framed.system else None,
            max_tokens=parsed.max_output_tokens,
            request_id=request.request_id,
            temperature=parsed.temperature,
            top_p=parsed.top_p,
            # A chain's history lives on the server: it is never cached.
            cache=control if parsed.previous_response_id is None else UNCACHED,
        )
        if rendered is not None:
            completion_request = self._api.used_template(request, completion_request, rendered.label)
        request.log_fields.update(provider=entry.provider, model=parsed.model)
        response_id = responses.new_response_id()
        shape = ResponseShape(
            response_id,
            message_id(response_id),
            self._clock.seconds(),
            parsed if self._conversations is not None else _unstored(parsed),
            framed.truncated,
        )
        request.turn = ResponseTurn(self._conversations, shape, client.scope, self._clock)
        admission = await self._api.admit(client, completion_request, "/v1/responses")
        if parsed.stream:
            return await self._api.stream(request, client, completion_request, admission, ResponseStream(shape))
        completion = await self._api.complete(request, client, completion_request, admission)
        return self._api.respond(request, 200, shape.completed(completion))

    @app.route("/<response_id>", methods=["GET"])
    async def retrieve(self, request: Any, response_id: str) -> bytes:
        client = self._api.authenticate(request)
        stored = await self._store().get_response(client.scope, response_id)
        return self._api.respond(request, 200, stored_json(stored))

    @app.route("/<response_id>/input_items", methods=["GET"])
    async def input_items(self, request: Any, response_id: str) -> bytes:
        client = self._api.authenticate(request)
        stored = await self._store().get_response(client.scope, response_id)
        order = (request.args.get(b"order") or [b"desc"])[0]
        if order not in (b"asc", b"desc"):
            raise InvalidField('order must be "asc" or "desc"', "order")
        try:
            limit = int((request.args.get(b"limit") or [b"20"])[0])
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidField(f"limit must be an integer between 1 and {MAX_PAGE}", "limit")
        items = [
            {
                "id": f"{message_id(stored.id)}_in{i}",
                "type": "message",
                "role": role,
                "status": "completed",
                "content": [{"type": "input_text", "text": text}],
            }
            for i, (role, text) in enumerate(stored.input)
        ]
        if order == b"desc":
            items.reverse()
        after = request.args.get(b"after")
        if after:
            ids = [item["id"] for item in items]
            wanted = after[0].decode("utf-8", "replace")
            items = items[ids.index(wanted) + 1 :] if wanted in ids else []
        page = items[:limit]
        return self._api.respond(
            request,
            200,
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(items) > limit,
            },
        )

    @app.route("/<response_id>", methods=["DELETE"])
    async def delete(self, request: Any, response_id: str) -> bytes:
        client = self._api.authenticate(request)
        await self._store().delete_response(client.scope, response_id)
        return self._api.respond(request, 200, {"id": response_id, "object": "response", "deleted": True})


def _unstored(parsed: ResponsesRequest) -> ResponsesRequest:
    """
    Without a store nothing is kept, and the response says so.
    """
    return evolve(parsed, store=False)
