"""
SheLLM sessions over the native API: C{/sessions} (create, list, read,
delete), and the turn a C{session_id} on C{/completions} or
C{/completions/stream} takes: the session's earlier exchanges go in front
of the prompt as history, and the new exchange is stored only once the
answer is complete.  One turn at a time per session.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from shellm.completion import Completion, CompletionRequest
from shellm.errors import InvalidRequest
from shellm.http.dialects import seed
from shellm.http.dialects.conversation import ASSISTANT, SYSTEM, USER, Turn
from shellm.http.history import Framed, with_history
from shellm.http.sse import frame
from shellm.state.conversations import Conversations, Exchange, Session

if TYPE_CHECKING:
    from shellm.http.api import ShellmAPI

MAX_METADATA = 16
MAX_PAGE = 100


def parse_metadata(body: dict[str, Any], field: str = "metadata") -> dict[str, str]:
    """
    At most 16 string pairs (keys up to 64 characters, values up to 512),
    as OpenAI takes them.
    """
    metadata = body.get(field)
    if metadata is None:
        return {}
    if (
        not isinstance(metadata, dict)
        or len(metadata) > MAX_METADATA
        or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512 for k, v in metadata.items()
        )
    ):
        raise InvalidRequest(f'field "{field}" must be an object of at most 16 string pairs')
    return metadata


def history_of(session: Session, exchanges: Sequence[Exchange]) -> list[Turn]:
    turns = [Turn(SYSTEM, session.system)] if session.system else []
    for exchange in exchanges:
        turns += [Turn(USER, exchange.prompt), Turn(ASSISTANT, exchange.answer)]
    return turns


class SessionTurn:
    """
    A turn of a session under way: it holds the session's lease until it
    is committed (the answer is complete) or abandoned (anything else).
    """

    log = Logger()

    def __init__(self, conversations: Conversations, session: Session, exchanges: Sequence[Exchange]):
        self._conversations = conversations
        self.session = session
        self._exchanges = exchanges
        self._prompt = ""
        self._done = False
        self.framed: Framed | None = None
        self.seq: int | None = None

    def frame(self, request: CompletionRequest, max_prompt_chars: int) -> CompletionRequest:
        self._prompt = request.prompt
        framed_request, self.framed = with_history(request, history_of(self.session, self._exchanges), max_prompt_chars)
        return framed_request

    async def commit(self, completion: Completion) -> None:
        self._done = True
        usage = completion.usage
        self.seq = await self._conversations.finish_turn(
            self.session.id,
            self._prompt,
            completion.content,
            completion.model,
            completion.provider,
            usage.input_tokens if usage else None,
            usage.output_tokens if usage else None,
        )

    def abandon(self) -> None:
        if self._done:
            return
        self._done = True
        released = self._conversations.release(self.session.id)
        released.addErrback(lambda f: self.log.failure("session lease not released", f, session=self.session.id))

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session.id,
            "turn": self.seq,
            "history_truncated": bool(self.framed and self.framed.truncated),
        }


class SessionStream(seed.SeedStream):
    """
    The seed stream, whose final event also names the session and turn.
    """

    def __init__(self, request_id: str, turn: SessionTurn):
        super().__init__(request_id)
        self._turn = turn

    def finish(self, completion: Completion) -> list[bytes]:
        return [frame({**seed.final_event(completion), **self._turn.to_json()})]


def _claim(conversations: Conversations, client: str, session_id: str) -> Deferred[tuple[Session, list[Exchange]]]:
    """
    L{Conversations.begin_turn}, which a client that leaves cannot cut
    short: the claim runs on in its thread, so a lease it takes after all
    is given back at once.
    """
    claim = conversations.begin_turn(client, session_id)
    abandoned: list[bool] = []
    claimed: Deferred[tuple[Session, list[Exchange]]] = Deferred(lambda _: abandoned.append(True))

    def landed(value: tuple[Session, list[Exchange]]) -> None:
        if abandoned:
            conversations.release(session_id).addErrback(
                lambda f: SessionTurn.log.failure("session lease not released", f, session=session_id)
            )
        else:
            claimed.callback(value)

    def failed(failure: Failure) -> None:
        if not abandoned:
            claimed.errback(failure)

    claim.addCallbacks(landed, failed)
    return claimed


async def open_turn(conversations: Conversations | None, client: str, body: dict[str, Any]) -> SessionTurn:
    """
    Take the session a seed body names for its turn, and fill in the
    session's model when the body names none.
    """
    session_id = body.pop("session_id")
    if not isinstance(session_id, str) or not session_id:
        raise InvalidRequest('field "session_id" must be a session id')
    if conversations is None:
        raise InvalidRequest("sessions need the state store, which is not configured")
    session, exchanges = await _claim(conversations, client, session_id)
    if "model" not in body and session.model is not None:
        body["model"] = session.model
    return SessionTurn(conversations, session, exchanges)


def _session_page_args(args: dict[bytes, list[bytes]]) -> tuple[int, str | None]:
    raw = (args.get(b"limit") or [b"20"])[0]
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"limit must be an integer between 1 and {MAX_PAGE}")
    after = args.get(b"after")
    return limit, after[0].decode("utf-8", "replace") if after else None


class SessionsAPI:
    """
    C{/sessions}, mounted by L{shellm.http.api.ShellmAPI}: its errors are
    the native API's.
    """

    app = Klein()

    def __init__(self, api: ShellmAPI, conversations: Conversations | None):
        self._api = api
        self._conversations = conversations

    def _store(self) -> Conversations:
        if self._conversations is None:
            raise InvalidRequest("sessions need the state store, which is not configured")
        return self._conversations

    @app.handle_errors(Exception)
    def failed(self, request: Any, failure: Failure) -> Any:
        return self._api.answer_failure(request, failure)

    @app.route("/", methods=["POST"])
    async def create(self, request: Any) -> bytes:
        client = self._api.authenticate(request)
        body = self._api.read_json(request)
        unknown = sorted(set(body) - {"model", "system", "metadata"})
        if unknown:
            raise InvalidRequest(f"unknown field: {unknown[0][:100]}")
        model, system = body.get("model"), body.get("system")
        if model is not None and (not isinstance(model, str) or self._api.models.resolve(model) is None):
            raise InvalidRequest('field "model" must name a model; GET /providers lists them')
        if system is not None and not isinstance(system, str):
            raise InvalidRequest('field "system" must be a string')
        if system is not None and len(system) > self._api.max_prompt_chars:
            raise InvalidRequest(f"system exceeds the maximum length of {self._api.max_prompt_chars} characters")
        session = await self._store().create_session(client.scope, model, system, parse_metadata(body))
        return self._api.respond(request, 201, session.to_json())

    @app.route("/", methods=["GET"])
    async def listing(self, request: Any) -> bytes:
        client = self._api.authenticate(request)
        limit, after = _session_page_args(request.args)
        sessions, more = await self._store().list_sessions(client.scope, limit, after)
        data = [session.to_json() for session in sessions]
        return self._api.respond(
            request,
            200,
            {"object": "list", "data": data, "has_more": more, "last_id": data[-1]["id"] if data else None},
        )

    @app.route("/<session_id>", methods=["GET"])
    async def read(self, request: Any, session_id: str) -> bytes:
        client = self._api.authenticate(request)
        session, exchanges = await self._store().get_session(client.scope, session_id)
        totals = {
            "input_tokens": sum(e.input_tokens or 0 for e in exchanges),
            "output_tokens": sum(e.output_tokens or 0 for e in exchanges),
        }
        return self._api.respond(
            request, 200, {**session.to_json(), "usage": totals, "turns": [e.to_json() for e in exchanges]}
        )

    @app.route("/<session_id>", methods=["DELETE"])
    async def delete(self, request: Any, session_id: str) -> bytes:
        client = self._api.authenticate(request)
        await self._store().delete_session(client.scope, session_id)
        return self._api.respond(request, 200, {"id": session_id, "object": "session.deleted", "deleted": True})
