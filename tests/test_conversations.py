"""
Conversations kept by the gateway, on both store engines: SheLLM sessions
(C{/sessions} and C{session_id} on C{/completions}) and the OpenAI
Responses API (C{/v1/responses}), through StubTreq against the real Klein
resource with fake providers driven by hand.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import reactor

from shellm.completion import ProviderResult, Usage
from shellm.errors import ProviderFailed
from shellm.routing.auth import Authenticator, Client
from shellm.routing.cache import ResponseCache
from shellm.state.conversations import Conversations, SessionNotFound
from shellm.state.store import Store
from tests.daemon import eventually
from tests.test_api import MAX_PROMPT, Gateway, has_result, make_gateway

KEY_A, KEY_B = "key-a-" + "a" * 30, "key-b-" + "b" * 30
TTL = 3600.0


def auth(key: str = KEY_A) -> dict:
    return {"content-type": "application/json", "authorization": f"Bearer {key}"}


@pytest_twisted.async_yield_fixture
async def cgw(db_setting):
    """
    A gateway with two client keys and its conversations in a fresh store.
    """
    store = Store.from_setting(db_setting, reactor)
    await store.open(retry=False)
    gw = make_gateway(
        api_options={
            "authenticator": Authenticator([Client("alice", KEY_A), Client("bob", KEY_B)]),
            "conversations": None,
        }
    )
    conversations = Conversations(store, gw.clock, TTL, max_turns=5, max_chars=100_000)
    gw.api.conversations = conversations
    gw.api._sessions._conversations = conversations
    gw.api._responses._conversations = conversations
    yield gw
    await store.close()


async def answer(gw: Gateway, d):
    """
    The response to C{d}, once the store's threads and the in-memory
    connection have delivered it.
    """

    def delivered():
        gw.stub.flush()
        return has_result(d)

    assert await eventually(delivered), "no answer"
    return await d


async def body_text(gw: Gateway, response) -> str:
    """
    The whole body of a (streamed) response, pumped through the stub.
    """
    return (await answer(gw, response.content())).decode()


async def started(gw: Gateway, provider: str = "claude", count: int = 1):
    def run():
        gw.stub.flush()
        return len(gw.providers[provider].runs) >= count

    assert await eventually(run), f"{provider} was not started"
    return gw.providers[provider].runs[count - 1]


def post(gw: Gateway, path: str, body: dict, key: str = KEY_A):
    return gw.post(path, body, headers=auth(key))


def get(gw: Gateway, path: str, key: str = KEY_A):
    return gw.stub.get("http://shellm.test" + path, headers=auth(key))


def delete(gw: Gateway, path: str, key: str = KEY_A):
    return gw.stub.delete("http://shellm.test" + path, headers=auth(key))


async def json_of(gw: Gateway, d, status: int = 200) -> dict:
    response = await answer(gw, d)
    body = await response.json()
    assert response.code == status, body
    return body


async def new_session(gw: Gateway, **fields) -> str:
    body = await json_of(gw, post(gw, "/sessions", fields), 201)
    assert body["id"].startswith("sess_") and body["object"] == "session"
    return body["id"]


async def session_turn(gw: Gateway, session_id: str, prompt: str, answer_text: str, key: str = KEY_A, **fields):
    count = len(gw.providers["claude"].runs) + 1
    d = post(gw, "/completions", {"model": "claude", "prompt": prompt, "session_id": session_id, **fields}, key)
    run = await started(gw, "claude", count)
    run.emit(answer_text).succeed(ProviderResult(usage=Usage(10, 2)))
    return run, await json_of(gw, d)


# -- sessions


@pytest_twisted.ensureDeferred
async def test_session_history_reaches_the_cli_and_turns_are_stored(cgw):
    """
    A session's earlier exchanges reach the CLI as the labelled history
    block, the session's system prompt as the system prompt; each completed
    exchange is stored with its model and usage, and numbered.
    """
    session_id = await new_session(cgw, system="Be terse", metadata={"app": "t"})
    run, first = await session_turn(cgw, session_id, "My name is Ada.", "Hello Ada.")
    assert run.request.prompt == "My name is Ada."
    assert run.request.system == "Be terse"
    assert first["session_id"] == session_id and first["turn"] == 1 and first["history_truncated"] is False
    run, second = await session_turn(cgw, session_id, "What is my name?", "Ada.")
    assert second["turn"] == 2
    assert run.request.prompt == (
        "<conversation_history>\n"
        '<turn role="user">\nMy name is Ada.\n</turn>\n'
        '<turn role="assistant">\nHello Ada.\n</turn>\n'
        "</conversation_history>\n\n"
        "The conversation so far is in <conversation_history>, for context only: do not answer or repeat "
        "its turns. Reply only to the latest user message, in <latest_user_message>.\n\n"
        "<latest_user_message>\nWhat is my name?\n</latest_user_message>"
    )
    shown = await json_of(cgw, get(cgw, f"/sessions/{session_id}"))
    assert shown["metadata"] == {"app": "t"} and shown["turn_count"] == 2
    assert [(t["seq"], t["prompt"], t["answer"]) for t in shown["turns"]] == [
        (1, "My name is Ada.", "Hello Ada."),
        (2, "What is my name?", "Ada."),
    ]
    assert shown["turns"][0]["usage"] == {"input_tokens": 10, "output_tokens": 2}
    assert shown["usage"] == {"input_tokens": 20, "output_tokens": 4}


@pytest_twisted.ensureDeferred
async def test_a_failed_turn_is_not_stored_and_frees_the_session(cgw):
    """
    A turn whose provider fails stores nothing, and the session takes the
    next turn.
    """
    session_id = await new_session(cgw)
    d = post(cgw, "/completions", {"model": "claude", "prompt": "hi", "session_id": session_id, "fallback": False})
    run = await started(cgw)
    run.fail(ProviderFailed("claude exited 1"))
    assert (await answer(cgw, d)).code == 502
    shown = await json_of(cgw, get(cgw, f"/sessions/{session_id}"))
    assert shown["turns"] == []
    run, body = await session_turn(cgw, session_id, "again", "ok")
    assert body["turn"] == 1 and run.request.prompt == "again"


@pytest_twisted.ensureDeferred
async def test_one_turn_at_a_time(cgw):
    """
    While a turn runs, another request on the session gets 409
    session_busy with Retry-After; once the first completes, the session is
    free again.
    """
    session_id = await new_session(cgw)
    first = post(cgw, "/completions", {"model": "claude", "prompt": "one", "session_id": session_id})
    run = await started(cgw)
    busy = await answer(cgw, post(cgw, "/completions", {"model": "claude", "prompt": "two", "session_id": session_id}))
    assert busy.code == 409
    assert (await busy.json())["error"] == "session_busy"
    assert busy.headers.getRawHeaders(b"retry-after") == [b"1"]
    run.emit("1").succeed()
    assert (await json_of(cgw, first))["turn"] == 1
    _, body = await session_turn(cgw, session_id, "two", "2")
    assert body["turn"] == 2


@pytest_twisted.ensureDeferred
async def test_a_client_that_leaves_mid_turn_stores_nothing(cgw):
    """
    A client that disconnects while its turn runs cancels the run; nothing
    is stored and the session takes the next turn at once.
    """
    session_id = await new_session(cgw)
    d = post(cgw, "/completions", {"model": "claude", "prompt": "one", "session_id": session_id})
    run = await started(cgw)
    d.cancel()
    d.addErrback(lambda f: None)
    cgw.stub.flush()
    assert run.cancelled
    run.reap()
    _, body = await session_turn(cgw, session_id, "two", "2")
    assert body["turn"] == 1
    shown = await json_of(cgw, get(cgw, f"/sessions/{session_id}"))
    assert [t["prompt"] for t in shown["turns"]] == ["two"]


@pytest_twisted.ensureDeferred
async def test_a_client_that_leaves_while_the_session_is_claimed_frees_it(cgw):
    """
    A client that disconnects before its claim on the session has landed
    (the store answers in its own thread) leaves the session free.
    """
    session_id = await new_session(cgw)
    d = post(cgw, "/completions", {"model": "claude", "prompt": "one", "session_id": session_id})
    cgw.stub.flush()  # the server has the request: its claim runs in a store thread
    d.cancel()
    d.addErrback(lambda f: None)

    async def free():
        rows = await cgw.api.conversations.store.query("SELECT busy_until FROM sessions")
        return rows == [(None,)]

    cgw.stub.flush()
    assert await eventually(free)
    assert cgw.providers["claude"].runs == []
    _, body = await session_turn(cgw, session_id, "two", "2")
    assert body["turn"] == 1


@pytest_twisted.ensureDeferred
async def test_sessions_of_another_key_and_unknown_ones_are_404(cgw):
    """
    Another key cannot read, use or delete a session (404, as for an
    unknown one), nor does it see it in its listing.
    """
    session_id = await new_session(cgw)
    for d in (
        get(cgw, f"/sessions/{session_id}", KEY_B),
        delete(cgw, f"/sessions/{session_id}", KEY_B),
        post(cgw, "/completions", {"model": "claude", "prompt": "x", "session_id": session_id}, KEY_B),
        post(cgw, "/completions", {"model": "claude", "prompt": "x", "session_id": "sess_nope"}),
    ):
        body = await json_of(cgw, d, 404)
        assert body["error"] == "session_not_found"
    assert (await json_of(cgw, get(cgw, "/sessions", KEY_B)))["data"] == []
    assert [s["id"] for s in (await json_of(cgw, get(cgw, "/sessions")))["data"]] == [session_id]


@pytest_twisted.ensureDeferred
async def test_listing_is_paginated(cgw):
    """
    GET /sessions pages through the key's sessions with limit and after.
    """
    ids = []
    for _ in range(3):
        ids.append(await new_session(cgw))
        cgw.clock.advance(1)
    page = await json_of(cgw, get(cgw, "/sessions?limit=2"))
    assert [s["id"] for s in page["data"]] == ids[:2] and page["has_more"] is True
    rest = await json_of(cgw, get(cgw, f"/sessions?limit=2&after={page['last_id']}"))
    assert [s["id"] for s in rest["data"]] == ids[2:] and rest["has_more"] is False


@pytest_twisted.ensureDeferred
async def test_delete_and_expiry_leave_nothing_behind(cgw):
    """
    DELETE removes a session and its turns; an idle session is unknown once
    its TTL has passed, and the sweep deletes its rows.
    """
    conversations = cgw.api.conversations
    gone = await new_session(cgw)
    await session_turn(cgw, gone, "a", "b")
    assert (await json_of(cgw, delete(cgw, f"/sessions/{gone}")))["deleted"] is True
    assert (await json_of(cgw, get(cgw, f"/sessions/{gone}"), 404))["error"] == "session_not_found"
    idle = await new_session(cgw)
    await session_turn(cgw, idle, "a", "b")
    cgw.clock.advance(TTL + 1)
    assert (await json_of(cgw, get(cgw, f"/sessions/{idle}"), 404))["error"] == "session_not_found"
    assert await conversations.sweep() == 1
    rows = await conversations.store.query(
        "SELECT (SELECT COUNT(*) FROM sessions) + (SELECT COUNT(*) FROM session_turns)"
    )
    assert rows[0][0] == 0


@pytest_twisted.ensureDeferred
async def test_oldest_turns_are_left_out_when_history_is_too_long(cgw):
    """
    When the history would exceed the prompt limit, the oldest turns are
    left out of what the CLI sees (never the system prompt or the new turn),
    and the response says history_truncated.
    """
    session_id = await new_session(cgw, system="S")
    long = "x" * (MAX_PROMPT // 3)
    for i in range(3):
        await session_turn(cgw, session_id, f"{i} {long}", f"answer {i}")
    run, body = await session_turn(cgw, session_id, "latest", "done")
    assert body["history_truncated"] is True
    assert len(run.request.prompt) <= MAX_PROMPT
    assert "0 xxx" not in run.request.prompt and "answer 2" in run.request.prompt
    assert run.request.prompt.endswith("<latest_user_message>\nlatest\n</latest_user_message>")
    assert run.request.system == "S"


@pytest_twisted.ensureDeferred
async def test_session_turn_cap(cgw):
    """
    A session holding its most turns refuses another (409 session_full).
    """
    session_id = await new_session(cgw)
    for i in range(5):
        await session_turn(cgw, session_id, str(i), str(i))
    d = post(cgw, "/completions", {"model": "claude", "prompt": "6", "session_id": session_id})
    assert (await json_of(cgw, d, 409))["error"] == "session_full"


@pytest_twisted.ensureDeferred
async def test_fallback_mid_conversation_gets_the_same_history(cgw):
    """
    When the session's provider fails, the fallback provider gets the same
    history, and the turn records the provider and model that answered; a
    model change inside a session is recorded per turn.
    """
    session_id = await new_session(cgw, model="claude")
    await session_turn(cgw, session_id, "remember 42", "ok")
    d = post(cgw, "/completions", {"prompt": "what number?", "session_id": session_id})
    (await started(cgw, "claude", 2)).fail(ProviderFailed("claude exited 1"))
    run = await started(cgw, "gemini")
    assert "remember 42" in run.request.prompt and "what number?" in run.request.prompt
    run.emit("42").succeed(ProviderResult(model="gemini-2.5-pro"))
    assert (await json_of(cgw, d))["turn"] == 2
    shown = await json_of(cgw, get(cgw, f"/sessions/{session_id}"))
    assert [(t["provider"], t["model"]) for t in shown["turns"]][1] == ("gemini", "gemini-2.5-pro")


@pytest_twisted.ensureDeferred
async def test_session_stream_commits_after_the_whole_answer(cgw):
    """
    /completions/stream with a session_id streams as usual; its final
    event names the session and turn, and the exchange is stored.
    """
    session_id = await new_session(cgw)
    d = post(cgw, "/completions/stream", {"model": "claude", "prompt": "hi", "session_id": session_id})
    run = await started(cgw)
    run.emit("Hel", "lo").succeed()
    response = await answer(cgw, d)
    text = await body_text(cgw, response)
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert [e["content"] for e in events[:-1]] == ["Hel", "lo"]
    assert events[-1]["done"] is True and events[-1]["session_id"] == session_id and events[-1]["turn"] == 1
    shown = await json_of(cgw, get(cgw, f"/sessions/{session_id}"))
    assert shown["turns"][0]["answer"] == "Hello"


@pytest.mark.parametrize(
    "body, message",
    [
        ({"model": 3}, "model"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"colour": "red"}, "colour"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_session_bodies(cgw, body, message):
    """
    A malformed session body is a 400 naming the field.
    """
    error = await json_of(cgw, post(cgw, "/sessions", body), 400)
    assert message in error["message"]


# -- the Responses API


async def respond(gw: Gateway, body: dict, answer_text: str, key: str = KEY_A, provider: str = "codex"):
    count = len(gw.providers[provider].runs) + 1
    d = post(gw, "/v1/responses", body, key)
    run = await started(gw, provider, count)
    run.emit(answer_text).succeed(ProviderResult(usage=Usage(7, 3)))
    return run, await json_of(gw, d)


@pytest_twisted.ensureDeferred
async def test_response_shape(cgw):
    """
    A Responses answer has the Responses shape: resp_ id, object response,
    status completed, one assistant message of output_text, and usage with
    total_tokens; instructions become the system prompt.
    """
    run, body = await respond(cgw, {"model": "codex", "input": "Hi", "instructions": "Be kind"}, "Hello!")
    assert run.request.prompt == "Hi" and run.request.system == "Be kind"
    assert body["id"].startswith("resp_") and body["object"] == "response" and body["status"] == "completed"
    [message] = body["output"]
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["content"][0]["type"] == "output_text" and message["content"][0]["text"] == "Hello!"
    assert {k: body["usage"][k] for k in ("input_tokens", "output_tokens", "total_tokens")} == {
        "input_tokens": 7,
        "output_tokens": 3,
        "total_tokens": 10,
    }


@pytest_twisted.ensureDeferred
async def test_previous_response_id_over_three_turns(cgw):
    """
    previous_response_id sends the stored chain as history; retrieve,
    input_items and delete work; another key sees none of it.
    """
    _, first = await respond(cgw, {"model": "codex", "input": "I am Ada."}, "Hi Ada.")
    _, second = await respond(
        cgw, {"model": "codex", "input": "I like tea.", "previous_response_id": first["id"]}, "Noted."
    )
    run, third = await respond(
        cgw, {"model": "codex", "input": "Who am I?", "previous_response_id": second["id"]}, "Ada."
    )
    for text in ("I am Ada.", "Hi Ada.", "I like tea.", "Noted."):
        assert text in run.request.prompt.split("</conversation_history>")[0]
    assert third["previous_response_id"] == second["id"]
    fetched = await json_of(cgw, get(cgw, f"/v1/responses/{third['id']}"))
    assert fetched["output"][0]["content"][0]["text"] == "Ada." and fetched["id"] == third["id"]
    items = await json_of(cgw, get(cgw, f"/v1/responses/{third['id']}/input_items"))
    assert [i["content"][0]["text"] for i in items["data"]] == ["Who am I?"]
    other = await json_of(cgw, get(cgw, f"/v1/responses/{third['id']}", KEY_B), 404)
    assert other["error"]["code"] == "response_not_found" and other["error"]["param"] == "response_id"
    d = post(cgw, "/v1/responses", {"model": "codex", "input": "x", "previous_response_id": third["id"]}, KEY_B)
    assert (await json_of(cgw, d, 404))["error"]["param"] == "previous_response_id"
    assert (await json_of(cgw, delete(cgw, f"/v1/responses/{third['id']}")))["deleted"] is True
    await json_of(cgw, get(cgw, f"/v1/responses/{third['id']}"), 404)


@pytest_twisted.ensureDeferred
async def test_store_false_keeps_nothing(cgw):
    """
    With store false the answer is given but cannot be retrieved.
    """
    _, body = await respond(cgw, {"model": "codex", "input": "Hi", "store": False}, "Hello")
    assert body["store"] is False
    await json_of(cgw, get(cgw, f"/v1/responses/{body['id']}"), 404)


@pytest_twisted.ensureDeferred
async def test_response_stream_events(cgw):
    """
    stream true sends the Responses event sequence, each event with its
    sequence_number in order, ending with response.completed whose response
    is stored.
    """
    d = post(cgw, "/v1/responses", {"model": "codex", "input": "Hi", "stream": True})
    run = await started(cgw, "codex")
    run.emit("He", "llo").succeed(ProviderResult(usage=Usage(1, 2)))
    response = await answer(cgw, d)
    text = await body_text(cgw, response)
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert [e["delta"] for e in events if e["type"] == "response.output_text.delta"] == ["He", "llo"]
    assert [e for e in events if e["type"] == "response.output_text.done"][0]["text"] == "Hello"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    completed = events[-1]["response"]
    assert completed["status"] == "completed" and completed["usage"]["total_tokens"] == 3
    await json_of(cgw, get(cgw, f"/v1/responses/{completed['id']}"))


@pytest_twisted.ensureDeferred
async def test_response_stream_failure(cgw):
    """
    A provider failure mid-stream ends with error and response.failed,
    never response.completed, and nothing is stored.
    """
    d = post(cgw, "/v1/responses", {"model": "codex", "input": "Hi", "stream": True})
    run = await started(cgw, "codex")
    run.emit("He").fail(ProviderFailed("codex exited 1"))
    text = await body_text(cgw, await answer(cgw, d))
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    kinds = [e["type"] for e in events]
    assert kinds[-2:] == ["error", "response.failed"] and "response.completed" not in kinds
    rows = await cgw.api.conversations.store.query("SELECT COUNT(*) FROM responses")
    assert rows[0][0] == 0


@pytest.mark.parametrize(
    "body, param",
    [
        (
            {"model": "codex", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input[0].content[0].type",
        ),
        ({"model": "codex", "input": [{"type": "input_file", "file_id": "f"}]}, "input[0].type"),
        ({"model": "codex", "input": "x", "text": {"format": {"type": "json_schema"}}}, "text.format"),
        ({"model": "codex", "input": "x", "tools": [{"type": "function", "name": "f"}]}, "tools"),
        ({"model": "codex", "input": "x", "previous_response_id": 5}, "previous_response_id"),
        ({"model": "codex"}, "input"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_responses_input(cgw, body, param):
    """
    Input SheLLM cannot honour is a 400 naming the item or field, in the
    OpenAI error envelope.
    """
    error = await json_of(cgw, post(cgw, "/v1/responses", body), 400)
    assert error["error"]["param"] == param
    assert error["error"]["type"] == "invalid_request_error"


@pytest_twisted.ensureDeferred
async def test_unknown_previous_response_is_404(cgw):
    """
    An unknown previous_response_id is a 404 and starts no provider.
    """
    d = post(cgw, "/v1/responses", {"model": "codex", "input": "x", "previous_response_id": "resp_nope"})
    assert (await json_of(cgw, d, 404))["error"]["code"] == "response_not_found"
    assert cgw.providers["codex"].runs == []


@pytest_twisted.ensureDeferred
async def test_a_model_change_inside_a_session_is_recorded_per_turn(cgw):
    """
    A turn may name another model than the session's; each turn records
    the model that answered it.
    """
    session_id = await new_session(cgw, model="claude")
    await session_turn(cgw, session_id, "one", "1")
    d = post(cgw, "/completions", {"model": "cerebras", "prompt": "two", "session_id": session_id})
    run = await started(cgw, "cerebras")
    assert "one" in run.request.prompt
    run.emit("2").succeed()
    assert (await json_of(cgw, d))["turn"] == 2
    shown = await json_of(cgw, get(cgw, f"/sessions/{session_id}"))
    assert [t["provider"] for t in shown["turns"]] == ["claude", "cerebras"]


@pytest_twisted.ensureDeferred
async def test_stored_responses_expire_and_are_swept(cgw):
    """
    A stored response idle past the TTL is unknown (404 as
    previous_response_id too), and the sweep deletes it.
    """
    _, first = await respond(cgw, {"model": "codex", "input": "Hi"}, "Hello")
    cgw.clock.advance(TTL + 1)
    await json_of(cgw, get(cgw, f"/v1/responses/{first['id']}"), 404)
    d = post(cgw, "/v1/responses", {"model": "codex", "input": "x", "previous_response_id": first["id"]})
    await json_of(cgw, d, 404)
    assert await cgw.api.conversations.sweep() == 1
    rows = await cgw.api.conversations.store.query("SELECT COUNT(*) FROM responses")
    assert rows[0][0] == 0


@pytest_twisted.ensureDeferred
async def test_a_long_response_chain_is_truncated_oldest_first(cgw):
    """
    When a chain's history would exceed the prompt limit, the oldest turns
    are left out, the new input and instructions kept, and the response
    says history_truncated.
    """
    long = "y" * (MAX_PROMPT // 3)
    previous = None
    for i in range(3):
        body = {"model": "codex", "input": f"{i} {long}"}
        if previous:
            body["previous_response_id"] = previous
        _, answered = await respond(cgw, body, f"answer {i}")
        previous = answered["id"]
    run, last = await respond(
        cgw, {"model": "codex", "input": "latest", "instructions": "I", "previous_response_id": previous}, "ok"
    )
    assert last["history_truncated"] is True
    assert len(run.request.prompt) <= MAX_PROMPT and "0 yyy" not in run.request.prompt
    assert run.request.prompt.endswith("<latest_user_message>\nlatest\n</latest_user_message>")
    assert run.request.system == "I"


@pytest_twisted.ensureDeferred
async def test_one_turn_at_a_time_across_nodes(cgw, db_setting):
    """
    Two nodes on one store: a session taken for a turn by one is busy for
    the other, until the turn is stored; then the other sees the turn.
    """
    from shellm.state.conversations import SessionBusy

    first = cgw.api.conversations
    other_store = Store.from_setting(db_setting, reactor)
    await other_store.open(migrate=False, retry=False)
    try:
        second = Conversations(other_store, cgw.clock, TTL, max_turns=5, max_chars=100_000)
        session = await first.create_session("alice", "claude", None, {})
        await first.begin_turn("alice", session.id)
        with pytest.raises(SessionBusy):
            await second.begin_turn("alice", session.id)
        await first.finish_turn(session.id, "p", "a", "m", "claude", 1, 1)
        _, exchanges = await second.begin_turn("alice", session.id)
        assert [(e.prompt, e.answer) for e in exchanges] == [("p", "a")]
    finally:
        await other_store.close()


# -- with the response cache


@pytest_twisted.ensureDeferred
async def test_server_side_history_is_never_cached(cgw):
    """
    With the response cache on, a session turn and a Responses request
    chained by previous_response_id are neither answered from it nor
    stored (X-SheLLM-Cache: bypass); an unchained Response is, and its hit
    is stored as a response of its own.
    """
    cgw.api.cache = ResponseCache(cgw.clock, 60, 1 << 20)

    async def asked(path: str, body: dict, provider: str, runs: int) -> tuple[str, dict]:
        before = len(cgw.providers[provider].runs)
        d = post(cgw, path, body)
        if runs > before:
            (await started(cgw, provider, runs)).emit("Hello").succeed(ProviderResult(usage=Usage(7, 3)))
        response = await answer(cgw, d)
        assert response.code == 200
        assert len(cgw.providers[provider].runs) == runs
        return response.headers.getRawHeaders(b"x-shellm-cache")[0].decode(), await response.json()

    for runs in (1, 2):
        session_id = await new_session(cgw)
        status, _ = await asked(
            "/completions", {"model": "claude", "prompt": "Hi", "session_id": session_id}, "claude", runs
        )
        assert status == "bypass"
    status, first = await asked("/v1/responses", {"model": "codex", "input": "Hi"}, "codex", 1)
    assert status == "miss"
    status, again = await asked("/v1/responses", {"model": "codex", "input": "Hi"}, "codex", 1)
    assert status == "hit" and again["id"] != first["id"]
    assert (await json_of(cgw, get(cgw, f"/v1/responses/{again['id']}")))["output"][0]["content"][0]["text"] == "Hello"
    for runs in (2, 3):
        chained = {"model": "codex", "input": "More", "previous_response_id": first["id"]}
        status, _ = await asked("/v1/responses", chained, "codex", runs)
        assert status == "bypass"


@pytest_twisted.ensureDeferred
async def test_session_times_keep_their_seconds(db_setting):
    """
    A session's times come back as stored, to the second and below, on
    both engines (PostgreSQL's 4-byte REAL held only every 128th second).
    """
    from twisted.internet.task import Clock

    from shellm.state.store import Store

    clock = Clock()
    clock.advance(1_764_547_201.25)
    store = Store.from_setting(db_setting, reactor)
    await store.open()
    try:
        conversations = Conversations(store, clock, 3600, max_turns=5, max_chars=1000)
        made = await conversations.create_session("app", "claude", None, {})
        session, _ = await conversations.get_session("app", made.id)
        assert session.created_at == 1_764_547_201.25
        assert session.expires_at == 1_764_547_201.25 + 3600
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_every_session_paged_once_when_times_are_equal(db_setting):
    """
    The administrators' list pages by (created_at, id): sessions made in
    the same instant are each listed once across a page boundary, on both
    engines; a cursor naming no session is refused.
    """
    from twisted.internet.task import Clock

    from shellm.state.store import Store

    clock = Clock()
    clock.advance(1_764_547_201.25)
    store = Store.from_setting(db_setting, reactor)
    await store.open()
    try:
        conversations = Conversations(store, clock, 3600, max_turns=5, max_chars=1000)
        made = {(await conversations.create_session("app", "claude", None, {})).id for _ in range(5)}
        clock.advance(1)
        made.add((await conversations.create_session("other", "claude", None, {})).id)
        seen: list[str] = []
        after = None
        for _ in range(4):
            page, more = await conversations.list_all_sessions(2, after)
            seen += [session.id for session in page]
            after = page[-1].id
            if not more:
                break
        assert sorted(seen) == sorted(made) and len(seen) == 6
        with pytest.raises(SessionNotFound):
            await conversations.list_all_sessions(2, "no-such-session")
    finally:
        await store.close()
