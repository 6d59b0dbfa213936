"""
Client libraries built on the SDKs, unmodified, against a real daemon with
every provider (the fake CLIs in C{FAKE_MODE=schema}, the fake Cerebras):
structured output and tool calls as their users write them.  Each library
is optional (C{pip install -e '.[test]'} brings them); a missing one skips.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid

import pytest
import pytest_twisted

pydantic = pytest.importorskip("pydantic")

from tests.conftest import processes_with_marker  # noqa: E402
from tests.test_sdks import KEY, PROVIDERS, TIMEOUT, Gateway, in_thread  # noqa: E402

pytestmark = pytest.mark.slow


class Capital(pydantic.BaseModel):
    city: str
    population: int


@pytest_twisted.async_yield_fixture(scope="module")
async def gateway(tmp_path_factory):
    marker = f"shellm-test-{uuid.uuid4().hex}"
    gateway = Gateway(tmp_path_factory.mktemp("libraries"), marker, fake_mode="schema")
    try:
        await gateway.start()
        yield gateway
    finally:
        await gateway.stop()
        assert not processes_with_marker(marker)


@pytest.mark.parametrize("mode", ["TOOLS", "JSON_SCHEMA"])
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest_twisted.ensureDeferred
async def test_instructor(gateway, provider, mode):
    """
    instructor, in its TOOLS mode (a forced function call) and its
    JSON_SCHEMA mode (response_format), gets a validated model instance.
    """
    instructor = pytest.importorskip("instructor")
    client = instructor.from_openai(gateway.openai(), mode=getattr(instructor.Mode, mode))
    capital = await in_thread(
        client.chat.completions.create,
        model=provider,
        response_model=Capital,
        max_retries=0,
        messages=[{"role": "user", "content": "The capital of France?"}],
    )
    assert capital.model_dump() == {"city": "fake", "population": 1}


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest_twisted.ensureDeferred
async def test_pydantic_ai_agent_with_a_tool_and_structured_output(gateway, provider):
    """
    A pydantic-ai agent with a function tool and a model class as output:
    the model calls the tool, pydantic-ai runs it and sends the result, and
    the run ends with the output tool's validated instance.
    """
    pytest.importorskip("pydantic_ai")
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    model = OpenAIChatModel(provider, provider=OpenAIProvider(base_url=gateway.url + "/v1", api_key=KEY))
    agent = Agent(model, output_type=Capital, retries=0)
    ran = []

    @agent.tool_plain
    def look_up_city(city: str) -> str:
        """The official name of a city."""
        ran.append(city)
        return f"{city} is a city"

    result = await in_thread(agent.run_sync, "The capital of France, and how many live there?")
    assert result.output == Capital(city="fake", population=1)
    assert ran == ["fake"]


def langchain_chat(gateway, provider: str, dialect: str):
    if dialect == "openai":
        from langchain_openai import ChatOpenAI

        # LangChain sends "codex" models to the Responses API unless told
        # otherwise; SheLLM speaks Chat Completions.
        return ChatOpenAI(
            model=provider,
            base_url=gateway.url + "/v1",
            api_key=KEY,
            max_retries=0,
            timeout=TIMEOUT,
            use_responses_api=False,
        )
    from langchain_anthropic import ChatAnthropic

    return ChatAnthropic(
        model=provider, base_url=gateway.url, api_key=KEY, max_retries=0, timeout=TIMEOUT, max_tokens=200
    )


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest_twisted.ensureDeferred
async def test_langchain_with_structured_output(gateway, provider, dialect):
    """
    LangChain's C{with_structured_output} (ChatOpenAI: a JSON schema;
    ChatAnthropic: a forced tool call) returns the model instance.
    """
    pytest.importorskip(f"langchain_{dialect}")
    chat = langchain_chat(gateway, provider, dialect).with_structured_output(Capital)
    capital = await in_thread(chat.invoke, "The capital of France?")
    assert capital == Capital(city="fake", population=1)


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest_twisted.ensureDeferred
async def test_langchain_bind_tools_round_trip(gateway, provider, dialect):
    """
    C{bind_tools}: the model's call comes back as C{tool_calls} on the
    AIMessage; the result as a ToolMessage gets a final text answer.
    """
    pytest.importorskip(f"langchain_{dialect}")
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    chat = langchain_chat(gateway, provider, dialect).bind_tools([get_weather])
    messages = [HumanMessage("Weather in Paris?")]
    first = await in_thread(chat.invoke, messages)
    (call,) = first.tool_calls
    assert call["name"] == "get_weather" and call["args"] == {"city": "fake"}
    messages += [first, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    final = await in_thread(chat.invoke, messages)
    assert not final.tool_calls
    assert (
        final.text == "The tool said: sunny in fake" if hasattr(final, "text") and isinstance(final.text, str) else True
    )


NODE_CLIENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest_twisted.ensureDeferred
async def test_vercel_ai_sdk_generate_object_and_tools(gateway, provider):
    """
    The Vercel AI SDK (Node): C{generateObject} with a zod schema gets the
    object; C{generateText} with a tool runs it and ends with text.  Needs
    C{npm ci --prefix tests/node}; skipped without it.
    """
    node = shutil.which("node")
    if node is None or not os.path.isdir(os.path.join(NODE_CLIENTS, "node_modules", "ai")):
        pytest.skip("the AI SDK is not installed (npm ci --prefix tests/node)")
    from twisted.internet import reactor
    from twisted.internet.utils import getProcessOutputAndValue

    out, err, code = await getProcessOutputAndValue(
        node,
        [os.path.join(NODE_CLIENTS, "generate_object.mjs"), gateway.url + "/v1", KEY, provider],
        env={"PATH": os.environ.get("PATH", "")},
        path=NODE_CLIENTS,
        reactor=reactor,
    )
    result = json.loads(out.decode().strip().splitlines()[-1]) if out.strip() else {"stderr": err.decode()[-2000:]}
    assert code == 0, result
    assert result["object"] == {"city": "fake", "population": 1}
    assert result["ran"] == ["fake"] and result["text"] == "The tool said: sunny in fake"
