"""
The validation and repair rules of L{shellm.structured}, without a daemon.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet.defer import succeed

from shellm.completion import Completion, CompletionRequest, TextDelta, Usage
from shellm.errors import InvalidField, InvalidOutput
from shellm.models import DEFAULT_MODELS
from shellm.structured import (
    REPAIR_NOTE,
    InvalidAnswer,
    answer,
    check_schema,
    json_schema_spec,
    make_tool,
    tools_spec,
)

pytestmark = pytest.mark.timeout(10)

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
}
WEATHER = make_tool(
    "get_weather",
    "The weather",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "tools[0].function",
)
TIME = make_tool("get_time", None, None, "tools[1].function")


def tools(required=False, parallel=True, only=None):
    return tools_spec([WEATHER, TIME], "tools", required, parallel, only)


def test_json_answer_is_validated_and_normalised():
    """
    A JSON answer that follows the schema is returned as compact JSON; a
    fenced one counts (models fence out of habit); anything else says why.
    """
    spec = json_schema_spec(SCHEMA, "schema")
    assert json.loads(spec.read('```json\n{"city": "Paris", "population": 2}\n```').content) == {
        "city": "Paris",
        "population": 2,
    }
    with pytest.raises(InvalidAnswer, match="not valid JSON"):
        spec.read("Paris, about 2 million")
    with pytest.raises(InvalidAnswer, match=r"at /population: 'many' is not of type 'integer'"):
        spec.read('{"city": "Paris", "population": "many"}')
    with pytest.raises(InvalidAnswer, match="'population' is a required property"):
        spec.read('{"city": "Paris"}')


def test_tool_calls_are_checked_against_the_offered_functions():
    """
    A call must name an offered function with arguments that follow its
    schema; the rules of tool_choice and parallel_tool_calls hold.
    """
    ok = tools().read('{"content": null, "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}')
    (call,) = ok.tool_calls
    assert (call.name, json.loads(call.arguments_json), ok.content) == ("get_weather", {"city": "Oslo"}, None)
    assert tools().read('{"content": "Hello", "tool_calls": []}').content == "Hello"
    with pytest.raises(InvalidAnswer, match="unknown function 'rm_rf'"):
        tools().read('{"content": null, "tool_calls": [{"name": "rm_rf", "arguments": {}}]}')
    with pytest.raises(InvalidAnswer, match=r"tool_calls\[0\].arguments \(get_weather\).*'city' is a required"):
        tools().read('{"content": null, "tool_calls": [{"name": "get_weather", "arguments": {}}]}')
    with pytest.raises(InvalidAnswer, match="a function call is required"):
        tools(required=True).read('{"content": "no", "tool_calls": []}')
    call = '{"name": "get_time", "arguments": {}}'
    two = f'{{"content": null, "tool_calls": [{call}, {call}]}}'
    assert len(tools().read(two).tool_calls) == 2
    with pytest.raises(InvalidAnswer, match="at most one"):
        tools(parallel=False).read(two)
    with pytest.raises(InvalidAnswer, match="unknown function 'get_weather'"):
        tools(only="get_time").read(
            '{"content": null, "tool_calls": [{"name": "get_weather", "arguments": {"city": "x"}}]}'
        )


def test_envelope_keeps_each_functions_definitions():
    """
    Functions whose parameters use local $defs (as pydantic writes them)
    make one envelope whose references still resolve.
    """
    nested = {
        "type": "object",
        "properties": {"where": {"$ref": "#/$defs/Place"}},
        "required": ["where"],
        "$defs": {"Place": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
    }
    spec = tools_spec([make_tool("go", None, nested, "tools[0].function")], "tools", False, True)
    envelope = spec.schema
    assert "f0_Place" in envelope["$defs"]
    check_schema(envelope, "x")
    good = {"content": None, "tool_calls": [{"name": "go", "arguments": {"where": {"city": "Rome"}}}]}
    from jsonschema import Draft202012Validator

    assert Draft202012Validator(envelope).is_valid(good)
    assert not Draft202012Validator(envelope).is_valid(
        {"content": None, "tool_calls": [{"name": "go", "arguments": {"where": {}}}]}
    )


@pytest.mark.parametrize(
    "schema, why",
    [
        ({"$ref": "https://example.com/s.json"}, "must point inside"),
        ({"$ref": "file:///etc/passwd"}, "must point inside"),
        ({"$id": "https://example.com/s"}, "URL"),
        ({"$dynamicRef": "#meta"}, "$dynamicRef"),
        ({"type": 5}, "not a valid JSON Schema"),
        ({"$schema": "http://json-schema.org/draft-04/schema#"}, "2020-12"),
        ([1], "must be a JSON Schema object"),
        (
            {
                "a": {
                    "a": {
                        "a": {
                            "a": {
                                "a": {
                                    "a": {
                                        "a": {
                                            "a": {
                                                "a": {
                                                    "a": {
                                                        "a": {
                                                            "a": {
                                                                "a": {
                                                                    "a": {
                                                                        "a": {
                                                                            "a": {
                                                                                "a": {
                                                                                    "a": {
                                                                                        "a": {
                                                                                            "a": {
                                                                                                "a": {
                                                                                                    "a": {
                                                                                                        "a": {
                                                                                                            "a": {
                                                                                                                "a": {}
                                                                                                            }
                                                                                                        }
                                                                                                    }
                                                                                                }
                                                                                            }
                                                                                        }
                                                                                    }
                                                                                }
                                                                            }
                                                                        }
                                                                    }
                                                                }
                                                            }
                                                        }
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            },
            "deeply",
        ),
    ],
)
def test_schemas_shellm_cannot_handle_are_refused(schema, why):
    with pytest.raises(InvalidField, match=why.replace("$", r"\$")) as caught:
        check_schema(schema, "response_format.json_schema.schema")
    assert caught.value.status == 400 and caught.value.param == "response_format.json_schema.schema"


# -- running


def request(spec) -> CompletionRequest:
    return CompletionRequest(model="claude", entry=DEFAULT_MODELS[0], prompt="Q", output=spec)


def completion(content: str, tokens=(10, 5)) -> Completion:
    return Completion(
        content=content,
        provider="claude",
        model="m",
        duration_ms=1,
        queued_ms=0,
        request_id="r",
        usage=Usage(*tokens),
        cost_usd=0.01,
    )


class Runs:
    """
    Answers in turn, recording the requests and sinks it was given.
    """

    def __init__(self, *answers):
        self.answers = list(answers)
        self.prompts: list[str] = []

    def first(self, sink):
        text = self.answers.pop(0)
        sink(TextDelta(text))
        self.prompts.append("first")
        return succeed(completion(text))

    def again(self, repair, sink):
        self.prompts.append(repair.prompt)
        return succeed(completion(self.answers.pop(0), (20, 6)))


@pytest_twisted.ensureDeferred
async def test_one_repair_attempt_then_the_answer():
    """
    An invalid answer is sent back once with the error; the repaired answer
    is returned, marked repaired, with both runs' usage and cost.
    """
    runs = Runs('{"city": "Paris"}', '{"city": "Paris", "population": 2}')
    spec = json_schema_spec(SCHEMA, "schema")
    done = await answer(request(spec), runs.first, runs.again, lambda e: None)
    assert json.loads(done.content) == {"city": "Paris", "population": 2}
    assert done.answer.repaired and done.answer.validated
    assert (done.usage, done.cost_usd) == (Usage(30, 11), 0.02)
    assert REPAIR_NOTE in runs.prompts[1] and "'population' is a required property" in runs.prompts[1]
    assert '<previous_answer>\n{"city": "Paris"}\n</previous_answer>' in runs.prompts[1]


@pytest_twisted.ensureDeferred
async def test_second_invalid_answer_is_invalid_output():
    """
    No second repair: a 502 invalid_output quoting the validation error.
    """
    runs = Runs("[]", '{"city": 1, "population": 1}')
    with pytest.raises(InvalidOutput) as caught:
        await answer(request(json_schema_spec(SCHEMA, "schema")), runs.first, runs.again, lambda e: None)
    assert caught.value.status == 502 and caught.value.code == "invalid_output"
    assert "even after one repair" in caught.value.message and "1 is not of type 'string'" in caught.value.message
    assert len(runs.prompts) == 2


@pytest_twisted.ensureDeferred
async def test_streamed_json_is_live_and_not_repaired():
    """
    Streamed JSON reaches the client as it comes, so an invalid one cannot
    be repaired: it ends with invalid_output; a valid one is marked validated.
    """
    sent = []
    runs = Runs("not json")
    with pytest.raises(InvalidOutput, match="not valid JSON"):
        await answer(request(json_schema_spec(SCHEMA, "s")), runs.first, runs.again, sent.append, streaming=True)
    assert sent == [TextDelta("not json")] and runs.prompts == ["first"]
    good = '{"city": "P", "population": 1}'
    done = await answer(request(json_schema_spec(SCHEMA, "s")), Runs(good).first, None, sent.append, streaming=True)
    assert done.answer.validated and done.content == good


@pytest_twisted.ensureDeferred
async def test_streamed_tool_calls_are_held_until_validated():
    """
    A tool-call answer is never streamed raw: the dialect writes the calls.
    """
    sent = []
    raw = '{"content": null, "tool_calls": [{"name": "get_time", "arguments": {}}]}'
    done = await answer(request(tools()), Runs(raw).first, None, sent.append, streaming=True)
    assert sent == [] and done.answer.tool_calls[0].name == "get_time"
