"""
The OpenAPI schemas of the fields that name a prompt template in a
completion request (L{shellm.http.template_use}), shared by C{/completions}
and C{/jobs}.
"""

from __future__ import annotations

from typing import Any

from shellm import rendering
from shellm.state import templates

#: A prompt template's name.
TEMPLATE_NAME: dict[str, Any] = {"type": "string", "pattern": f"^{templates.NAME.pattern}$"}
#: A template's variables: each a string or a number.
TEMPLATE_VARIABLES: dict[str, Any] = {
    "type": ["object", "null"],
    "propertyNames": {"pattern": f"^{rendering.NAME.pattern}$"},
    "additionalProperties": {"type": ["string", "number"]},
}
#: The seed fields that name a template instead of a prompt.
TEMPLATE_FIELDS: dict[str, Any] = {
    "template": TEMPLATE_NAME | {"description": "a prompt template's name, instead of prompt"},
    "template_version": {
        "type": ["integer", "null"],
        "minimum": 1,
        "maximum": 1_000_000_000,
        "description": "default: the latest",
    },
    "variables": TEMPLATE_VARIABLES | {"description": "the template's variables, every one of them"},
}
#: A body has a prompt, or a template and its fields, not both.
PROMPT_OR_TEMPLATE: list[dict[str, Any]] = [
    {"required": ["prompt"], "not": {"anyOf": [{"required": [name]} for name in TEMPLATE_FIELDS]}},
    {"required": ["template"], "not": {"required": ["prompt"]}},
]
NO_TEMPLATE = "template_not_found or template_version_not_found: no such prompt template or version"
