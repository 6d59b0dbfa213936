"""
What a fake model answers when asked for JSON that follows a schema (the
fake CLIs' C{FAKE_MODE=schema}, and the fake vendor servers).

A good answer is a value built from the schema.  For SheLLM's tool-call
envelope (a schema whose properties are C{content} and C{tool_calls}) it is
a call to the first function offered, or, once the prompt holds a
C{<tool_result>}, a text answer quoting that result.  Markers in the prompt
ask for a bad answer instead:

  - C{[bad-json]}: always a value that breaks the schema;
  - C{[bad-once]}: a bad value, unless the prompt is SheLLM's repair prompt;
  - C{[unknown-tool]}: a call to a function nobody offered;
  - C{[not-json]}: prose, not JSON.

When a call is required and a result is already in the prompt (an agent
whose answer is its final-result tool), the answer calls the last function.

Standard library only: the fakes run as plain scripts.
"""

import json
import re

REPAIR_NOTE = "Your previous answer did not follow the required format"
_RESULT = re.compile(r"<tool_result[^>]*>\n(.*?)\n</tool_result>", re.DOTALL)
_SCHEMA = re.compile(r"<json_schema>\n(.*?)\n</json_schema>", re.DOTALL)


def schema_in_prompt(prompt):
    """
    The schema of SheLLM's instruction in a prompt (for a CLI with no
    schema option of its own), or None.
    """
    found = _SCHEMA.findall(prompt)
    return json.loads(found[-1]) if found else None


def sample(schema, root=None):
    """
    A value that follows C{schema} (the subset of keywords the tests use).
    """
    root = schema if root is None else root
    if not isinstance(schema, dict):
        return None
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            if part:
                target = target[part]
        return sample(target, root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return sample(schema[key][0], root)
    if "allOf" in schema:
        merged = {}
        for part in schema["allOf"]:
            merged.update(part)
        return sample(merged, root)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties", {})
        return {name: sample(sub, root) for name, sub in properties.items()}
    if kind == "array":
        count = max(1, schema.get("minItems", 1))
        return [sample(schema.get("items", {}), root) for _ in range(count)]
    if kind == "integer":
        return max(1, schema.get("minimum", 1))
    if kind == "number":
        return max(1.5, schema.get("minimum", 1.5))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    if kind == "string":
        return "x" * max(schema.get("minLength", 0), 1) if "minLength" in schema else "fake"
    return {}


def is_envelope(schema):
    return isinstance(schema, dict) and set(schema.get("properties", {})) == {"content", "tool_calls"}


def _first_call(schema):
    return _call(schema, 0)


def _call(schema, which):
    items = schema["properties"]["tool_calls"]["items"]
    branch = items["anyOf"][which] if "anyOf" in items else items
    properties = branch["properties"]
    return {"name": properties["name"]["const"], "arguments": sample(properties["arguments"], schema)}


def answer(schema, prompt):
    """
    The JSON value a fake model answers with (see the module docstring).
    """
    repairing = REPAIR_NOTE in prompt
    bad = "[bad-json]" in prompt or ("[bad-once]" in prompt and not repairing)
    if is_envelope(schema):
        if "[unknown-tool]" in prompt:
            return {"content": None, "tool_calls": [{"name": "no_such_function", "arguments": {}}]}
        if bad:
            call = _first_call(schema)
            return {"content": None, "tool_calls": [{"name": call["name"], "arguments": {"unexpected": [1, 2]}}]}
        results = _RESULT.findall(prompt)
        if results and schema["properties"]["tool_calls"].get("minItems"):
            # A call is required (an agent's final-result tool): the last one.
            return {"content": None, "tool_calls": [_call(schema, -1)]}
        if results:
            return {"content": "The tool said: " + results[-1].strip(), "tool_calls": []}
        return {"content": None, "tool_calls": [_first_call(schema)]}
    if bad:
        return ["this", "breaks", "the", "schema"] if schema.get("type") != "array" else {"not": "a list"}
    return sample(schema)


def answer_text(schema, prompt):
    """
    L{answer} as the text a model prints.
    """
    if "[not-json]" in prompt and REPAIR_NOTE not in prompt:
        return "Sure! Here is what you asked for."
    return json.dumps(answer(schema, prompt))
