"""
Conversations through the official clients, unmodified, against a real
C{twistd shellm} whose fake CLIs echo their stdin (so the answer shows the
history framing a CLI received): the C{openai} Python SDK's Responses API
(C{responses.create}, C{.stream}, C{previous_response_id} over three turns,
retrieve, delete), the Node SDK when C{node} can load it, LangChain's
C{ChatOpenAI(model="codex")} with its defaults, and SheLLM sessions over
plain HTTP.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid

import pytest
import pytest_twisted
import treq

from tests.conftest import processes_with_marker
from tests.test_sdks import KEY, Gateway, in_thread, openai

pytestmark = pytest.mark.slow  # a real daemon and CLIs

#: The openai npm package: `npm install --prefix tests/node` (tests/node/package.json).
NODE_MODULES = os.environ.get(
    "SHELLM_TEST_NODE_MODULES", os.path.join(os.path.dirname(__file__), "node", "node_modules")
)


@pytest_twisted.async_yield_fixture(scope="module")
async def gateway(tmp_path_factory):
    marker = f"shellm-test-{uuid.uuid4().hex}"
    clients = {"sdk": {"key": KEY, "rpm": 100000}, "other": {"key": KEY + "x", "rpm": 100000}}
    gateway = Gateway(tmp_path_factory.mktemp("conversations"), marker, clients=clients)
    try:
        await gateway.start()
        yield gateway
    finally:
        await gateway.stop()
        assert not processes_with_marker(marker)


@pytest_twisted.ensureDeferred
async def test_openai_responses_three_turns_retrieve_delete(gateway):
    """
    responses.create, then previous_response_id twice: the third turn's
    CLI receives the first two turns as a context-only history block and
    the new input as the message to answer; retrieve gives the stored
    response back, delete removes it, and another key cannot see it.
    """
    client = gateway.openai()
    first = await in_thread(client.responses.create, model="claude", input="My name is Ada.")
    assert first.id.startswith("resp_") and first.status == "completed"
    assert first.output_text == "My name is Ada."  # the echoing CLI
    second = await in_thread(
        client.responses.create, model="gemini", input="I like tea.", previous_response_id=first.id
    )
    third = await in_thread(
        client.responses.create, model="claude", input="What is my name?", previous_response_id=second.id
    )
    assert second.output_text == (
        '<conversation_history>\n<turn role="user">\nMy name is Ada.\n</turn>\n'
        '<turn role="assistant">\nMy name is Ada.\n</turn>\n</conversation_history>\n\n'
        "The conversation so far is in <conversation_history>, for context only: do not answer or repeat "
        "its turns. Reply only to the latest user message, in <latest_user_message>.\n\n"
        "<latest_user_message>\nI like tea.\n</latest_user_message>"
    )  # gemini echoes its stdin: the README's example of what a CLI receives
    seen = third.output_text
    assert seen.startswith("<conversation_history>\n<turn role=\"user\">\nMy name is Ada.\n</turn>")
    assert seen.endswith("<latest_user_message>\nWhat is my name?\n</latest_user_message>")
    assert third.usage is None or third.usage.total_tokens >= 0
    fetched = await in_thread(client.responses.retrieve, third.id)
    assert fetched.output_text == seen and fetched.previous_response_id == second.id
    items = await in_thread(client.responses.input_items.list, third.id)
    assert [item.content[0].text for item in items.data] == ["What is my name?"]
    other = gateway.openai(KEY + "x")
    error = None
    try:
        await in_thread(other.responses.retrieve, third.id)
    except openai.NotFoundError as e:
        error = e
    assert error is not None
    await in_thread(client.responses.delete, third.id)
    with pytest.raises(openai.NotFoundError):
        await in_thread(client.responses.retrieve, third.id)


@pytest_twisted.ensureDeferred
async def test_openai_responses_stream(gateway):
    """
    responses.stream yields text deltas and a final response that is
    stored; the SDK's own event accumulation accepts the sequence.
    """
    client = gateway.openai()

    def run():
        with client.responses.stream(model="codex", input="Say hi", instructions="Be brief") as stream:
            kinds = [event.type for event in stream]
            return kinds, stream.get_final_response()

    kinds, final = await in_thread(run)
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds and "response.output_text.done" in kinds
    assert "Say hi" in final.output_text
    assert (await in_thread(client.responses.retrieve, final.id)).output_text == final.output_text


@pytest_twisted.ensureDeferred
async def test_openai_responses_refuses_tools_naming_the_field(gateway):
    """
    tools are refused with a 400 naming the field (until structured output
    and tools land).
    """
    client = gateway.openai()
    with pytest.raises(openai.BadRequestError) as raised:
        await in_thread(
            client.responses.create,
            model="codex",
            input="x",
            tools=[{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}],
        )
    assert raised.value.body["param"] == "tools"


@pytest_twisted.ensureDeferred
async def test_langchain_chat_openai_codex_defaults(gateway):
    """
    LangChain sends any model named like "codex" to /v1/responses: with
    its defaults, invoke answers, and a multi-turn message list reaches the
    CLI framed as history.
    """
    langchain_openai = pytest.importorskip("langchain_openai")
    chat = langchain_openai.ChatOpenAI(model="codex", base_url=gateway.url + "/v1", api_key=KEY, max_retries=0)
    reply = await in_thread(chat.invoke, "Say hello")
    assert reply.response_metadata["id"].startswith("resp_")  # it went to /v1/responses
    assert "Say hello" in reply.text
    reply = await in_thread(
        chat.invoke, [("system", "Be brief"), ("human", "I am Ada."), ("ai", "Hi Ada."), ("human", "Who am I?")]
    )
    assert "<conversation_history>" in reply.text and "Who am I?" in reply.text


@pytest_twisted.ensureDeferred
async def test_node_sdk_responses(gateway):
    """
    The Node SDK: responses.create, previous_response_id over three turns,
    responses.stream, retrieve, delete.
    """
    node = shutil.which("node")
    if node is None or not os.path.isdir(os.path.join(NODE_MODULES, "openai")):
        pytest.skip("node and the openai npm package are needed")
    script = """
const OpenAI = require("openai");
const client = new OpenAI({baseURL: process.env.BASE, apiKey: process.env.KEY, maxRetries: 0});
(async () => {
  const a = await client.responses.create({model: "claude", input: "My name is Ada."});
  const m = await client.responses.create({model: "claude", input: "I like tea.", previous_response_id: a.id});
  const b = await client.responses.create({model: "claude", input: "Who am I?", previous_response_id: m.id});
  const got = await client.responses.retrieve(b.id);
  const stream = client.responses.stream({model: "codex", input: "Stream me"});
  const kinds = [];
  for await (const event of stream) kinds.push(event.type);
  const streamed = await stream.finalResponse();
  await client.responses.delete(b.id);
  let gone = false;
  try { await client.responses.retrieve(b.id); } catch (e) { gone = e.status === 404; }
  const streamedText = streamed.output_text;
  console.log(JSON.stringify({first: a.output_text, second: got.output_text, gone, kinds, streamed: streamedText}));
})().catch((e) => { console.error(String(e)); process.exit(1); });
"""
    env = {**os.environ, "BASE": gateway.url + "/v1", "KEY": KEY, "NODE_PATH": NODE_MODULES}
    done = await in_thread(subprocess.run, [node, "-e", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["first"] == "My name is Ada."
    assert "My name is Ada." in result["second"] and "<latest_user_message>\nWho am I?" in result["second"]
    assert result["gone"] is True
    assert "I like tea." in result["second"]
    assert result["kinds"][0] == "response.created" and result["kinds"][-1] == "response.completed"
    assert result["streamed"] == "Stream me"


@pytest_twisted.ensureDeferred
async def test_sessions_over_http(gateway):
    """
    A session over plain HTTP: two turns, the second CLI sees the first as
    history; the session lists its turns.
    """
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    created = await (await treq.post(gateway.url + "/sessions", json={"model": "gemini"}, headers=headers)).json()
    for prompt in ("Remember 42.", "Which number?"):
        response = await treq.post(
            gateway.url + "/completions", json={"prompt": prompt, "session_id": created["id"]}, headers=headers
        )
        body = await response.json()
        assert response.code == 200, body
    assert "Remember 42." in body["content"] and body["turn"] == 2
    shown = await (await treq.get(gateway.url + f"/sessions/{created['id']}", headers=headers)).json()
    assert [t["prompt"] for t in shown["turns"]] == ["Remember 42.", "Which number?"]
