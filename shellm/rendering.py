"""
Prompt template text: C{{{ name }}} placeholders, checked and filled.

The syntax is the double braces of OpenAI's stored prompts, Langfuse and
Portkey, and nothing else: no sections, no logic, no attribute access, no
escaping.  It is a stdlib C{string.Template} with its own pattern, so

  - a value is inserted verbatim and never scanned again (a value holding
    C{{{ x }}} stays that text);
  - single braces (JSON) and C{$} are plain text;
  - C{{{{{} writes a literal C{{{}, and any other C{{{} that does not open a
    placeholder is an error (line and column) when the template is saved,
    rather than text a model would puzzle over.

Rendering is strict: a missing variable, one the template does not use, or
a value that is not a string or a number is refused, naming the variable.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping

from shellm.errors import InvalidField

#: A variable's name, as a placeholder and in a request.
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class TemplateInvalid(InvalidField):
    code = "invalid_template"


class MissingVariables(InvalidField):
    code = "missing_template_variables"


class UnknownVariables(InvalidField):
    code = "unknown_template_variables"


class InvalidVariable(InvalidField):
    code = "invalid_template_variable"


_JSON_KINDS = {type(None): "null", bool: "a boolean", dict: "an object", list: "an array"}


#: string.Template's four groups: C{{{{{}, a placeholder, never, anything else.
_PATTERN = rf"""
\{{\{{(?:
  (?P<escaped>\{{\{{) |
  [ \t]*(?P<named>{NAME.pattern})[ \t]*\}}\}} |
  (?P<braced>(?!)) |
  (?P<invalid>)
)"""
_SCAN = re.compile(_PATTERN, re.VERBOSE)


class _Placeholders(string.Template):
    delimiter = "{{"
    pattern = _PATTERN  # type: ignore[assignment]  # compiled by string.Template itself
    flags = re.NOFLAG


def check(text: str, field: str) -> tuple[str, ...]:
    """
    The variables C{text} uses, in order of first use.

    @raise TemplateInvalid: at the first C{{{} that opens no placeholder,
        with its line and column.
    """
    parsed = _Placeholders(text)
    if not parsed.is_valid():
        for match in _SCAN.finditer(text):
            if match.group("invalid") is not None:
                start = match.start()
                line = text.count("\n", 0, start) + 1
                column = start - (text.rfind("\n", 0, start) + 1) + 1
                raise TemplateInvalid(
                    f"{field}: line {line}, column {column}: {{{{ opens no placeholder; a placeholder is "
                    "{{ name }} (letters, digits and _), and {{{{ writes a literal {{",
                    field,
                )
    return tuple(parsed.get_identifiers())


def fill(text: str, values: Mapping[str, str]) -> str:
    """
    C{text} with each placeholder replaced by its value, verbatim; every
    variable is in C{values} (see L{check_values}).
    """
    return _Placeholders(text).substitute(values)


def check_values(declared: tuple[str, ...], given: object, where: str) -> dict[str, str]:
    """
    The values for a template that uses C{declared}, as text (numbers as
    Python writes them: C{3}, C{0.5}).

    @param where: the request field holding them, for error messages.
    @raise InvalidField: naming the variables that are missing, unknown or
        of the wrong type.
    """
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise InvalidVariable(f"{where} must be an object of variable names and values", where)
    unknown = [name for name in given if name not in declared]
    if unknown:
        raise UnknownVariables(
            f"{where}: unknown template variables: {', '.join(repr(n[:100]) for n in unknown[:20])}"
            f" (the template uses: {', '.join(declared) or 'none'})",
            f"{where}.{unknown[0][:100]}",
        )
    missing = [name for name in declared if name not in given]
    if missing:
        raise MissingVariables(f"{where}: missing template variables: {', '.join(missing)}", f"{where}.{missing[0]}")
    values = {}
    for name, value in given.items():
        if isinstance(value, str):
            values[name] = value
        elif isinstance(value, int | float) and not isinstance(value, bool):
            values[name] = str(value)
        else:
            kind = _JSON_KINDS.get(type(value), type(value).__name__)
            raise InvalidVariable(f"{where}.{name}: must be a string or a number, not {kind}", f"{where}.{name}")
    return values
