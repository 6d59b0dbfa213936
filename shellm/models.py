"""
The model table: every name a client may ask for, the provider that serves
it, and the model string passed on to that provider.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from attrs import frozen

PROVIDERS = ("claude", "gemini", "codex", "cerebras")


@frozen
class ModelEntry:
    """
    A name clients use, and what it means.

    @ivar upstream: passed on as the provider's model (C{--model}, C{-m}, the
        API C{model} field); L{None} leaves the choice to the CLI's default.
    """

    alias: str
    provider: str
    upstream: str | None


DEFAULT_MODELS: tuple[ModelEntry, ...] = (
    ModelEntry("claude", "claude", None),
    ModelEntry("claude-sonnet", "claude", "sonnet"),
    ModelEntry("claude-haiku", "claude", "haiku"),
    ModelEntry("claude-opus", "claude", "opus"),
    ModelEntry("gemini", "gemini", None),
    ModelEntry("gemini-pro", "gemini", "pro"),
    ModelEntry("gemini-flash", "gemini", "flash"),
    ModelEntry("codex", "codex", None),
    ModelEntry("codex-mini", "codex", "gpt-5.1-codex-mini"),
    ModelEntry("cerebras", "cerebras", "gpt-oss-120b"),
    ModelEntry("cerebras-8b", "cerebras", "llama3.1-8b"),
    ModelEntry("cerebras-120b", "cerebras", "gpt-oss-120b"),
    ModelEntry("cerebras-qwen", "cerebras", "qwen-3-235b-a22b-instruct-2507"),
)


def merge_models(base: Iterable[ModelEntry], overrides: Mapping[str, Any]) -> tuple[ModelEntry, ...]:
    """
    Apply C{SHELLM_MODELS}: C{{"alias": {"provider": "claude", "model":
    "claude-sonnet-4-6"}}} adds or replaces an alias, C{{"alias": null}}
    removes it.

    @raise ValueError: for anything else.
    """
    if not isinstance(overrides, dict):
        raise ValueError('must be a JSON object such as {"fast": {"provider": "cerebras", "model": "llama3.1-8b"}}')
    table = {entry.alias: entry for entry in base}
    for alias, spec in overrides.items():
        if not alias or len(alias) > 200 or not alias.isprintable():
            raise ValueError(f"has an invalid alias {alias!r}")
        if spec is None:
            table.pop(alias, None)
            continue
        if not isinstance(spec, dict) or spec.get("provider") not in PROVIDERS:
            raise ValueError(f"entry {alias!r} needs a provider, one of {', '.join(PROVIDERS)}")
        if alias in PROVIDERS and spec["provider"] != alias:
            raise ValueError(f"entry {alias!r} must stay with provider {alias!r} (fallback runs it)")
        model = spec.get("model")
        if model is not None and (
            not isinstance(model, str) or not model or model.startswith("-") or not model.isprintable()
        ):
            raise ValueError(f"entry {alias!r} has an invalid model")
        table[alias] = ModelEntry(alias, spec["provider"], model)
    for provider in PROVIDERS:
        # Fallback runs a provider under its own name, so that name must stay.
        table.setdefault(provider, _default_for(provider))
    return tuple(table.values())


def _default_for(provider: str) -> ModelEntry:
    return next(e for e in DEFAULT_MODELS if e.alias == provider)


class ModelTable:
    """
    Look-ups over the configured entries.
    """

    def __init__(self, entries: Iterable[ModelEntry]):
        self._by_alias = {entry.alias: entry for entry in entries}

    def resolve(self, name: str) -> ModelEntry | None:
        return self._by_alias.get(name)

    def default_for(self, provider: str) -> ModelEntry:
        return self._by_alias[provider]

    def aliases_of(self, provider: str) -> list[str]:
        return [a for a, e in self._by_alias.items() if e.provider == provider]

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self._by_alias.values())
