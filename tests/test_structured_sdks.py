"""
Structured output and client-side tool calls through the official C{openai}
and C{anthropic} SDKs, unmodified, against a real C{twistd shellm} with every
provider behind it: the fake CLIs in C{FAKE_MODE=schema} (JSON for the
schema each received: claude's C{--json-schema}, codex's C{--output-schema}
file, the schema in gemini's instructions) and a fake Cerebras that answers
its C{response_format}.  Markers in a prompt make the fakes answer badly
(C{tests/fakes/schema_answer.py}).
"""

from __future__ import annotations

import json
import uuid

import pytest

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")
pydantic = pytest.importorskip("pydantic")

import pytest_twisted  # noqa: E402
import treq  # noqa: E402

from tests.conftest import processes_with_marker  # noqa: E402
from tests.test_sdks import KEY, PROVIDERS, Gateway, in_thread, raised  # noqa: E402

pytestmark = pytest.mark.slow


class Capital(pydantic.BaseModel):
    city: str
    population: int


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
ANTHROPIC_WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": WEATHER_TOOL["function"]["parameters"],
}


@pytest_twisted.async_yield_fixture(scope="module")
async def gateway(tmp_path_factory):
    """
    One daemon for the module, every provider answering JSON for the schema.
    """
    marker = f"shellm-test-{uuid.uuid4().hex}"
    gateway = Gateway(tmp_path_factory.mktemp("structured"), marker, fake_mode="schema")
    try:
        await gateway.start()
        yield gateway
    finally:
        await gateway.stop()
        assert not processes_with_marker(marker)


async def post(gateway, path: str, body: dict):
    response = await treq.post(
        gateway.url + path,
        json=body,
        headers={"Authorization": f"Bearer {KEY}"},
    )
    return response.code, json.loads(await response.text())


# ---------------------------------------------------------------- OpenAI


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest_twisted.ensureDeferred
async def test_openai_parse_with_a_pydantic_model(gateway, provider):
    """
    C{chat.completions.parse} with a pydantic model gets a parsed instance:
    the backend was given the schema (by its own mechanism) and the answer
    followed it.
    """
    completion = await in_thread(
        gateway.openai().chat.completions.parse,
        model=provider,
        messages=[{"role": "user", "content": "The capital of France?"}],
        response_format=Capital,
    )
    message = completion.choices[0].message
    assert message.parsed == Capital(city="fake", population=1)
    assert completion.choices[0].finish_reason == "stop"
    if provider == "claude":
        argv = gateway.last_record("claude")["argv"]
        assert json.loads(argv[argv.index("--json-schema") + 1])["required"] == ["city", "population"]
    if provider == "codex":
        argv = gateway.last_record("codex")["argv"]
        assert "--output-schema" in argv  # a file in the run's scratch folder, removed with it
    if provider == "cerebras":
        sent = gateway.cerebras.requests[-1]["body"]["response_format"]
        assert sent["type"] == "json_schema" and sent["json_schema"]["strict"] is True


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest_twisted.ensureDeferred
async def test_openai_tool_round_trip(gateway, provider):
    """
    Offered a function, the model calls it (C{tool_calls}, C{finish_reason:
    tool_calls}); the client runs it and sends the result as a C{tool}
    message; the next answer is text that used the result.
    """
    client = gateway.openai()
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = await in_thread(client.chat.completions.create, model=provider, messages=messages, tools=[WEATHER_TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"city": "fake"}
    if provider == "cerebras":
        # Native tools, not SheLLM's envelope instruction.
        sent = gateway.cerebras.requests[-1]["body"]
        assert sent["tools"] == [WEATHER_TOOL] and sent["tool_choice"] == "auto" and "response_format" not in sent
        assert all("tool_calls" not in m["content"] for m in sent["messages"])
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
    ]
    second = await in_thread(client.chat.completions.create, model=provider, messages=messages, tools=[WEATHER_TOOL])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "The tool said: sunny, 21 C"
    assert not second.choices[0].message.tool_calls


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest_twisted.ensureDeferred
async def test_openai_streamed_tool_call(gateway, provider):
    """
    Streamed, a call comes as tool-call deltas the SDK assembles, ending
    with C{finish_reason: tool_calls}.
    """
    client = gateway.openai()

    def collect():
        with client.chat.completions.stream(
            model=provider,
            messages=[{"role": "user", "content": "Weather in Rome?"}],
            tools=[WEATHER_TOOL],
        ) as stream:
            return stream.get_final_completion()

    final = await in_thread(collect)
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.choices[0].message.tool_calls[0].function.name == "get_weather"


@pytest_twisted.ensureDeferred
async def test_openai_repair_attempt_is_reported(gateway):
    """
    An answer that breaks the schema gets one repair attempt; the repaired
    answer is returned, and the response says it was repaired.
    """
    status, body = await post(
        gateway,
        "/v1/chat/completions",
        {
            "model": "codex",
            "messages": [{"role": "user", "content": "[bad-once] capital of France?"}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "c", "schema": Capital.model_json_schema()},
            },
        },
    )
    assert status == 200, body
    assert json.loads(body["choices"][0]["message"]["content"]) == {"city": "fake", "population": 1}
    assert body["shellm"] == {"validated": True, "repaired": True}


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest_twisted.ensureDeferred
async def test_invalid_answer_is_a_502_quoting_the_error(gateway, provider):
    """
    An answer that still breaks the schema after the repair attempt is a
    502 C{invalid_output} whose message quotes the validation error.
    """
    error = await raised(
        openai.InternalServerError,
        gateway.openai().chat.completions.parse,
        model=provider,
        messages=[{"role": "user", "content": "[bad-json] capital of France?"}],
        response_format=Capital,
    )
    assert error.status_code == 502 and error.code == "invalid_output"
    assert "is not of type 'object'" in error.message and "after one repair" in error.message
    assert error.response.headers["x-should-retry"] == "false"


@pytest_twisted.ensureDeferred
async def test_call_to_an_unknown_function_is_a_502(gateway):
    """
    A call to a function that was not offered is repaired once, then a 502
    naming the function.
    """
    error = await raised(
        openai.InternalServerError,
        gateway.openai().chat.completions.create,
        model="gemini",
        messages=[{"role": "user", "content": "[unknown-tool] weather?"}],
        tools=[WEATHER_TOOL],
    )
    assert error.code == "invalid_output" and "unknown function 'no_such_function'" in error.message


@pytest.mark.parametrize(
    "schema, why",
    [
        ({"$ref": "https://example.com/schema.json"}, "must point inside the schema"),
        ({"type": "object", "properties": {"a": {"$dynamicRef": "#x"}}}, "$dynamicRef"),
        ({"type": "nonsense"}, "not a valid JSON Schema"),
        ({"type": "object", "description": "x" * 40000}, "too large"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_schema_shellm_cannot_handle_is_a_400(gateway, schema, why):
    """
    A schema that reaches outside itself, uses dynamic references, is not a
    schema or is too large is refused before anything runs, naming the field.
    """
    error = await raised(
        openai.BadRequestError,
        gateway.openai().chat.completions.create,
        model="claude",
        messages=[{"role": "user", "content": "hi"}],
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    )
    assert error.param == "response_format.json_schema.schema" and why in error.message


# ---------------------------------------------------------------- Anthropic


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest_twisted.ensureDeferred
async def test_anthropic_messages_parse(gateway, provider):
    """
    C{messages.parse} with C{output_format} (sent as C{output_config.format})
    gets a parsed instance.
    """
    message = await in_thread(
        gateway.anthropic().messages.parse,
        model=provider,
        max_tokens=200,
        messages=[{"role": "user", "content": "Capital of France?"}],
        output_format=Capital,
    )
    assert message.parsed_output == Capital(city="fake", population=1)
    assert message.stop_reason == "end_turn"


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest_twisted.ensureDeferred
async def test_anthropic_tool_use_loop(gateway, provider):
    """
    Offered a tool, the model answers with a C{tool_use} block
    (C{stop_reason: tool_use}); the client's C{tool_result} goes back and
    the final answer is text that used it.
    """
    client = gateway.anthropic()
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    first = await in_thread(
        client.messages.create, model=provider, max_tokens=200, messages=messages, tools=[ANTHROPIC_WEATHER_TOOL]
    )
    assert first.stop_reason == "tool_use"
    use = next(block for block in first.content if block.type == "tool_use")
    assert use.name == "get_weather" and use.input == {"city": "fake"} and use.id.startswith("toolu_")
    messages += [
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "rainy, 12 C"}]},
    ]
    final = await in_thread(
        client.messages.create, model=provider, max_tokens=200, messages=messages, tools=[ANTHROPIC_WEATHER_TOOL]
    )
    assert final.stop_reason == "end_turn"
    assert [block.text for block in final.content if block.type == "text"] == ["The tool said: rainy, 12 C"]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest_twisted.ensureDeferred
async def test_anthropic_streamed_tool_use(gateway, provider):
    """
    Streamed, the call is a C{tool_use} block filled by C{input_json_delta}s,
    which the SDK assembles into the input.
    """
    client = gateway.anthropic()

    def collect():
        with client.messages.stream(
            model=provider,
            max_tokens=200,
            messages=[{"role": "user", "content": "Weather in Oslo?"}],
            tools=[ANTHROPIC_WEATHER_TOOL],
            tool_choice={"type": "any"},
        ) as stream:
            return stream.get_final_message()

    final = await in_thread(collect)
    assert final.stop_reason == "tool_use"
    use = next(block for block in final.content if block.type == "tool_use")
    assert use.input == {"city": "fake"}


# ---------------------------------------------------------------- native


@pytest_twisted.ensureDeferred
async def test_native_completions_response_format(gateway):
    """
    The native C{/completions} takes an OpenAI-shaped C{response_format} and
    says the answer was validated.
    """
    status, body = await post(
        gateway,
        "/completions",
        {
            "model": "gemini",
            "prompt": "Capital of France?",
            "response_format": {"type": "json_schema", "json_schema": {"schema": Capital.model_json_schema()}},
        },
    )
    assert status == 200, body
    assert json.loads(body["content"]) == {"city": "fake", "population": 1}
    assert (body["validated"], body["repaired"]) == (True, False)


@pytest_twisted.ensureDeferred
async def test_native_stream_final_event_says_validated(gateway):
    """
    Streamed, JSON deltas are sent as they come and the final event says the
    whole validated; an answer that does not ends with an invalid_output
    error event instead.
    """
    for prompt, expected in (("Capital?", True), ("[bad-json] Capital?", False)):
        response = await treq.post(
            gateway.url + "/completions/stream",
            json={"model": "claude", "prompt": prompt, "response_format": {"type": "json_object"}},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        events = [
            json.loads(line[len("data: ") :])
            for line in (await response.text()).splitlines()
            if line.startswith("data: ")
        ]
        final = events[-1]
        assert final["done"] is True
        if expected:
            assert final["validated"] is True
            assert json.loads("".join(e["content"] for e in events[:-1])) == {}
        else:
            assert final["error"] == "invalid_output"
