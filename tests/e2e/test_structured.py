"""
Structured output and tool calls with the real CLIs: each gets the schema
through its own mechanism (claude C{--json-schema}, offered to the model as
a StructuredOutput tool; codex C{--output-schema}, sent as C{text.format};
gemini SheLLM's instruction), the fake upstream answers JSON for it, and
SheLLM validates what comes back.  No other tool is offered.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from tests.e2e.conftest import CLIS, complete
from tests.e2e.fakes import anthropic, gemini, openai_responses
from tests.e2e.test_no_tools import CODEX_MACHINE_TOOLS, assert_nothing_happened

pytestmark = pytest.mark.e2e

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
    "additionalProperties": False,
}
WEATHER = {
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
OFFERED = {"claude": anthropic.tool_names, "codex": openai_responses.tool_names, "gemini": gemini.tool_names}


def chat(content: str, **fields) -> dict:
    return {"model": "{cli}", "messages": [{"role": "user", "content": content}], **fields}


def schema_format() -> dict:
    return {"type": "json_schema", "json_schema": {"name": "capital", "strict": True, "schema": SCHEMA}}


async def ask(rig, daemon, body: dict):
    body = {**body, "model": rig.name}
    return await complete(daemon, body, path="/v1/chat/completions", timeout=90)


def assert_only_the_answer_tool(rig) -> None:
    """
    The CLI offered the model nothing that acts: claude only its
    StructuredOutput tool (no side effect), the others no tool at all
    (codex declares no tool that reaches the machine; its code-mode tools
    are proven harmless by test_no_tools).
    """
    for recorded in rig.fake.api_requests():
        offered = [t for t in OFFERED[rig.name](recorded.body) or [] if t]
        if rig.name == "claude":
            # DeferredToolPlaceholder stands for tools loaded on demand; with
            # --tools "" there are none to load.
            assert set(offered) <= {anthropic.STRUCTURED, "DeferredToolPlaceholder"}, offered
        elif rig.name == "codex":
            assert not set(offered) & CODEX_MACHINE_TOOLS, offered
        else:
            assert offered == [], offered


@pytest.mark.parametrize("cli", CLIS)
@pytest_twisted.ensureDeferred
async def test_json_schema_answer_through_the_cli(rigs, cli):
    """
    A json_schema request comes back as JSON that follows the schema; the
    CLI carried the schema by its own mechanism; no acting tool was offered.
    """
    rig = rigs(cli)
    rig.script(schema_answers=True)
    daemon = await rig.daemon()
    status, body, _ = await ask(rig, daemon, chat("Capital of France?", response_format=schema_format()))
    assert status == 200, body
    assert json.loads(body["choices"][0]["message"]["content"]) == {"city": "fake", "population": 1}
    assert body["shellm"] == {"validated": True, "repaired": False}
    last = rig.fake.api_requests()[-1].body
    if cli == "codex":
        assert last["text"]["format"]["schema"] == SCHEMA
    if cli == "claude":
        tools = {t["name"]: t for t in rig.fake.api_requests()[0].body["tools"]}
        assert tools[anthropic.STRUCTURED]["input_schema"]["required"] == ["city", "population"]
    assert_only_the_answer_tool(rig)


@pytest.mark.parametrize("cli", CLIS)
@pytest_twisted.ensureDeferred
async def test_tool_call_through_the_cli(rigs, cli):
    """
    Offered a function, the answer is an OpenAI tool call; the CLI itself
    ran nothing and offered nothing that acts.
    """
    rig = rigs(cli)
    rig.script(schema_answers=True)
    daemon = await rig.daemon()
    status, body, _ = await ask(rig, daemon, chat("Weather in Paris?", tools=[WEATHER]))
    assert status == 200, body
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {"city": "fake"}
    assert_only_the_answer_tool(rig)


@pytest.mark.parametrize("cli", CLIS)
@pytest_twisted.ensureDeferred
async def test_bad_answers_are_invalid_output(rigs, cli):
    """
    An upstream that keeps breaking the schema (or calling a function nobody
    offered) gets one repair attempt, then a 502 invalid_output.
    """
    rig = rigs(cli)
    rig.script(schema_answers=True)
    daemon = await rig.daemon()
    status, body, _ = await ask(rig, daemon, chat("[bad-json] Capital?", response_format=schema_format()))
    assert status == 502, body
    assert body["error"]["code"] == "invalid_output"
    status, body, _ = await ask(rig, daemon, chat("[unknown-tool] Weather?", tools=[WEATHER]))
    assert status == 502, body
    assert "unknown function 'no_such_function'" in body["error"]["message"]
    status, body, _ = await ask(rig, daemon, chat("[bad-once] Capital?", response_format=schema_format()))
    assert status == 200, body
    assert body["shellm"] == {"validated": True, "repaired": True}


@pytest.mark.parametrize("cli", CLIS)
@pytest_twisted.ensureDeferred
async def test_schema_mode_still_runs_no_tool(rigs, cli):
    """
    Asking for a schema switches no tool on: an upstream that answers with a
    shell command (as a prompt injection would make it) runs nothing, and
    the answer still comes back validated.
    """
    rig = rigs(cli)
    rig.script(schema_answers=True, tool="shell", force_tool=True)
    daemon = await rig.daemon()
    status, body, _ = await ask(rig, daemon, chat("Capital?", response_format=schema_format()))
    assert_nothing_happened(rig, body)
    if status == 200:
        assert json.loads(body["choices"][0]["message"]["content"]) == {"city": "fake", "population": 1}
    else:
        assert body["error"]["code"] == "invalid_output", body
