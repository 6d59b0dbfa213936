"""
A prompt template named by a completion request, rendered where the request's
prompt is built, so the text it makes obeys every limit a prompt obeys.

  - C{/completions} (and jobs): C{"template": name}, optional
    C{"template_version"}, C{"variables": {...}} instead of C{"prompt"}.
  - C{/v1/responses}: OpenAI's C{"prompt": {"id", "version", "variables"}}.

A template's system text comes first; the request's own C{system} (or
C{instructions}) follows it, after a blank line.
"""

from __future__ import annotations

from typing import Any

from shellm.errors import InvalidField, InvalidRequest
from shellm.http.templates_api import version_number
from shellm.state.templates import Rendered, TemplateStore, check_name

#: The seed fields that name a template.
SEED_FIELDS = ("template", "template_version", "variables")
_PROMPT_FIELDS = ("id", "version", "variables")


def _store(templates: TemplateStore | None) -> TemplateStore:
    if templates is None:
        raise InvalidRequest("prompt templates need the state store, which is not configured")
    return templates


def joined_system(template_system: str | None, own: Any) -> Any:
    """
    The template's system text, then the request's own (left as given when
    it is not text, for the request's parser to refuse).
    """
    if template_system is None or (own is not None and not isinstance(own, str)):
        return own
    return template_system if not own else f"{template_system}\n\n{own}"


async def expand_seed(templates: TemplateStore | None, body: dict[str, Any]) -> Rendered | None:
    """
    Put the prompt (and system) a seed body's template makes into C{body},
    in place of the template fields; nothing when it names no template.

    @raise InvalidField: naming the field or variable that is wrong.
    @raise TemplateNotFound: no such template.
    @raise TemplateVersionNotFound: no such version.
    """
    named = [field for field in SEED_FIELDS if field in body]
    if not named:
        return None
    if "template" not in body:
        raise InvalidField(f'field "{named[0]}" goes with "template"', named[0])
    if "prompt" in body:
        raise InvalidField('give "prompt" or "template", not both', "prompt")
    name = check_name(body.pop("template"), "template")
    version = body.pop("template_version", None)
    template = await _store(templates).get(
        name, version_number(version, "template_version") if version is not None else None
    )
    rendered = template.render(body.pop("variables", None), "variables")
    body["prompt"] = rendered.prompt
    system = joined_system(rendered.system, body.get("system"))
    if system is not None:
        body["system"] = system
    return rendered


def _variable_text(name: str, value: Any) -> Any:
    """
    An OpenAI prompt variable: a string, or an C{input_text} part.
    """
    if not isinstance(value, dict):
        return value
    kind = value.get("type")
    if kind == "input_text" and isinstance(value.get("text"), str):
        return value["text"]
    where = f"prompt.variables.{name}"
    raise InvalidField(f'{where}: "{str(kind)[:50]}" is not supported; SheLLM takes text variables', where)


async def render_prompt_object(templates: TemplateStore | None, value: Any) -> Rendered:
    """
    OpenAI's C{prompt} field (C{ResponsePromptParam}), rendered.

    @raise InvalidField: naming the field or variable that is wrong.
    """
    if not isinstance(value, dict) or "id" not in value:
        raise InvalidField('"prompt" must be {"id": name, "version"?: "n", "variables"?: {...}}', "prompt")
    unknown = sorted(set(value) - set(_PROMPT_FIELDS))
    if unknown:
        raise InvalidField(f'unknown field: "prompt.{unknown[0][:100]}"', f"prompt.{unknown[0][:100]}")
    name = check_name(value["id"], "prompt.id")
    version = value.get("version")
    template = await _store(templates).get(
        name, version_number(version, "prompt.version") if version is not None else None
    )
    variables = value.get("variables")
    if isinstance(variables, dict):
        variables = {key: _variable_text(key, item) for key, item in variables.items()}
    return template.render(variables, "prompt.variables")
